"""Eval max pooling (floor and ceil mode) and PReLU, bit for bit against torch and the naive loops.

``max_pool2d`` takes each window's maximum along its rows, then down the
columns, over bands of rows at once; ``prelu`` is one pass, which inference
runs in place. Both must keep exactly the value torch keeps: a NaN wins a
window, and of +0 and -0 in one window the first in row-major order wins.
"""

import naive
import numpy as np
import pytest

from cnn_cli import config
from cnn_cli import functional as F
from cnn_cli.functional import small
from cnn_cli.graphlayers import PReLU
from cnn_cli.layers import Pool

torch = pytest.importorskip("torch")

SPECIALS = ((np.nan, 0.04), (-np.inf, 0.04), (np.inf, 0.02), (0.0, 0.15), (-0.0, 0.15))


def with_specials(x, rng):
    """``x`` with NaN, +-inf, +0 and -0 scattered in it (ties of zeros of both signs in many windows)."""
    for value, share in SPECIALS:
        x[rng.random(x.shape) < share] = value
    return x


def assert_same_bits(actual, expected, what):
    """Same shape, NaN where expected has NaN, every other value with its sign bit (so -0 is not +0)."""
    actual, expected = np.asarray(actual), np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan), f"{what}: NaN in other places"
    ok = actual[~nan].view(np.uint32) == expected[~nan].view(np.uint32)
    assert ok.all(), f"{what}: {np.count_nonzero(~ok)} values differ, first at {np.argwhere(~nan)[np.argmin(ok)]}"


def random_pool_case(seed):
    """(x, kernel, stride, padding, ceil_mode): any kernel torch allows up to 5, strides 1-3, odd sizes."""
    rng = np.random.default_rng(seed)
    k = tuple(int(v) for v in rng.integers(1, 6, 2))
    s = tuple(int(v) for v in rng.integers(1, 4, 2))
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    hw = [int(rng.integers(max(kk - 2 * pp, 1), 3 * kk + 12)) for kk, pp in zip(k, p)]
    x = rng.standard_normal((int(rng.integers(1, 3)), int(rng.integers(1, 4)), *hw)).astype(np.float32)
    return with_specials(x, rng), k, s, p, bool(rng.integers(2))


def torch_max_pool(x, k, s, p, ceil_mode):
    return torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, ceil_mode=ceil_mode).numpy()


@pytest.mark.parametrize("seed", range(120))
def test_max_pool_matches_torch_and_the_naive_loop(seed):
    x, k, s, p, ceil_mode = random_pool_case(seed)
    what = f"max pool {x.shape} k{k} s{s} p{p} ceil {ceil_mode}"
    y = F.max_pool2d(x, k, s, p, ceil_mode=ceil_mode)
    assert_same_bits(y, torch_max_pool(x, k, s, p, ceil_mode), what + " vs torch")
    assert_same_bits(y, naive.naive_max_pool2d(x, k, s, p, ceil_mode), what + " vs naive")


@pytest.mark.parametrize("seed", range(0, 120, 7))
def test_the_numpy_path_before_the_kernels_gives_the_kernels_bits(monkeypatch, seed):
    x, k, s, p, ceil_mode = random_pool_case(seed)
    y = F.max_pool2d(x, k, s, p, ceil_mode=ceil_mode)
    monkeypatch.setattr(small, "kernels_loaded", lambda: False)  # as in a fresh process
    assert small.takes_pool(x.shape, k, s, p)
    assert_same_bits(F.max_pool2d(x, k, s, p, ceil_mode=ceil_mode), y, "numpy path vs kernel")


@pytest.mark.parametrize("band_values, value_work", [(1, 0), (40, 0), (10**9, 10**9)])
def test_bands_and_threads_do_not_change_the_bits(monkeypatch, band_values, value_work):
    """A band of one output row, a few, a whole plane; one thread and split between threads."""
    rng = np.random.default_rng(5)
    x = with_specials(rng.standard_normal((3, 4, 23, 19)).astype(np.float32), rng)
    expected = {case: torch_max_pool(x, *case) for case in [(3, 2, 0, True), (3, 2, 1, False), (2, 1, 1, True)]}
    monkeypatch.setattr(config, "POOL_BAND_VALUES", band_values)
    monkeypatch.setattr(config, "POOL_VALUE_WORK", value_work)
    for case, y in expected.items():
        assert_same_bits(F.max_pool2d(x, *case), y, f"{case}, band {band_values}")


@pytest.mark.parametrize("band", [1, 2, 5, 13, 1000])
def test_the_kernel_writes_its_task_range_only_whatever_its_blocks(band):
    """Blocks of a few output rows, or of several whole planes, within [first, last) and nowhere else."""
    from cnn_cli.kernels import pool

    rng = np.random.default_rng(band)
    for seed in range(8):
        x, k, s, p, ceil_mode = random_pool_case(100 + seed)
        x = np.ascontiguousarray(np.concatenate([x] * 3))  # more planes to share out
        expected = torch_max_pool(x, k, s, p, ceil_mode)
        planes = x.shape[0] * x.shape[1]
        first, last = sorted(int(v) for v in rng.integers(0, planes + 1, 2))
        y = np.full(expected.shape, 7, np.float32)
        pool.max_pool_values(x, *k, *s, *p, band, y, first, last)
        inside, outside = y.reshape(planes, -1)[first:last], np.delete(y.reshape(planes, -1), np.s_[first:last], 0)
        assert_same_bits(inside, expected.reshape(planes, -1)[first:last], f"planes {first}-{last}, band {band}")
        assert (outside == 7).all(), f"planes {first}-{last}, band {band}: wrote outside its tasks"


