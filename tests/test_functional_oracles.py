"""The engine against independent oracles: scipy, scikit-image and PyTorch."""

import zlib

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from naive import assert_close

F = pytest.importorskip("cnn_cli.functional")

ALGORITHMS = ["direct", "im2col", "fft", "auto"]
MODES = ["zeros", "reflect", "replicate", "circular"]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ----------------------------------------------------------------- scipy / scikit-image


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("image, kernel", [((9, 11), (3, 3)), ((8, 7), (2, 5)), ((16, 15), (11, 12))])
def test_valid_equals_scipy_correlate2d(algorithm, image, kernel):
    rng = _rng("valid", image, kernel)
    x = rng.standard_normal(image).astype(np.float32)
    w = rng.standard_normal(kernel).astype(np.float32)
    expected = scipy.signal.correlate2d(x.astype(np.float64), w.astype(np.float64), mode="valid")
    y = F.conv2d(x[None, None], w[None, None], padding="valid", algorithm=algorithm)
    assert_close(y, expected[None, None], "forward")


# scipy.ndimage names for our padding modes. ndimage centres an odd kernel like
# "same" does; "mirror" reflects without repeating the edge, like torch's reflect.
NDIMAGE_MODES = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest", "circular": "wrap"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("image, kernel", [((9, 10), (3, 3)), ((7, 8), (5, 3)), ((13, 14), (11, 11))])
def test_same_equals_ndimage_correlate(algorithm, mode, image, kernel):
    rng = _rng("same", image, kernel, mode)
    x = rng.standard_normal(image).astype(np.float32)
    w = rng.standard_normal(kernel).astype(np.float32)
    expected = scipy.ndimage.correlate(x.astype(np.float64), w.astype(np.float64),
                                       mode=NDIMAGE_MODES[mode], cval=0.0)
    y = F.conv2d(x[None, None], w[None, None], padding="same", padding_mode=mode, algorithm=algorithm)
    assert_close(y, expected[None, None], "forward")


@pytest.mark.parametrize("image, block", [((8, 12), (2, 2)), ((9, 12), (3, 4)), ((6, 5), (2, 1))])
def test_max_pool_equals_block_reduce(image, block):
    block_reduce = pytest.importorskip("skimage.measure").block_reduce
    x = _rng("block", image, block).standard_normal((2, 3, *image)).astype(np.float32)
    h, w = (image[0] // block[0]) * block[0], (image[1] // block[1]) * block[1]
    expected = block_reduce(x[:, :, :h, :w].astype(np.float64), (1, 1, *block), np.max)
    assert_close(F.max_pool2d(x, block), expected, "forward")
    mean = block_reduce(x[:, :, :h, :w].astype(np.float64), (1, 1, *block), np.mean)
    assert_close(F.avg_pool2d(x, block), mean, "forward (avg)")


# ----------------------------------------------------------------- PyTorch

# (x_shape, w_shape, with_bias, kwargs) run under every padding mode.
TORCH_CONV_CASES = {
    "pad1": ((2, 3, 6, 7), (4, 3, 3, 3), True, dict(padding=1)),
    "stride2-pad(1,2)": ((1, 2, 7, 8), (3, 2, 3, 3), True, dict(stride=2, padding=(1, 2))),
    "stride(3,1)-dil(1,2)": ((1, 2, 9, 8), (2, 2, 2, 3), False, dict(stride=(3, 1), dilation=(1, 2), padding=2)),
    "dil2-groups2": ((2, 4, 7, 7), (6, 2, 3, 3), True, dict(groups=2, dilation=2, padding=2)),
    "depthwise-same": ((1, 3, 6, 5), (3, 1, 3, 3), True, dict(groups=3, padding="same")),
    "same-even-2x2": ((1, 2, 5, 6), (3, 2, 2, 2), True, dict(padding="same")),
    "same-even-4x4": ((2, 1, 6, 6), (2, 1, 4, 4), False, dict(padding="same")),
    "same-2x3-dil(1,3)": ((1, 2, 6, 7), (2, 2, 2, 3), True, dict(padding="same", dilation=(1, 3))),
    "valid-1x1": ((1, 3, 4, 5), (2, 3, 1, 1), True, dict(padding="valid")),
    "13x13-same": ((1, 2, 14, 15), (2, 2, 13, 13), True, dict(padding="same")),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(TORCH_CONV_CASES))
def test_conv2d_matches_torch(torch_ref, name, mode, algorithm):
    x_shape, w_shape, with_bias, kwargs = TORCH_CONV_CASES[name]
    kwargs = dict(kwargs, padding_mode=mode)
    rng = _rng("torch", name, mode)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    y_ref, _, _, _ = torch_ref.conv2d(x, w, b, **kwargs)
    gy = rng.standard_normal(y_ref.shape).astype(np.float32)
    y_ref, gx_ref, gw_ref, gb_ref = torch_ref.conv2d(x, w, b, gy, **kwargs)
    assert_close(F.conv2d(x, w, b, algorithm=algorithm, **kwargs), y_ref, "forward")
    gx, gw, gb = F.conv2d_backward(x, w, gy, algorithm=algorithm, **kwargs)
    assert_close(gx, gx_ref, "grad_x")
    assert_close(gw, gw_ref, "grad_weight")
    assert_close(gb, gb_ref, "grad_bias")


TORCH_POOL_CASES = [
    ((2, 3, 8, 8), 2, None, 0),
    ((1, 2, 7, 9), 3, 2, 1),
    ((2, 1, 9, 7), (2, 3), (1, 2), (1, 1)),
    ((1, 2, 6, 5), (3, 2), 1, (1, 0)),
    ((1, 1, 11, 10), 4, 3, 2),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", TORCH_POOL_CASES, ids=str)
def test_pools_match_torch(torch_ref, kind, case):
    x_shape, k, s, p = case
    rng = _rng("pool", case, kind)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y_ref, _ = torch_ref.pool(kind, x, k, s, p)
    gy = rng.standard_normal(y_ref.shape).astype(np.float32)
    _, gx_ref = torch_ref.pool(kind, x, k, s, p, gy)
    fwd, bwd = (F.max_pool2d, F.max_pool2d_backward) if kind == "max" else (F.avg_pool2d, F.avg_pool2d_backward)
    assert_close(fwd(x, k, s, p), y_ref, "forward")
    assert_close(bwd(x, gy, k, s, p), gx_ref, "grad_x")
