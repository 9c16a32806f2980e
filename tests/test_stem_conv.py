"""The stem path (direct correlation on phase planes, for inputs of few channels) against its naive twin,
the naive loops and torch, and when "auto" takes it."""

import naive
import numpy as np
import pytest
from naive import assert_close

F = pytest.importorskip("cnn_cli.functional")
config = pytest.importorskip("cnn_cli.config")
dispatch = pytest.importorskip("cnn_cli.functional.dispatch")
stem = pytest.importorskip("cnn_cli.functional.stem").stem
conv2d_clip = pytest.importorskip("cnn_cli.functional.fused").conv2d_clip
pytest.importorskip("cnn_cli.kernels.stem")  # "auto" takes the kernels' paths (not the numpy ones of small calls)

# id -> (x_shape, c_out, kernel, stride, padding, dilation, padding_mode); c_out not a multiple of 4 on
# purpose in some (the kernel takes filters four at a time), odd and even sizes, batches of 1 and 3.
CASES = {
    "mobilenet-like": ((1, 3, 17, 16), 8, 3, 2, 1, 1, "zeros"),
    "squeezenet-like": ((3, 3, 16, 17), 6, 3, 2, 0, 1, "zeros"),
    "resnet-like": ((1, 3, 23, 22), 5, 7, 2, 3, 1, "zeros"),
    "one-channel-5x5": ((3, 1, 12, 13), 3, 5, 1, 2, 1, "zeros"),
    "two-channels-stride-1": ((1, 2, 9, 10), 4, 3, 1, 1, 1, "zeros"),
    "four-channels-7x7-s1": ((1, 4, 14, 11), 7, 7, 1, 0, 1, "zeros"),
    "stride-3-uneven": ((1, 3, 16, 14), 4, 5, 3, (2, 1), 1, "zeros"),
    "dilated-stride-2": ((3, 2, 15, 16), 5, 3, 2, 2, 2, "zeros"),
    "mixed-stride": ((1, 1, 11, 12), 2, 3, (1, 2), 1, 1, "zeros"),
    "reflect": ((1, 3, 12, 11), 4, 3, 2, 1, 1, "reflect"),
    "circular-5x5": ((3, 2, 10, 9), 4, 5, 1, 2, 1, "circular"),
}
CLIPS = {"none": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 0.5)}


def _data(x_shape, c_out, k, with_bias=True, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal((c_out, x_shape[1], k, k)) / np.sqrt(x_shape[1] * k * k)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32) if with_bias else None
    return x, w, b


def _spec(x, w, stride, padding, dilation, mode="zeros"):
    return F.ConvSpec(x.shape, w.shape, stride, padding, dilation, 1, mode, "auto")


@pytest.mark.parametrize("name", CASES)
def test_naive_twin_is_the_correlation(name):
    """The twin's phase planes compute the same correlation as the naive loops (so it is a reference)."""
    x_shape, c_out, k, stride, padding, dilation, mode = CASES[name]
    x, w, b = _data(x_shape, c_out, k)
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation, "padding_mode": mode}
    np.testing.assert_allclose(naive.naive_conv2d_phases(x, w, b, **kwargs), naive.naive_conv2d(x, w, b, **kwargs),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "shared"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("name", CASES)
def test_stem_path(name, with_bias, threads, clip, monkeypatch):
    if threads:  # every call split, in tiles of one row
        monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(config, "STEM_TILE_PIXELS", 1)
    x_shape, c_out, k, stride, padding, dilation, mode = CASES[name]
    x, w, b = _data(x_shape, c_out, k, with_bias)
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation, "padding_mode": mode}
    y = stem(x, w, b, _spec(x, w, stride, padding, dilation, mode), *CLIPS[clip])
    assert_close(y, naive.naive_conv2d_phases(x, w, b, **kwargs, clip=CLIPS[clip]), "forward (twin)")
    assert_close(y, np.clip(naive.naive_conv2d(x, w, b, **kwargs), *CLIPS[clip]), "forward (naive loops)")


@pytest.mark.parametrize("name", CASES)
def test_stem_path_against_torch(name, torch_ref):
    x_shape, c_out, k, stride, padding, dilation, mode = CASES[name]
    x, w, b = _data(x_shape, c_out, k)
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation, "padding_mode": mode}
    assert dispatch.forward_path(_spec(x, w, stride, padding, dilation, mode)) is stem
    assert_close(F.conv2d(x, w, b, **kwargs), torch_ref.conv2d(x, w, b, **kwargs)[0], "forward")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "w"])
