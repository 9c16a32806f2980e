"""The Winograd F(4x4, 3x3) path against its naive twin and the naive loops, and when "auto" takes it."""

import numpy as np
import pytest

import naive
from naive import assert_close

F = pytest.importorskip("cnn_cli.functional")
config = pytest.importorskip("cnn_cli.config")
dispatch = pytest.importorskip("cnn_cli.functional.dispatch")
winograd = pytest.importorskip("cnn_cli.functional.winograd").winograd
# Loaded here, so that "auto" takes the kernels' paths from the first test on (before any kernel has
# loaded, small calls run in numpy).
pytest.importorskip("cnn_cli.kernels.winograd")

# id -> (x_shape, c_out, with_bias, padding, padding_mode)
CASES = {
    "one-tile": ((1, 1, 4, 4), 1, False, 1, "zeros"),
    "partial-tiles": ((2, 3, 9, 7), 4, True, 1, "zeros"),
    "valid": ((1, 2, 11, 13), 3, True, 0, "zeros"),
    "uneven-padding": ((1, 2, 6, 10), 5, True, (1, 0), "zeros"),
    "tall": ((3, 2, 17, 5), 2, False, 1, "zeros"),
    "reflect": ((1, 2, 7, 6), 3, True, 1, "reflect"),
    "replicate": ((2, 1, 5, 9), 2, True, 1, "replicate"),
    "circular": ((1, 2, 6, 6), 2, False, (2, 1), "circular"),
}


def _data(x_shape, c_out, with_bias, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal((c_out, x_shape[1], 3, 3)) / np.sqrt(9 * x_shape[1])).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32) if with_bias else None
    return x, w, b


def _spec(x, w, padding, padding_mode="zeros"):
    return F.ConvSpec(x.shape, w.shape, 1, padding, 1, 1, padding_mode, "auto")


@pytest.mark.parametrize("name", CASES)
def test_naive_twin_is_the_correlation(name):
    """The twin's transforms compute the same correlation as the naive loops (so it is a reference)."""
    x_shape, c_out, with_bias, padding, mode = CASES[name]
    x, w, b = _data(x_shape, c_out, with_bias)
    expected = naive.naive_conv2d(x, w, b, padding=padding, padding_mode=mode)
    np.testing.assert_allclose(naive.naive_conv2d_winograd(x, w, b, padding=padding, padding_mode=mode),
                               expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("clip", [(-np.inf, np.inf), (0.0, np.inf), (0.0, 0.5)], ids=["none", "relu", "relu6"])
@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "shared"])
@pytest.mark.parametrize("name", CASES)
def test_winograd_path(name, threads, clip, monkeypatch):
    if threads:  # every call split: blocks of up to 3 tiles that cross tile rows and images, or one split by filters
        monkeypatch.setattr(config, "THREADS", 2)
        monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(config, "WINOGRAD_BLOCK_TILES", 3)
    x_shape, c_out, with_bias, padding, mode = CASES[name]
    x, w, b = _data(x_shape, c_out, with_bias)
    y = winograd(x, w, b, _spec(x, w, padding, mode), *clip)
    assert_close(y, naive.naive_conv2d_winograd(x, w, b, padding=padding, padding_mode=mode, clip=clip), "forward")
    assert_close(y, np.clip(naive.naive_conv2d(x, w, b, padding=padding, padding_mode=mode), *clip), "forward")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "w"])
def test_non_finite_values_reach_the_outputs_of_the_direct_sum(bad, where):
    """The transforms would spread a NaN or inf over its tiles: such inputs take the gemm path, so
    exactly the outputs the naive loops make non-finite are, and the clip keeps NaN as NaN."""
    x, w, b = _data((1, 2, 8, 8), 3, True)
    if where == "x":
        x[0, 1, 3, 5] = bad
    else:
        w[1, 0, 2, 2] = bad
    expected = naive.naive_conv2d(x, w, b, padding=1)
    for clip in [(-np.inf, np.inf), (0.0, 6.0)]:
        y, ref = winograd(x, w, b, _spec(x, w, 1), *clip), np.clip(expected, *clip)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(y[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)])  # the infs
        np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-4)


def test_huge_finite_values_take_the_direct_sum_where_the_transforms_could_overflow(monkeypatch):
    """Values near float32's limit would overflow in the transforms (which scale by up to 100) where the
    direct sum does not: the path hands them to gemm, whose outputs it returns."""
    from cnn_cli.functional import gemm

    x, w, b = _data((1, 2, 8, 8), 3, True)
    x[0, 0, 2, 2] = 3e37
    spec = _spec(x, w, 1)
    calls = []
    real = gemm.gemm
    monkeypatch.setattr(gemm, "gemm", lambda *args: calls.append(1) or real(*args))
    y = winograd(x, w, b, spec)
    assert calls, "the huge value must take the direct sum"
    np.testing.assert_array_equal(y, real(x, w, b, spec))
    assert np.isfinite(y).all()


