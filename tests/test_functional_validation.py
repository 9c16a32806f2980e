"""Bad arguments raise ValueError, and the message names what to change."""

import numpy as np
import pytest

import naive

F = pytest.importorskip("cnn_cli.functional")


def _arr(*shape):
    return np.ones(shape, np.float32)


X = _arr(1, 2, 5, 5)
W = _arr(3, 2, 3, 3)

# (id, x, weight, bias, kwargs, pattern the message must match)
CONV_ERRORS = [
    ("channels", _arr(1, 3, 5, 5), W, None, {}, r"(?i)channel"),
    ("channels-groups", _arr(1, 4, 5, 5), _arr(4, 1, 3, 3), None, dict(groups=2), r"(?i)channel"),
    ("groups-vs-C_out", _arr(1, 4, 5, 5), _arr(3, 2, 3, 3), None, dict(groups=2), r"groups"),
    ("groups-vs-C_in", _arr(1, 3, 5, 5), _arr(2, 1, 3, 3), None, dict(groups=2), r"groups"),
    ("groups-zero", X, W, None, dict(groups=0), r"groups"),
    ("stride-zero", X, W, None, dict(stride=0), r"stride"),
    ("stride-negative-pair", X, W, None, dict(stride=(1, -1)), r"stride"),
    ("dilation-zero", X, W, None, dict(dilation=0), r"dilation"),
    ("dilation-pair", X, W, None, dict(dilation=(0, 1)), r"dilation"),
    ("same-with-stride", X, W, None, dict(padding="same", stride=2), r"(?i)same|stride"),
    ("same-with-stride-pair", X, W, None, dict(padding="same", stride=(1, 2)), r"(?i)same|stride"),
    ("padding-unknown-string", X, W, None, dict(padding="full"), r"padding"),
    ("padding-negative", X, W, None, dict(padding=-1), r"padding"),
    ("padding-negative-pair", X, W, None, dict(padding=(1, -2)), r"padding"),
    ("padding_mode-unknown", X, W, None, dict(padding=1, padding_mode="mirror"), r"padding_mode"),
    ("reflect-pad=H", _arr(1, 2, 3, 6), W, None, dict(padding=3, padding_mode="reflect"),
     r"(?i)reflect|padding"),
    ("reflect-pad=W", _arr(1, 2, 6, 2), W, None, dict(padding=(0, 2), padding_mode="reflect"),
     r"(?i)reflect|padding"),
    ("reflect-same-too-big", _arr(1, 2, 2, 6), _arr(3, 2, 5, 3), None,
     dict(padding="same", padding_mode="reflect"), r"(?i)reflect|padding"),
    ("circular-pad>H", _arr(1, 2, 3, 6), W, None, dict(padding=(4, 1), padding_mode="circular"),
     r"(?i)circular|padding"),
    ("kernel>input", _arr(1, 2, 2, 5), W, None, {}, r"(?i)kernel|weight"),
    ("dilated-kernel>input", X, W, None, dict(dilation=3), r"(?i)kernel|weight|dilation"),
    ("dilated-kernel>padded", X, W, None, dict(dilation=(1, 4), padding=(0, 1)),
     r"(?i)kernel|weight|dilation"),
    ("x-3d", _arr(2, 5, 5), W, None, {}, r"\bx\b"),
    ("x-5d", _arr(1, 1, 2, 5, 5), W, None, {}, r"\bx\b"),
    ("weight-3d", X, _arr(2, 3, 3), None, {}, r"weight"),
    ("weight-5d", X, _arr(3, 2, 1, 3, 3), None, {}, r"weight"),
    ("bias-2d", X, W, _arr(3, 1), {}, r"bias"),
    ("bias-wrong-length", X, W, _arr(2), {}, r"bias"),
    ("bias-scalar", X, W, np.float32(1.0), {}, r"bias"),
    ("x-empty-batch", _arr(0, 2, 5, 5), W, None, {}, r"\bx\b"),
    ("x-empty-height", _arr(1, 2, 0, 5), W, None, {}, r"\bx\b"),
    ("x-empty-channels", _arr(1, 0, 5, 5), _arr(3, 0, 3, 3), None, {}, r"\bx\b|weight"),
    ("weight-empty-out", X, _arr(0, 2, 3, 3), None, {}, r"weight"),
    ("weight-empty-kernel", X, _arr(3, 2, 0, 3), None, {}, r"weight"),
    ("algorithm-unknown", X, W, None, dict(algorithm="winograd"), r"algorithm"),
]


@pytest.mark.parametrize("x, w, b, kwargs, pattern", [c[1:] for c in CONV_ERRORS],
                         ids=[c[0] for c in CONV_ERRORS])
