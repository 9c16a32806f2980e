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
