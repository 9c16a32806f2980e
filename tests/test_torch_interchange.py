"""Our networks against hand-written equivalent ``torch.nn`` modules.

The torch modules below are written from the architecture files, not derived
from our layer objects, so they check the layers' meaning as well as the
names: the state dict of our network must load with ``strict=True``, give
the same logits in eval mode, the same loss and parameter gradients in
training mode, and the same batch-norm running statistics. The optimizers
must take the same steps as ``torch.optim``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

from cnn_cli.modelfile import META_KEY, ModelMeta, build_network, load_model, save_model  # noqa: E402
from cnn_cli.nn import Dropout, Network, softmax_cross_entropy  # noqa: E402
from cnn_cli.optim import SGD, Adam, learning_rate  # noqa: E402
from cnn_cli.pipeline import build_layers, load_architecture  # noqa: E402

SIZE = 16
CLASSES = 3


class BasicBlock(tnn.Module):
    """torchvision's ResNet basic block."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(c_out)
        self.conv2 = tnn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                             tnn.BatchNorm2d(c_out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class TorchNetVLAD(tnn.Module):
    """NetVLAD (Arandjelovic et al., 2016) with a 1x1 conv for the soft assignment."""

    def __init__(self, clusters, dim):
        super().__init__()
        self.conv = tnn.Conv2d(dim, clusters, 1, bias=True)
        self.centroids = tnn.Parameter(torch.rand(clusters, dim))

    def forward(self, x):
        n, d = x.shape[:2]
        x = F.normalize(x, dim=1)
        a = F.softmax(self.conv(x).flatten(2), dim=1)                 # (N, K, P)
        xf = x.flatten(2)                                              # (N, D, P)
        vlad = torch.einsum("nkp,ndp->nkd", a, xf) - self.centroids[None] * a.sum(2)[:, :, None]
        vlad = F.normalize(vlad, dim=2)
        return F.normalize(vlad.flatten(1), dim=1)


def torch_lenet(c):
    return tnn.Sequential(
        tnn.Conv2d(c, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(16 * (SIZE // 4) ** 2, 64), tnn.ReLU(), tnn.Linear(64, CLASSES))


def torch_alexnet(c, p=0.5):
    return tnn.Sequential(
        tnn.Conv2d(c, 16, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(32, 48, 3, padding=1), tnn.ReLU(),
        tnn.Conv2d(48, 48, 3, padding=1), tnn.ReLU(),
        tnn.Conv2d(48, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Dropout(p), tnn.Linear(32 * (SIZE // 8) ** 2, 128), tnn.ReLU(),
        tnn.Dropout(p), tnn.Linear(128, CLASSES))


def torch_resnet(c):
    return tnn.Sequential(
        tnn.Conv2d(c, 16, 3, padding=1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU(),
        BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, CLASSES))


def torch_netvlad(c):
    return tnn.Sequential(
        tnn.Conv2d(c, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 3, padding=1), tnn.ReLU(),
        TorchNetVLAD(8, 32), tnn.Linear(8 * 32, CLASSES))


TORCH = {"lenet": torch_lenet, "alexnet": torch_alexnet, "resnet": torch_resnet, "netvlad": torch_netvlad}
CHANNELS = {"lenet": 1, "alexnet": 3, "resnet": 3, "netvlad": 1}
ARCHS = sorted(TORCH)


def ours(arch, seed=0):
    """Our network for ``arch`` with random biases and batch-norm state, so nothing is trivially zero."""
    _, _, tables = load_architecture(arch)
    net = Network(build_layers(tables, arch, substitutions={"classes": CLASSES}),
                  (CHANNELS[arch], SIZE, SIZE), seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, arr in net.state_dict().items():
        if name.endswith("bias") or name.endswith("running_mean"):
            arr[...] = rng.standard_normal(arr.shape) * 0.1
        elif name.endswith("running_var") or (name.endswith("weight") and arr.ndim == 1):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)
    return net


def to_torch(net, arch, dtype=torch.float32):
    module = TORCH[arch](CHANNELS[arch])
    state = {k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()}
    module.load_state_dict(state, strict=True)
    return module.to(dtype)


def no_dropout(net, module):
    for layer in net.layers:
        if isinstance(layer, Dropout):
            layer.p = 0.0
    for m in module.modules():
        if isinstance(m, tnn.Dropout):
            m.p = 0.0


def batch(arch, n=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, CHANNELS[arch], SIZE, SIZE)).astype(np.float32), rng.integers(0, CLASSES, n)


def assert_close(ours_arr, ref, rel, what):
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(np.abs(ref).max(), 1e-12)
    err = np.abs(np.asarray(ours_arr, np.float64) - ref).max()
    assert err <= rel * scale, f"{what}: max error {err:.3g} is {err / scale:.3g} of the largest magnitude {scale:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_names_and_shapes_match_torch(arch):
    net = ours(arch)
    module = TORCH[arch](CHANNELS[arch])
    theirs = module.state_dict()
    mine = net.state_dict()
    assert set(mine) == set(theirs)
    for name, v in theirs.items():
        assert tuple(mine[name].shape) == tuple(v.shape), name
        assert mine[name].dtype == {torch.float32: np.float32, torch.int64: np.int64}[v.dtype], name
    assert {n for n, _, _ in net.parameters()} == {n for n, _ in module.named_parameters()}


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_logits_match_torch(arch):
    net = ours(arch)
    module = to_torch(net, arch).eval()
    x, _ = batch(arch)
    mine = net.forward(x, train=False)
    with torch.no_grad():
        theirs = module(torch.from_numpy(x)).numpy()
    assert mine.shape == theirs.shape == (len(x), CLASSES)
    assert_close(mine, theirs, 1e-4, f"{arch} eval logits")


@pytest.mark.parametrize("arch", ARCHS)
def test_training_gradients_match_torch(arch):
    """Training-mode forward and backward of the mean cross-entropy, every parameter."""
    net = ours(arch)
    module = to_torch(net, arch, torch.float64).train()
    no_dropout(net, module)
    x, y = batch(arch, n=6)
    net.zero_grad()
    logits = net.forward(x, train=True)
    loss, grad, _ = softmax_cross_entropy(logits, y)
    net.backward(grad)
    xt = torch.from_numpy(x).double().requires_grad_(True)
    t_logits = module(xt)
    t_loss = F.cross_entropy(t_logits, torch.from_numpy(y))
    t_loss.backward()
    assert_close(logits, t_logits.detach().numpy(), 1e-4, f"{arch} training logits")
    assert loss == pytest.approx(t_loss.item(), rel=1e-4)
    theirs = dict(module.named_parameters())
    names = [n for n, _, _ in net.parameters()]
    assert set(names) == set(theirs)
    for name, _, g in net.parameters():
        assert_close(g, theirs[name].grad.numpy(), 5e-4, f"{arch} gradient of {name}")


@pytest.mark.parametrize("arch", ["resnet"])
def test_batchnorm_running_statistics_match_torch(arch):
    net = ours(arch)
    module = to_torch(net, arch, torch.float64).train()
    x, _ = batch(arch, n=5)
    net.forward(x, train=True)
    with torch.no_grad():
        module(torch.from_numpy(x).double())
    theirs = module.state_dict()
    buffers = [n for n in theirs if "running" in n or "num_batches" in n]
    assert len(buffers) == 3 * 9  # stem, 2 per block, 1 per downsample (blocks 2 and 3); 3 buffers each
    for name in buffers:
        if name.endswith("num_batches_tracked"):
            assert int(net.state_dict()[name]) == int(theirs[name]) == 1, name
        else:
            assert_close(net.state_dict()[name], theirs[name].numpy(), 1e-5, name)


def test_model_file_loads_into_torch(tmp_path):
    """A saved model: np.load without pickle, drop __meta__, load_state_dict(strict=True), same logits."""
    arch = "resnet"
    name, description, tables = load_architecture(arch)
    meta = {"architecture": {"name": name, "description": description, "layers": tables},
            "classes": [f"c{i}" for i in range(CLASSES)],
            "preprocessing": {"image_size": SIZE, "color": "rgb", "channels": 3,
                              "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "training": {}}
    net = build_network(ModelMeta.from_parts(meta), seed=3)
    net.forward(batch(arch)[0], train=True)  # non-trivial running statistics
    save_model(tmp_path / "m.npz", net, ModelMeta.from_parts(meta))
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert json.loads(arrays.pop(META_KEY).tobytes())["classes"] == meta["classes"]
    module = TORCH[arch](3)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    module.eval()
    loaded, _, _ = load_model(tmp_path / "m.npz")
    x, _ = batch(arch, seed=7)
    with torch.no_grad():
        theirs = module(torch.from_numpy(x)).numpy()
    assert_close(loaded.forward(x), theirs, 1e-4, "logits of the saved model")


# --------------------------------------------------------------------------- optimizers


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"0.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "0.bias": rng.standard_normal(4).astype(np.float32),
            "2.weight": rng.standard_normal((5, 7)).astype(np.float32)}


def _run_both(make_ours, make_torch, steps=3, seed=0, grad_scale=1.0):
    mine = _params(seed)
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in mine.items()}
    opt, t_opt = make_ours(), make_torch(list(theirs.values()))
    rng = np.random.default_rng(seed + 1)
    for step in range(steps):
        grads = {k: (rng.standard_normal(v.shape) * grad_scale).astype(np.float32) for k, v in mine.items()}
        opt.step([(k, mine[k], grads[k]) for k in mine])
        for k, p in theirs.items():
            p.grad = torch.from_numpy(grads[k].copy())
        t_opt.step()
        for k in mine:
            np.testing.assert_allclose(mine[k], theirs[k].detach().numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{k} after step {step + 1}")


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 0.0), (0.9, 0.01), (0.0, 0.05), (0.5, 0.0)])
def test_sgd_matches_torch(momentum, weight_decay):
    _run_both(lambda: SGD(0.1, momentum=momentum, weight_decay=weight_decay),
              lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=momentum, weight_decay=weight_decay))


@pytest.mark.parametrize("weight_decay,grad_scale", [(0.0, 1.0), (0.01, 1.0), (0.0, 1e-7)],
                         ids=["plain", "weight-decay", "tiny-gradients-where-eps-matters"])
def test_adam_matches_torch(weight_decay, grad_scale):
    _run_both(lambda: Adam(0.01, weight_decay=weight_decay),
              lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=weight_decay), steps=4,
              grad_scale=grad_scale)


def test_adam_state_round_trip_continues_like_torch():
    """state_dict / load_state_dict in the middle of a run changes nothing (what --resume relies on)."""
    mine = _params()
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in mine.items()}
    opt, t_opt = Adam(0.01), torch.optim.Adam(list(theirs.values()), lr=0.01)
    rng = np.random.default_rng(5)
    for step in range(4):
        if step == 2:
            saved = {k: np.array(v) for k, v in opt.state_dict().items()}
            opt = Adam(0.01)
            opt.load_state_dict(saved, mine)
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in mine.items()}
        opt.step([(k, mine[k], grads[k]) for k in mine])
        for k, p in theirs.items():
            p.grad = torch.from_numpy(grads[k].copy())
        t_opt.step()
    for k in mine:
        np.testing.assert_allclose(mine[k], theirs[k].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_learning_rate_schedules_match_torch(schedule):
    epochs, base = 9, 0.1
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base)
    if schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=epochs // 3, gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        assert learning_rate(base, schedule, epoch, epochs) == pytest.approx(sched.get_last_lr()[0], rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()