def test_conv2d_rejects(x, w, b, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        F.conv2d(x, w, b, **kwargs)


@pytest.mark.parametrize("x, w, b, kwargs, pattern", [c[1:] for c in CONV_ERRORS if c[3] is None],
                         ids=[c[0] for c in CONV_ERRORS if c[3] is None])
def test_conv2d_backward_rejects(x, w, b, kwargs, pattern):
    gy = _arr(1, 3, 3, 3)
    with pytest.raises(ValueError, match=pattern):
        F.conv2d_backward(x, w, gy, **kwargs)


def test_the_error_cases_are_invalid_for_naive_too():
    """Guards the table above: each case must really be invalid (algorithm is engine-only)."""
    for name, x, w, b, kwargs, _ in CONV_ERRORS:
        if name == "algorithm-unknown":
            continue
        b_shape = None if b is None else np.shape(b)
        assert naive.conv_args_or_none(np.shape(x), np.shape(w), b_shape, **kwargs) is None, name


@pytest.mark.parametrize("gy_shape", [(1, 3, 3, 4), (1, 3, 5, 5), (2, 3, 3, 3), (1, 2, 3, 3), (3, 3, 3), (1, 3, 3, 3, 1)])
def test_conv2d_backward_rejects_grad_y_of_wrong_shape(gy_shape):
    with pytest.raises(ValueError, match=r"grad_y"):
        F.conv2d_backward(X, W, _arr(*gy_shape))


def test_conv2d_backward_rejects_empty_grad_y():
    with pytest.raises(ValueError, match=r"grad_y"):
        F.conv2d_backward(_arr(1, 2, 5, 5), W, _arr(1, 3, 3, 0))


def test_valid_neighbours_of_the_error_cases_are_accepted():
    """The boundaries are torch's: these just-legal calls must not raise."""
    F.conv2d(_arr(1, 2, 3, 6), W, padding=(2, 1), padding_mode="reflect")      # pad = H - 1
    F.conv2d(_arr(1, 2, 3, 6), W, padding=(3, 1), padding_mode="circular")     # pad = H
    F.conv2d(_arr(1, 2, 3, 3), W)                                              # kernel = input
    F.conv2d(_arr(1, 2, 1, 1), W, padding=1, padding_mode="replicate")         # replicate: any pad
    F.conv2d(X, W, padding="same", stride=(1, 1))
    F.conv2d(X, W, stride=np.int64(2), padding=(np.int32(1), 1), dilation=[1, 2])
    F.max_pool2d(_arr(1, 1, 2, 2), 4, 1, 2)                                     # pad = k / 2
    F.max_pool2d(_arr(1, 1, 3, 3), 3)


# ----------------------------------------------------------------- pooling

POOL_ERRORS = [
    ("kernel_size-zero", X, dict(kernel_size=0), r"kernel_size"),
    ("kernel_size-pair-zero", X, dict(kernel_size=(2, 0)), r"kernel_size"),
    ("stride-zero", X, dict(kernel_size=2, stride=0), r"stride"),
    ("stride-pair-negative", X, dict(kernel_size=2, stride=(1, -1)), r"stride"),
    ("padding-negative", X, dict(kernel_size=2, padding=-1), r"padding"),
    ("padding>k/2", X, dict(kernel_size=3, padding=2), r"padding"),
    ("padding>k/2-pair", X, dict(kernel_size=(4, 3), padding=(2, 2)), r"padding"),
    ("window>input", _arr(1, 1, 2, 5), dict(kernel_size=3), r"(?i)kernel|window"),
    ("window>padded-input", _arr(1, 1, 5, 2), dict(kernel_size=(2, 5), padding=(0, 1)),
     r"(?i)kernel|window"),
    ("x-2d", _arr(5, 5), dict(kernel_size=2), r"\bx\b"),
    ("x-5d", _arr(1, 1, 1, 5, 5), dict(kernel_size=2), r"\bx\b"),
    ("x-empty", _arr(1, 0, 5, 5), dict(kernel_size=2), r"\bx\b"),
    ("x-empty-width", _arr(1, 1, 5, 0), dict(kernel_size=1), r"\bx\b"),
]
POOL_FUNCS = {
    "max": (F.max_pool2d, F.max_pool2d_backward),
    "avg": (F.avg_pool2d, F.avg_pool2d_backward),
}


@pytest.mark.parametrize("kind", list(POOL_FUNCS))
@pytest.mark.parametrize("x, kwargs, pattern", [c[1:] for c in POOL_ERRORS], ids=[c[0] for c in POOL_ERRORS])
def test_pool_rejects(kind, x, kwargs, pattern):
    fwd, bwd = POOL_FUNCS[kind]
    with pytest.raises(ValueError, match=pattern):
        fwd(x, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        bwd(x, _arr(1, 2, 2, 2), **kwargs)


def test_the_pool_error_cases_are_invalid_for_naive_too():
    for name, x, kwargs, _ in POOL_ERRORS:
        assert naive.pool_args_or_none(np.shape(x), **kwargs) is None, name


@pytest.mark.parametrize("kind", list(POOL_FUNCS))
@pytest.mark.parametrize("gy_shape", [(1, 2, 2, 3), (1, 2, 5, 5), (1, 1, 2, 2), (2, 2, 2), (1, 2, 2, 0)])
def test_pool_backward_rejects_grad_y_of_wrong_shape(kind, gy_shape):
    _, bwd = POOL_FUNCS[kind]
    with pytest.raises(ValueError, match=r"grad_y"):
        bwd(X, _arr(*gy_shape), 2)


def test_engine_work_inside_the_engine_pool_finishes(monkeypatch):
    """conv2d_backward may run grad_x as a job on the engine's pool; a call that big
    enough to split its kernels, made from such a job, must run there serially
    instead of waiting on a pool that is busy running it (a deadlock)."""
    from cnn_cli import config
    from cnn_cli.functional import threads

    monkeypatch.setattr(config, "THREADS", 2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 16, 64, 64)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    assert x.shape[0] * w.shape[0] * 64 * 64 * w[0].size >= config.PARALLEL_MIN_WORK
    expected = F.conv2d(x, w, padding=1)
    job = threads.submit(lambda: F.conv2d(x, w, padding=1))
    np.testing.assert_array_equal(job.result(timeout=120), expected)