@pytest.mark.parametrize("shape, k, s, p", [
    ((2, 3, 111, 111), 3, 2, 0),   # SqueezeNet's first pool, one row and column of windows past the input
    ((4, 5, 46, 46), 3, 2, 0),     # the O-Net's
    ((2, 2, 21, 21), 3, 2, 0),     # ceil mode adds nothing
    ((2, 2, 9, 12), 2, 2, 0),      # odd height: the last window is one row
    ((1, 3, 14, 15), 3, 2, 1),
    ((1, 2, 5, 6), 5, 3, 2),       # a window starting in the padding runs past the input
])
def test_a_pool_layer_in_eval_is_torchs_module(shape, k, s, p):
    rng = np.random.default_rng(sum(shape))
    x = with_specials(rng.standard_normal(shape).astype(np.float32), rng)
    for ceil_mode in (False, True):
        layer = Pool("maxpool", k, s, p, ceil_mode=ceil_mode)
        y = layer.forward(x)
        assert y.shape[1:] == layer.build(shape[1:])
        expected = layer.torch_twin(shape[1:])(torch.from_numpy(x)).numpy()
        assert_same_bits(y, expected, f"{shape} k{k} s{s} p{p} ceil {ceil_mode}")


def test_ceil_mode_extra_is_torchs_output_size():
    for size in range(1, 14):
        for k in range(1, 6):
            for s in range(1, 4):
                for p in range(k // 2 + 1):
                    args = naive.pool_args_or_none((1, 1, size, size), k, s, p, ceil_mode=True)
                    if args is None:
                        continue
                    extra = F.ceil_mode_extra((size, size), k, s, p)
                    floor = (size + 2 * p + extra[0] - k) // s + 1
                    assert (floor, floor) == args.out_shape[2:], (size, k, s, p)


# ------------------------------------------------------------------ PReLU

PRELU_SHAPES = [(4, 5, 7, 9), (3, 6), (2, 3, 11), (1, 1, 1, 1), (2, 8, 46, 46)]


def slopes(kind, c, rng):
    return {"random": rng.standard_normal(c), "in (0, 1]": rng.uniform(0.01, 1, c), "zero": np.zeros(c),
            "-0": np.full(c, -0.0), "NaN": np.full(c, np.nan), "one for all": rng.standard_normal(1)}[kind]


@pytest.mark.parametrize("shape", PRELU_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "in (0, 1]", "zero", "-0", "NaN", "one for all"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 0 * inf, on purpose
def test_prelu_is_torchs_bit_for_bit_and_in_place_too(shape, kind):
    rng = np.random.default_rng(len(shape) + len(kind))
    x = with_specials(rng.standard_normal(shape).astype(np.float32), rng)
    w = slopes(kind, shape[1], rng).astype(np.float32)
    module = torch.nn.PReLU(w.size)
    module.weight.data = torch.from_numpy(w.copy())
    with torch.no_grad():
        expected = module(torch.from_numpy(x.copy())).numpy()
    assert_same_bits(F.prelu(x, w), expected, f"prelu {shape} {kind}")
    assert_same_bits(naive.naive_prelu(x, w), expected, "naive prelu")
    mine = x.copy()
    assert F.prelu(mine, w, in_place=True) is mine
    assert_same_bits(mine, expected, "prelu in place")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_prelu_layer_forward_and_overwrite_give_the_same_bits():
    rng = np.random.default_rng(3)
    layer = PReLU()
    layer.build((6, 10, 10), rng)
    layer.params["weight"][:] = rng.standard_normal(6)
    x = with_specials(rng.standard_normal((3, 6, 10, 10)).astype(np.float32), rng)
    y = layer.forward(x)
    assert not np.shares_memory(y, x)
    z = x.copy()
    assert layer.overwrite(z) is z
    assert_same_bits(z, y, "overwrite")
    module = layer.torch_twin((6, 10, 10))
    with torch.no_grad():
        assert_same_bits(y, module(torch.from_numpy(x)).numpy(), "torch twin")


def test_prelu_in_place_on_what_it_cannot_write_returns_a_new_array():
    rng = np.random.default_rng(4)
    w = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((2, 4, 6, 8)).astype(np.float32)
    for view in (x[:, :, :, ::2], x.astype(np.float64), x.transpose(0, 1, 3, 2)):
        before = x.copy()
        y = F.prelu(view, w, in_place=True)
        assert_same_bits(y, naive.naive_prelu(view, w), "a new array")
        assert_same_bits(x, before, "the input is untouched")


@pytest.mark.parametrize("x_shape, w_size", [((2, 3, 4, 4), 2), ((2, 3, 4, 4), 0), ((5,), 1), ((0, 3), 3)])
def test_prelu_rejects_slopes_that_fit_no_channel_count_as_naive_does(x_shape, w_size):
    x, w = np.ones(x_shape, np.float32), np.ones(w_size, np.float32)
    with pytest.raises(ValueError, match="weight|x must"):
        F.prelu(x, w)
    if len(x_shape) < 2 or w_size not in (1, x_shape[1]):
        with pytest.raises(naive.InvalidArguments):
            naive.naive_prelu(x, w)