@pytest.mark.parametrize("size", [1, 7, 8, 9, 63, 1000])
def test_all_within_is_numpy_finite_and_bounded(size):
    """The one-pass check: every element finite and at most the limit in magnitude, at each position
    of arrays whose lengths are and are not multiples of the vector width."""
    from cnn_cli.kernels.pointwise import all_within

    limit = np.float32(1e30)
    rng = np.random.default_rng(size)
    base = (rng.standard_normal(size) * 10).astype(np.float32)
    assert all_within(base, limit)
    for where in sorted({0, size // 2, size - 1}):
        for bad in (np.nan, np.inf, -np.inf, 2e30, -2e30, 1e30, -0.0):
            a = base.copy()
            a[where] = bad
            expected = bool(np.isfinite(a).all() and np.abs(a).max() <= limit)
            assert all_within(a, limit) == expected, (where, bad)


def test_error_on_a_resnet_layer_is_within_the_engine_tolerance():
    """64 -> 64 channels at 56x56 (ResNet-18's first stage): against a float64 correlation."""
    x, w, b = _data((1, 64, 56, 56), 64, True, seed=9)
    y = F.conv2d(x, w, b, padding=1)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1))),
                                                       (3, 3), axis=(2, 3))
    ref = np.einsum("ncpqij,ocij->nopq", windows, w.astype(np.float64)) + b[None, :, None, None]
    assert dispatch.forward_path(_spec(x, w, 1)) is winograd
    assert_close(y, ref, "forward")
    assert np.abs(y - ref).max() / np.abs(ref).max() < 2e-5


@pytest.mark.parametrize("x_shape, w_shape, kwargs, takes", [
    ((1, 64, 28, 28), (64, 64, 3, 3), {"padding": 1}, True),
    ((4, 32, 16, 16), (32, 32, 3, 3), {}, True),                    # valid: 4 x 4 x 4 tiles of 14x14
    ((8, 512, 7, 7), (512, 512, 3, 3), {"padding": 1}, True),       # 32 tiles
    ((4, 512, 7, 7), (512, 512, 3, 3), {"padding": 1}, False),      # 16 tiles: gemm on the batch wins
    ((2, 48, 13, 13), (192, 48, 3, 3), {"padding": 1}, True),       # 32 tiles, 66% of them inside the map
    ((4, 48, 9, 9), (192, 48, 3, 3), {"padding": 1}, False),        # 36 tiles, 56% inside
    ((1, 16, 56, 56), (64, 16, 3, 3), {"padding": 1}, True),
    ((1, 8, 56, 56), (64, 8, 3, 3), {"padding": 1}, False),         # too shallow to repay the transforms
    ((1, 32, 56, 56), (16, 32, 3, 3), {"padding": 1}, False),       # too few filters: the stacked loops win
    ((1, 512, 7, 7), (512, 512, 3, 3), {"padding": 1}, False),     # 4 tiles: too few to repay the filters
        ((1, 64, 28, 28), (64, 64, 3, 3), {"padding": 1, "stride": 2}, False),
    ((1, 64, 28, 28), (64, 64, 3, 3), {"padding": 2, "dilation": 2}, False),
    ((1, 64, 28, 28), (64, 32, 3, 3), {"padding": 1, "groups": 2}, False),
    ((1, 64, 28, 28), (64, 64, 5, 5), {"padding": 2}, False),
])
def test_auto_takes_winograd_on_deep_3x3_layers(x_shape, w_shape, kwargs, takes):
    spec = F.ConvSpec(x_shape, w_shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                      kwargs.get("dilation", 1), kwargs.get("groups", 1), "zeros", "auto")
    assert (dispatch.forward_path(spec) is winograd) == takes
    if takes:
        x, w, b = _data(x_shape, w_shape[0], True)
        assert_close(F.conv2d(x, w, b, **kwargs), naive.naive_conv2d_winograd(x, w, b, **kwargs), "forward")


# (x_shape, c_out, block tiles): one block split by filters (two-phase), blocks shared evenly, a short last block
SPLITS = {
    "one-block-by-filters": ((1, 5, 12, 12), 7, 64),  # 9 tiles: the filters split, the input transformed once
    "blocks-batch-1": ((1, 4, 18, 42), 6, 8),          # 5 x 11 tiles in blocks crossing tile rows, a short last one
    "blocks-batch-3": ((3, 3, 10, 9), 5, 4),           # 27 tiles in blocks crossing images
}


class _Calls:
    """Wraps the Winograd kernels, recording which (tile, channel), (tile, filter) and filter each call made."""

    def __init__(self, monkeypatch):
        from cnn_cli.kernels import winograd as wk

        self.inputs, self.outputs, self.filters, self.blocks = [], [], [], []
        for name, log in (("input_tiles", self._input), ("output_tiles", self._output), ("filters", self._filter)):
            real = getattr(wk, name)
            monkeypatch.setattr(wk, name, lambda *args, real=real, log=log: (log(*args), real(*args))[1])

    def _input(self, xp, th, tw, t0, v, first, last):
        self.inputs += [(t0 + k, ci) for k in range(v.shape[2]) for ci in range(first, last)]
        self.blocks.append((t0, v.shape[2], first, last))

    def _output(self, m, bias, lo, hi, th, tw, t0, c0, y, first, last):
        self.outputs += [(t0 + k, c0 + c) for k in range(m.shape[2]) for c in range(first, last)]

    def _filter(self, w, u, first, last):
        self.filters += list(range(first, last))


