"""conv2d_clip (a convolution with its ReLU or ReLU6 fused) against the naive loops, on every path."""

import functools

import numpy as np
import pytest

import naive
from naive import assert_close

F = pytest.importorskip("cnn_cli.functional")
config = pytest.importorskip("cnn_cli.config")
dispatch = pytest.importorskip("cnn_cli.functional.dispatch")
conv2d_clip = pytest.importorskip("cnn_cli.functional.fused").conv2d_clip
pytest.importorskip("cnn_cli.kernels.conv")  # "auto" takes the kernels' paths (not the numpy ones of small calls)

# id -> (x_shape, w_shape, conv kwargs, the path "auto" takes)
CASES = {
    "winograd": ((1, 32, 27, 26), (24, 32, 3, 3), {"padding": 1}, "winograd"),
    "pointwise": ((2, 24, 6, 7), (40, 24, 1, 1), {}, "gemm"),
    "strided-gemm": ((1, 8, 15, 13), (32, 8, 3, 3), {"stride": 2, "padding": 1}, "gemm"),
    "row-columns": ((1, 64, 3, 40), (64, 64, 3, 3), {"padding": 1, "dilation": (2, 1)}, "gemm"),
    "depthwise": ((2, 6, 11, 10), (6, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 6}, "depthwise"),
    "stacked": ((2, 6, 9, 8), (4, 6, 3, 3), {"padding": 1}, "stacked"),
    "stem": ((2, 3, 15, 14), (6, 3, 3, 3), {"stride": 2, "padding": 1}, "stem"),
    "fft": ((1, 2, 20, 20), (2, 2, 15, 15), {"padding": 7}, "fft"),
}


@functools.cache
def _case(name):
    """(x, w, b, the naive output with b, and without) of a case; a NaN in x except for the FFT path,
    which spreads it over the whole output (as it did before fusing)."""
    x_shape, w_shape, kwargs, path = CASES[name]
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(x_shape).astype(np.float32)
    if path != "fft":
        x[-1, -1, 2, 4] = np.nan  # NaN stays NaN through the clip
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    return x, w, b, naive.naive_conv2d(x, w, b, **kwargs), naive.naive_conv2d(x, w, **kwargs)


@pytest.mark.parametrize("clip", [(0.0, np.inf), (0.0, 6.0), (-0.5, 0.25)], ids=["relu", "relu6", "clip"])
@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "shared"])
@pytest.mark.parametrize("name", CASES)
def test_conv2d_clip_is_the_clipped_convolution(name, threads, clip, monkeypatch):
    if threads:
        monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    x_shape, w_shape, kwargs, path = CASES[name]
    x, w, b, with_bias, without = _case(name)
    spec = F.ConvSpec(x_shape, w_shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                      kwargs.get("dilation", 1), kwargs.get("groups", 1), "zeros", "auto")
    assert dispatch.forward_path(spec).__name__ == path
    assert_close(conv2d_clip(x, w, b, *clip, **kwargs), np.clip(with_bias, *clip), "forward")
    assert_close(conv2d_clip(x, w, None, *clip, **kwargs), np.clip(without, *clip), "forward")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("clip", [(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0)], ids=["none", "relu", "relu6"])
def test_sum_clip_adds_into_its_first_array_in_slices_as_numpy_does(clip):
    """``sum_clip`` over any split of its elements (threads take slices) gives numpy's clip(a + b), NaN, -0
    and inf included, written over ``into``; a sum of an array with itself too."""
    from cnn_cli.functional.fused import sum_clip
    from cnn_cli.kernels.pointwise import sum_clip as kernel

    rng = np.random.default_rng(11)
    a = rng.standard_normal((2, 3, 5, 7)).astype(np.float32) * 8
    b = rng.standard_normal(a.shape).astype(np.float32) * 8
    a.reshape(-1)[:6] = [np.nan, -0.0, np.inf, -np.inf, 3e38, 1.0]
    b.reshape(-1)[:6] = [1.0, -0.0, 1.0, 1.0, 3e38, np.nan]
    with np.errstate(all="ignore"):
        expected = np.clip(a + b, *clip)
    into = a.copy()
    assert sum_clip(into, b, *clip) is into
    np.testing.assert_array_equal(into, expected)
    for cut in (0, 1, 9, a.size - 1):  # two slices, as two threads take them
        into = a.copy().reshape(-1)
        lo, hi = np.float32(clip[0]), np.float32(clip[1])
        kernel(into, b.reshape(-1), lo, hi, 0, cut)
        kernel(into, b.reshape(-1), lo, hi, cut, a.size)
        np.testing.assert_array_equal(into, expected.reshape(-1))
    twice = a.copy()
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(sum_clip(twice, twice, *clip), np.clip(a + a, *clip))
