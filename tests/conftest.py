"""Shared fixtures: PyTorch references (skipped when torch is not installed), and a tiny
trained model for the tests of the HTML reports."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import settings

# CI runs a fixed sequence of examples so that a red build is reproducible;
# local runs explore new examples each time (failures are kept in .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _torch_conv2d(x, weight, bias=None, grad_y=None, *, stride=1, padding=0, dilation=1,
                  groups=1, padding_mode="zeros"):
    """torch.nn.Conv2d in float64; returns (y, grad_x, grad_weight, grad_bias) as numpy.

    Gradients are those of sum(grad_y * y) by autograd (None when grad_y is None).
    """
    import torch

    x = torch.tensor(np.asarray(x, dtype=np.float32), dtype=torch.float64, requires_grad=True)
    w = np.asarray(weight, dtype=np.float32)
    c_out, c_in_g, kh, kw = w.shape
    conv = torch.nn.Conv2d(c_in_g * groups, c_out, (kh, kw), stride=stride, padding=padding,
                           dilation=dilation, groups=groups, bias=True,
                           padding_mode=padding_mode, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(w, dtype=torch.float64))
        b = np.zeros(c_out, np.float32) if bias is None else np.asarray(bias, dtype=np.float32)
        conv.bias.copy_(torch.tensor(b, dtype=torch.float64))
    y = conv(x)
    if grad_y is None:
        return y.detach().numpy(), None, None, None
    gy = torch.tensor(np.asarray(grad_y, dtype=np.float32), dtype=torch.float64)
    y.backward(gy)
    return (y.detach().numpy(), x.grad.numpy(), conv.weight.grad.numpy(),
            conv.bias.grad.numpy())


def _torch_pool(kind, x, kernel_size, stride=None, padding=0, grad_y=None):
    """torch max_pool2d / avg_pool2d in float64; returns (y, grad_x)."""
    import torch
    import torch.nn.functional as F

    xt = torch.tensor(np.asarray(x, dtype=np.float32), dtype=torch.float64, requires_grad=True)
    fn = F.max_pool2d if kind == "max" else F.avg_pool2d
    y = fn(xt, kernel_size, stride, padding)
    if grad_y is None:
        return y.detach().numpy(), None
    y.backward(torch.tensor(np.asarray(grad_y, dtype=np.float32), dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy()


def pytest_configure(config):
    # torch notes that it copies the input for even "same" kernels; that is expected.
    config.addinivalue_line(
        "filterwarnings", "ignore:Using padding='same' with even kernel lengths:UserWarning")


@pytest.fixture(scope="session")
def torch_ref():
    """PyTorch reference ops; the test is skipped when torch is missing."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return SimpleNamespace(conv2d=_torch_conv2d, pool=_torch_pool, torch=torch)


@pytest.fixture(scope="session")
def trained_html_class(tmp_path_factory):
    """A LeNet trained for two epochs on three classes of 12x12 patterns, one class folder
    named with HTML, for the reports' tests: ``root`` holds ``data/`` and ``m.npz``."""
    from clirunner import cnn
    from digits import write_patterns

    root = tmp_path_factory.mktemp("trained")
    hostile = "<b onmouseover=alert(2)>&amp;"
    write_patterns(root / "data", per_class=6, size=12)
    (root / "data" / "vertical").rename(root / "data" / hostile)
    result = cnn("train", root / "data", "-o", root / "m.npz", "--epochs", "2", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    return SimpleNamespace(root=root, data=root / "data", model=root / "m.npz", hostile_class=hostile)