@pytest.mark.parametrize("name", SPLITS)
def test_threads_compute_every_tile_and_filter_once(name, monkeypatch):
    """Split between two threads, every tile's input is transformed once per channel, its products
    turned into outputs once per filter, and every filter transformed once: no block, filter part or
    input transform is made twice or left out, the short last block included."""
    x_shape, c_out, block = SPLITS[name]
    monkeypatch.setattr(config, "THREADS", 2)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(config, "WINOGRAD_BLOCK_TILES", block)
    monkeypatch.setattr(config, "GEMM_MIN_BLOCK_FILTERS", 1)  # filter parts of any size, were they made
    x, w, b = _data(x_shape, c_out, True)
    calls = _Calls(monkeypatch)
    y = winograd(x, w, b, _spec(x, w, 1), 0.0, np.inf)
    tiles = x_shape[0] * -(-x_shape[2] // 4) * -(-x_shape[3] // 4)
    assert sorted(calls.inputs) == [(t, ci) for t in range(tiles) for ci in range(x_shape[1])]
    assert sorted(calls.outputs) == [(t, c) for t in range(tiles) for c in range(c_out)]
    assert sorted(calls.filters) == list(range(c_out))
    assert_close(y, np.clip(naive.naive_conv2d(x, w, b, padding=1), 0, None), "forward")


@pytest.mark.parametrize("name", SPLITS)
def test_split_between_threads_gives_the_bits_of_one_thread(name, monkeypatch):
    """The same plan run by two threads at once and by one thread task after task gives the same
    bits, whichever thread took which task."""
    from cnn_cli.functional import threads

    x_shape, c_out, block = SPLITS[name]
    monkeypatch.setattr(config, "THREADS", 2)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(config, "WINOGRAD_BLOCK_TILES", block)
    x, w, b = _data(x_shape, c_out, True)
    spec = _spec(x, w, 1)
    shared = [winograd(x, w, b, spec) for _ in range(5)]

    def in_turn(worker, n, most=None):
        items = iter(range(n))
        worker(lambda: next(items, None))

    monkeypatch.setattr(threads, "share", in_turn)
    alone = winograd(x, w, b, spec)
    for y in shared:
        np.testing.assert_array_equal(y, alone)
    assert_close(alone, naive.naive_conv2d_winograd(x, w, b, padding=1), "forward")


@pytest.mark.parametrize("batch", [1, 2])
def test_a_resnet_layer_split_between_threads_matches_one_thread(batch, monkeypatch):
    """64 -> 64 channels at 28x28 (49 tiles an image): one block split by filters at batch 1, blocks of
    tiles at batch 2, against the path run on one thread, within float32 rounding."""
    x, w, b = _data((batch, 64, 28, 28), 64, True, seed=3)
    spec = _spec(x, w, 1)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 2**60)
    one = winograd(x, w, b, spec, 0.0, np.inf)
    monkeypatch.setattr(config, "THREADS", 2)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    np.testing.assert_allclose(winograd(x, w, b, spec, 0.0, np.inf), one, rtol=0, atol=1e-5 * np.abs(one).max())


def test_a_thread_running_part_of_a_split_plans_for_itself(monkeypatch):
    """Inside ``threads.alone`` (a chunk of a batch split between threads) the call runs on one thread,
    so it takes one thread's plan: blocks of WINOGRAD_BLOCK_TILES, never the filters in parts."""
    from cnn_cli.functional import threads

    monkeypatch.setattr(config, "THREADS", 2)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(config, "WINOGRAD_BLOCK_TILES", 8)
    x, w, b = _data((1, 3, 18, 42), 4, True)  # 55 tiles
    calls = _Calls(monkeypatch)
    with threads.alone():
        y = winograd(x, w, b, _spec(x, w, 1))
    assert calls.blocks == [(t0, min(8, 55 - t0), 0, 3) for t0 in range(0, 55, 8)]
    assert calls.filters == list(range(4))
    assert_close(y, naive.naive_conv2d(x, w, b, padding=1), "forward")


def test_filter_transform_in_chunks_is_g_w_gt_for_any_range_of_filters():
    """``kernels.winograd.filters`` goes through (filter, channel) pairs a chunk at a time: over several
    chunks and ranges that start and end inside one, each filter is G w G^T, the same bits whichever
    range transformed it."""
    from cnn_cli.kernels import winograd as wk

    g = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
    w = np.random.default_rng(4).standard_normal((37, 19, 3, 3)).astype(np.float32)  # 703 pairs
    whole = np.empty((36, 37, 19), np.float32)
    wk.filters(w, whole, 0, 37)
    expected = np.einsum("ai,ocij,bj->aboc", g, w.astype(np.float64), g).reshape(36, 37, 19)
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-6)
    parts = np.full((36, 37, 19), np.nan, np.float32)
    for first, last in [(0, 13), (13, 14), (14, 37)]:
        wk.filters(w, parts, first, last)
    np.testing.assert_array_equal(parts, whole)
