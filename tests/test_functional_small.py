"""The numpy paths of small calls (``functional.small``): fixed banks (``algorithm="light"``) and max
pooling before any Numba kernel has loaded.

Against the naive loops on every case of the engine's own conv and pool
tests, and against the Numba paths; per image the same bits in any batch;
and, in a fresh process, that a small ``cnn apply`` of the default pipeline
never imports Numba while a large call still loads the kernels.
"""

import subprocess
import sys
from pathlib import Path

import naive
import numpy as np
import pytest
from test_functional_naive import CONV_CASES, MODE_CASES, MODES, _data

from cnn_cli import config
from cnn_cli import functional as F
from cnn_cli.functional import dispatch, small
from cnn_cli.functional.specs import ConvSpec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def before_kernels(monkeypatch):
    """As in a fresh process: no kernel loaded yet, so small max pooling takes the numpy path."""
    monkeypatch.setattr(small, "kernels_loaded", lambda: False)


def _spec(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", algorithm="auto"):
    return ConvSpec(x_shape, w_shape, stride, padding, dilation, groups, padding_mode, algorithm)


CASES = CONV_CASES + [(x, w, b, dict(kw, padding_mode=m)) for x, w, b, kw in MODE_CASES for m in MODES] + [
    ((2, 2, 17, 15), (3, 2, 7, 7), True, dict(padding="same", padding_mode="reflect")),  # FFT
    ((1, 3, 20, 19), (3, 1, 9, 9), False, dict(groups=3, padding=4, stride=2)),  # FFT, depthwise, strided
    ((1, 2, 16, 16), (2, 2, 6, 5), True, dict(dilation=2, padding=(3, 1))),  # FFT, dilated
    ((2, 6, 9, 8), (5, 6, 3, 3), True, dict(padding=1, stride=(2, 1))),  # im2col: 30 channel-filter pairs
    ((1, 8, 9, 8), (8, 4, 3, 2), False, dict(groups=2, dilation=(1, 2), padding_mode="reflect", padding=2)),
]


@pytest.mark.parametrize("x_shape, w_shape, with_bias, kw", CASES)
def test_conv_matches_naive_and_the_kernels(x_shape, w_shape, with_bias, kw):
    _, x, w, b = _data(x_shape, w_shape, with_bias, seed=3)
    assert dispatch.forward_path(_spec(x.shape, w.shape, algorithm="light", **kw)) is small.conv
    assert dispatch.forward_path(_spec(x.shape, w.shape, **kw)) is not small.conv, "auto never runs in numpy"
    y = F.conv2d(x, w, b, algorithm="light", **kw)
    naive.assert_close(y, naive.naive_conv2d(x, w, b, **kw), f"small conv {x_shape} {w_shape} {kw}")
    naive.assert_close(y, F.conv2d(x, w, b, **kw).astype(np.float64), "small against the kernels' path")


def test_fft_branch_is_taken_and_exact_on_a_large_bank():
    """A 13 x 13 bank over a photo-sized map (as the default pipeline's first layer) runs by numpy's FFT."""
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 96, 80), dtype=np.float32)
    w = rng.standard_normal((4, 1, 13, 13)).astype(np.float32)
    assert 13 * 13 > config.SMALL_IM2COL_MAX_TAPS
    y = F.conv2d(x, w, padding="same", padding_mode="reflect", algorithm="light")
    expected = naive.naive_conv2d(x, w, padding="same", padding_mode="reflect")
    naive.assert_close(y, expected, "FFT branch", rtol=1e-5)


def test_nan_and_inf_stay_where_they_are():
    """As in torch's direct convolution: only the outputs whose window holds a NaN or inf are affected
    (a transform would spread them over the whole map, so the large kernels take the direct loops)."""
    x = np.ones((1, 1, 12, 12), np.float32)
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 11, 0] = np.inf
    for k in (3, 7):
        w = np.ones((1, 1, k, k), np.float32)
        y = F.conv2d(x, w, padding="same", algorithm="light")
        expected = naive.naive_conv2d(x, w, padding="same")
        assert np.array_equal(np.isnan(y), np.isnan(expected)), f"{k}x{k}: NaN where naive has it"
        assert np.array_equal(np.isinf(y), np.isinf(expected)), f"{k}x{k}: inf where naive has it"
        finite = np.isfinite(expected)
        assert finite.sum() > 0
        np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-5, err_msg=f"{k}x{k}")


def test_the_choice_is_per_image_and_large_calls_go_to_the_kernels(before_kernels):
    assert small.takes(_spec((1, 1, 8, 8), (1, 1, 3, 3), algorithm="light"))
    assert small.takes(_spec((4096, 1, 8, 8), (1, 1, 3, 3), algorithm="light")), "the batch must not matter"
    big = (1, 64, 512, 512)
    assert not small.takes(_spec(big, (64, 64, 3, 3), algorithm="light")), "a large call must load the kernels"
    assert not small.takes(_spec((1, 1, 8, 8), (1, 1, 3, 3), algorithm="direct")), "a forced path is kept"
    assert not small.takes_pool((1, 1, 2**13, 2**12), 2, None, 0)