def test_non_finite_values_reach_exactly_the_outputs_of_the_naive_loops(bad, where):
    """A NaN or inf reaches only the outputs whose windows hold it (the garbage columns computed past
    each row's end are dropped), and the clip keeps NaN as NaN."""
    x, w, b = _data((1, 3, 16, 15), 6, 3)
    if where == "x":
        x[0, 1, 0, 14] = bad  # at the end of a row: the next row's garbage columns read it too
    else:
        w[2, 0, 1, 2] = bad
    spec = _spec(x, w, 2, 1, 1)
    expected = naive.naive_conv2d(x, w, b, stride=2, padding=1)
    for clip in CLIPS.values():
        y, ref = stem(x, w, b, spec, *clip), np.clip(expected, *clip)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        infinite = np.isinf(ref)
        np.testing.assert_array_equal(y[infinite], ref[infinite])
        finite = np.isfinite(ref)
        np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-4)


def test_fused_clip_takes_the_stem_path():
    x, w, b = _data((1, 3, 20, 21), 8, 3)
    x[0, 2, 5, 6] = np.nan
    assert_close(conv2d_clip(x, w, b, 0.0, 6.0, stride=2, padding=1),
                 np.clip(naive.naive_conv2d(x, w, b, stride=2, padding=1), 0.0, 6.0), "forward")


def test_error_on_resnet_first_layer_is_within_the_engine_tolerance(torch_ref):
    """ResNet's 3 -> 64 7x7/2 at 224x224, the shape the path is for, against torch in float64."""
    x, w, b = _data((1, 3, 224, 224), 64, 7, seed=9)
    spec = _spec(x, w, 2, 3, 1)
    assert dispatch.forward_path(spec) is stem
    assert_close(F.conv2d(x, w, b, stride=2, padding=3), torch_ref.conv2d(x, w, b, stride=2, padding=3)[0], "forward")


@pytest.mark.parametrize("x_shape, w_shape, kwargs, takes", [
    ((1, 3, 224, 224), (64, 3, 7, 7), {"stride": 2, "padding": 3}, True),
    ((1, 3, 224, 224), (32, 3, 3, 3), {"stride": 2, "padding": 1}, True),
    ((8, 3, 224, 224), (64, 3, 3, 3), {"stride": 2}, True),
    ((32, 1, 28, 28), (6, 1, 5, 5), {}, True),
    ((1, 4, 32, 32), (16, 4, 3, 3), {"padding": 1}, True),
    ((1, 5, 32, 32), (16, 5, 3, 3), {"padding": 1}, False),         # more channels than STEM_MAX_CHANNELS
    ((1, 4, 32, 32), (16, 2, 3, 3), {"padding": 1, "groups": 2}, False),
    ((1, 3, 64, 64), (4, 3, 15, 15), {"padding": 7}, False),        # FFT's
    ((32, 16, 32, 32), (32, 16, 3, 3), {"stride": 2, "padding": 1}, True),   # strided, 16 wide out
    ((2, 32, 40, 40), (64, 32, 3, 3), {"stride": 2, "padding": 1}, True),
    ((32, 32, 16, 16), (64, 32, 3, 3), {"stride": 2, "padding": 1}, False),  # 8 wide out
    ((4, 64, 56, 56), (128, 64, 3, 3), {"stride": 2, "padding": 1}, False),  # deeper than 32
    ((32, 16, 32, 32), (32, 16, 1, 1), {"stride": 2}, False),                 # 1x1 reads one phase of four
])
def test_auto_takes_the_stem_path_for_few_input_channels(x_shape, w_shape, kwargs, takes):
    spec = F.ConvSpec(x_shape, w_shape, kwargs.get("stride", 1), kwargs.get("padding", 0), 1,
                      kwargs.get("groups", 1), "zeros", "auto")
    assert (dispatch.forward_path(spec) is stem) == takes


@pytest.mark.parametrize("c_in, c_out, stride", [(16, 32, 2), (24, 6, 2), (32, 8, 3)])
def test_strided_layers_of_deeper_inputs_on_the_stem_path(c_in, c_out, stride):
    """The strided layers "auto" gives the stem path past STEM_MAX_CHANNELS (a residual block's first
    conv over 16-32 channels): every tap of every channel against the naive loops, with the clip."""
    x, w, b = _data((2, c_in, 2 * 17 + 1, 3 * 16), c_out, 3, seed=c_in)
    spec = _spec(x, w, stride, 1, 1)
    assert dispatch.forward_path(spec) is stem
    y = naive.naive_conv2d(x, w, b, stride=stride, padding=1)
    assert_close(F.conv2d(x, w, b, stride=stride, padding=1), y, "forward")
    assert_close(conv2d_clip(x, w, b, 0.0, 0.5, stride=stride, padding=1), np.clip(y, 0.0, 0.5), "forward")