@pytest.mark.parametrize("k, c", [(3, 2), (3, 8), (9, 2)])
def test_an_image_gives_the_same_bits_alone_and_in_a_batch(k, c):
    """What makes a resumed or re-batched ``cnn apply`` write the same maps as a clean run."""
    rng = np.random.default_rng(k)
    x = rng.random((3, c, 40, 33), dtype=np.float32)
    w = rng.standard_normal((5, c, k, k)).astype(np.float32)
    batch = F.conv2d(x, w, padding="same", padding_mode="reflect", algorithm="light")
    for i in range(3):
        alone = F.conv2d(x[i:i + 1], w, padding="same", padding_mode="reflect", algorithm="light")
        assert np.array_equal(alone[0], batch[i]), f"image {i}, {k}x{k}"


POOL_CASES = [((1, 2, 7, 8), 2, None, 0), ((2, 1, 9, 9), 3, 2, 1), ((1, 3, 6, 5), (2, 3), (1, 2), (1, 1)),
              ((1, 1, 4, 4), 4, None, 0)]


@pytest.mark.parametrize("x_shape, k, s, p", POOL_CASES)
def test_max_pool_matches_naive(before_kernels, x_shape, k, s, p):
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    x.flat[3] = np.nan
    assert small.takes_pool(x.shape, k, s, p)
    y = F.max_pool2d(x, k, s, p)
    naive.assert_close(y, naive.naive_max_pool2d(x, k, s, p), f"max pool {x_shape}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(small, "kernels_loaded", lambda: True)
        assert not small.takes_pool(x.shape, k, s, p)
        assert np.array_equal(y, F.max_pool2d(x, k, s, p), equal_nan=True), "the kernel must give the same bits"


def test_small_apply_never_loads_numba(tmp_path):
    """The default pipeline on a small photo, in a fresh process: the whole run stays in numpy, without
    scipy either."""
    code = (
        "import sys; from cnn_cli.cli import app\n"
        f"sys.argv = ['cnn', 'apply', {str(REPO / 'samples' / 'shapes.png')!r}, '-o', {str(tmp_path / 'out')!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('numba' in sys.modules, 'scipy' in sys.modules, [m for m in sys.modules if m.startswith('cnn_cli.kernels.')])\n"
        "import numpy as np; from cnn_cli import functional as F\n"
        "F.conv2d(np.zeros((1, 64, 256, 256), np.float32), np.zeros((64, 64, 3, 3), np.float32))\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "False False []", f"neither Numba nor scipy (0.4 s) should load: {out.stdout}"
    assert lines[-1] == "True", "a large call after it must load the kernels"
    assert (tmp_path / "out" / "shapes" / "manifest.json").is_file()


@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((3, 2, 21, 18), (4, 2, 3, 3), 1),  # images between threads
    ((1, 4, 30, 25), (4, 1, 9, 9), 4),  # groups of one image (depthwise, FFT)
    ((1, 2, 30, 25), (6, 2, 7, 7), 1),  # filters of one image (FFT)
])
def test_shares_between_threads_give_the_same_bits(monkeypatch, x_shape, w_shape, groups):
    rng = np.random.default_rng(7)
    x = rng.random(x_shape, dtype=np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    kw = dict(padding="same", padding_mode="reflect", groups=groups, algorithm="light")
    serial = F.conv2d(x, w, b, **kw)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(config, "THREADS", 2)
    split = F.conv2d(x, w, b, **kw)
    assert np.array_equal(serial, split), "a share computed on another thread must give the same bits"
    naive.assert_close(split, naive.naive_conv2d(x, w, b, padding="same", padding_mode="reflect", groups=groups),
                       f"split {x_shape} {w_shape}")


@pytest.mark.parametrize("x_shape, groups, kw", [
    ((2, 3, 23, 19), 3, dict(padding="same", padding_mode="replicate")),  # harris's window, depthwise
    ((1, 2, 20, 21), 1, dict(padding=3, stride=(2, 3))),
    ((1, 4, 25, 24), 2, dict(padding="same", dilation=(2, 1), padding_mode="reflect")),
])
def test_outer_product_kernels_run_as_two_passes(x_shape, groups, kw):
    """Gaussians, boxes and any other outer product: a pass per tap of the row, then of the column."""
    rng = np.random.default_rng(11)
    c_in = x_shape[1]
    c_out = 2 * groups if groups > 1 else 3
    cols, rows = rng.standard_normal((c_out, c_in // groups, 7)), rng.standard_normal((c_out, c_in // groups, 5))
    w = (cols[..., :, None] * rows[..., None, :]).astype(np.float32)
    x = rng.random(x_shape, dtype=np.float32)
    x[0, 0, 4, 5] = np.nan
    assert small._separable(w) is not None
    y = F.conv2d(x, w, groups=groups, algorithm="light", **kw)
    expected = naive.naive_conv2d(x, w, groups=groups, **kw)
    assert np.array_equal(np.isnan(y), np.isnan(expected)), "a NaN stays in the windows that hold it"
    naive.assert_close(np.nan_to_num(y), np.nan_to_num(expected), f"outer products {x_shape} {kw}")
    assert small._separable(w + rng.standard_normal(w.shape).astype(np.float32) * 1e-2) is None, "rank 2"
