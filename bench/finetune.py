"""`cnn train --from`: fine-tuned against trained from scratch, and against a torch twin.

    python bench/finetune.py [--seeds 3] [--only rnet,lenet] [--epochs 20]

rnet   MTCNN's R-Net with facenet-pytorch's weights (imported from ONNX as in
       tests/test_import.py), on scikit-image's lfw_subset (100 faces, 100
       non-faces, 25x25 grey): per seed, 10 images of each class to train on
       and the other 180 to validate on. Three recipes (probe; fine-tune the
       top, --freeze conv2; fine-tune everything) against the same network
       from random initial weights, trained as long at the same rate.
lenet  A lenet trained on scikit-learn's digits (the 1,347 of a fixed 75%,
       32x32, 10 epochs), then fine-tuned on another task from the other
       450 digits: odd against even, 30 images of each to train on and the
       rest (about 195 of each) to validate on; lr 0.01 for every recipe and
       for the same network from scratch, and `cnn train --arch lenet` from
       scratch at its default lr and at 0.01.
torch  For each fine-tune of everything but the probe: a torch twin (Network.torch_twin) from the same
       initial weights, with the same frozen nodes (eval mode, no gradients),
       optimizer and parameter groups (the backbone at --backbone-lr-mult
       times the rate), fed cnn's shuffles (bench/train.py's same draws) and
       no augmentation: its validation accuracy beside ours.

Needs scikit-learn and scikit-image; torch, onnx and facenet-pytorch for rnet
and the twin (without them those rows are left out).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from cnn_cli import config  # noqa: E402

config.tune_process()

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

#: The recipes of a fine-tune, as cnn train's options: (name, TrainConfig settings).
RECIPES = (("probe", dict(probe=True, freeze="all")),
           ("top", dict(freeze=None)),          # set per network: the node up to which it is frozen
           ("all", dict(freeze="none")))


def torch_twin(prep):
    """Train a torch twin of ``prep``'s fine-tune (before ``fit`` runs it) on cnn's shuffles, without
    augmentation; return its validation accuracy and its final state dict (numpy arrays).

    The twin starts from ``prep.network``'s weights; the nodes ``prep.trainer``
    does not train are frozen as ours are (eval mode, no gradients), and each
    parameter's learning rate is ``lr * prep.optimizer.lr_mults`` (torch's
    parameter groups). Needs torch.
    """
    import torch

    from cnn_cli.optim import learning_rate, warmup_factor
    from cnn_cli.train import random_stream

    cfg, net = prep.config, prep.network
    if prep.x_train.ndim != 4 or cfg.augment:
        raise ValueError("the twin trains on images without augmentation: not a --probe or --augment run")
    model = net.torch_twin()
    for m in model.modules():
        # layers.Pool.torch_twin passes ceil_mode where MaxPool2d takes return_indices (its 5th
        # argument): put it back where it belongs until the twin is fixed there.
        if isinstance(m, torch.nn.MaxPool2d) and m.return_indices:
            m.return_indices, m.ceil_mode = False, True
    first = prep.trainer.first
    frozen = [model.get_submodule(name) for name in net.names[:first]]
    named = dict(model.named_parameters())
    trained = {name for name, _, _ in prep.trainer.parameters()}
    for name, p in named.items():
        p.requires_grad_(name in trained)
    groups = {}
    for name in trained:
        groups.setdefault(prep.optimizer.lr_mults.get(name, 1.0), []).append(named[name])
    opt_class = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
    extra = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    opt = opt_class([{"params": ps, "mult": m} for m, ps in groups.items()], lr=cfg.lr,
                    weight_decay=cfg.weight_decay, **extra)
    x, y = torch.from_numpy(prep.x_train), torch.from_numpy(prep.y_train)
    n, bs = len(y), cfg.batch_size
    batches = -(-n // bs)
    for e in range(cfg.epochs):
        model.train()
        for module in frozen:
            module.eval()  # frozen batch norms keep their running statistics, as ours do
        order = torch.from_numpy(random_stream(cfg.seed, "shuffle", e).permutation(n))
        rate = learning_rate(cfg.lr, cfg.schedule, e, cfg.epochs)
        for b in range(batches):
            for group in opt.param_groups:
                group["lr"] = rate * warmup_factor(e, b, batches, cfg.warmup) * group["mult"]
            idx = order[b * bs:(b + 1) * bs]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx], label_smoothing=cfg.label_smoothing)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(prep.x_val)).argmax(1) == torch.from_numpy(prep.y_val))
                         .float().mean())
    return accuracy, {k: v.numpy() for k, v in model.state_dict().items()}


def run(dataset, settings, out, twin=False, scratch_seed=None):
    """(our validation accuracy, the twin's or None, seconds) of one run of ``cnn train``'s library.

    With ``scratch_seed``, the fine-tune's network is given fresh random weights
    (every node trained at the full rate): the same network from scratch.
    """
    from cnn_cli.modelfile import build_network
    from cnn_cli.train import TrainConfig, fit, prepare

    prep = prepare(dataset, TrainConfig(**settings))
    if scratch_seed is not None:
        prep.network.load_state_dict(build_network(prep.meta, seed=scratch_seed).state_dict())
        prep.optimizer.lr_mults = {}
    theirs = torch_twin(prep)[0] if twin else None
    t0 = time.perf_counter()
    fit(prep, out)
    return prep.result.final_val_accuracy, theirs, time.perf_counter() - t0


# ----------------------------------------------------------------------------- data


def lfw_split(root, seed, per_class=10):
    """lfw_subset as root/train and root/val: ``per_class`` images of each class to train on."""
    from skimage import data

    crops = data.lfw_subset()
    rng = np.random.default_rng(seed)
    for label, ids in (("face", np.arange(100)), ("not_face", np.arange(100, 200))):
        chosen = set(rng.permutation(ids)[:per_class].tolist())
        for k in ids:
            folder = root / ("train" if k in chosen else "val") / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((crops[k] * 255).astype(np.uint8)).save(folder / f"{k:03d}.png")


def digits(size=32):
    """scikit-learn's digits: (images as size x size uint8 arrays, labels), and a fixed 75/25 split."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = [np.asarray(Image.fromarray((img * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
                         .resize((size, size), Image.Resampling.BILINEAR)) for img in raw.images]
    order = np.random.default_rng(0).permutation(len(raw.target))
    cut = int(0.75 * len(order))
    return images, raw.target, order[:cut], order[cut:]


def save_images(images, ids, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(images[i]).save(folder / f"{i:04d}.png")


def parity_split(root, images, labels, ids, seed, per_class=30):
    """The digits ``ids`` as root/train and root/val of two classes, even and odd: ``per_class``
    of each to train on, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    for name, rest in (("even", 0), ("odd", 1)):
        chosen = rng.permutation([i for i in ids if labels[i] % 2 == rest])
        save_images(images, chosen[:per_class], root / "train" / name)
        save_images(images, chosen[per_class:], root / "val" / name)


def rnet_model(tmp):
    """R-Net with facenet-pytorch's weights, imported as tests/test_import.py does; None without torch."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # clirunner's home
    try:
        from tests import torch_zoo as zoo
    except ImportError:
        return None
    from clirunner import cnn

    build, size = zoo.tiny_models()["rnet"]
    path = zoo.export_onnx(zoo.load_mtcnn("rnet"), tmp / "rnet.onnx", size, exporter="legacy", opset=17)
    (tmp / "classes.txt").write_text("not_face\nface\n")
    result = cnn("import", path, "-o", tmp / "rnet.npz", "--scale", "255", "--mean", "127.5", "--std", "128",
                 "--output", "output1", "--classes", tmp / "classes.txt")
    assert result.exit_code == 0, result.output
    return tmp / "rnet.npz"


# ----------------------------------------------------------------------------- the reports


def compare(name, source, datasets, top, common, seeds, twin):
    """Print each recipe's accuracy (and its twin's) against scratch, seed by seed, then the means."""
    print(f"{name}: {'seed':>4}  " + "  ".join(f"{r:>12}" for r, _ in RECIPES) + f"  {'scratch':>8}")
    rows = []
    for seed in range(seeds):
        dataset = datasets(seed)
        with tempfile.TemporaryDirectory() as tmp:
            cells, row = [], []
            for recipe, settings in RECIPES:
                settings = {**common, **settings, "from_model": str(source), "seed": seed}
                settings["freeze"] = settings["freeze"] or top
                ours, theirs, _ = run(dataset, settings, Path(tmp) / f"{recipe}.npz",
                                      twin=twin and recipe != "probe")
                row.append(ours)
                cells.append(f"{ours:.4f}" + (f"/{theirs:.4f}" if theirs is not None else "/   -  "))
            scratch = {**common, "from_model": str(source), "seed": seed, "freeze": "none", "backbone_lr_mult": 1.0}
            ours, _, _ = run(dataset, scratch, Path(tmp) / "scratch.npz", scratch_seed=[seed, 99])
            row.append(ours)
            rows.append(row)
            print(f"{name}: {seed:4d}  " + "  ".join(f"{c:>12}" for c in cells) + f"  {ours:8.4f}", flush=True)
    means = [statistics.mean(r[k] for r in rows) for k in range(len(RECIPES) + 1)]
    print(f"{name}: {'mean':>4}  " + "  ".join(f"{m:12.4f}" for m in means[:-1]) + f"  {means[-1]:8.4f}")
    return means


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="rnet,lenet")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
        twin = True
    except ImportError:
        twin = False
    print("cells: cnn's validation accuracy / its torch twin's (same weights, frozen nodes, rates and batches)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = dict(epochs=args.epochs, batch_size=8)
        if "rnet" in args.only:
            model = rnet_model(tmp) if twin else None
            if model is None:
                print("rnet: needs torch, onnx and facenet-pytorch; left out")
            else:
                def faces(seed):
                    lfw_split(tmp / f"lfw{seed}", seed)
                    return tmp / f"lfw{seed}"
                compare("rnet", model, faces, "conv2", common, args.seeds, twin)
        if "lenet" in args.only:
            from cnn_cli.train import TrainConfig, fit, prepare

            images, labels, first, rest = digits()
            for c in range(10):
                save_images(images, [i for i in first if labels[i] == c], tmp / "digits" / str(c))
            fit(prepare(tmp / "digits", TrainConfig(epochs=10, image_size=32, color="gray")), tmp / "lenet.npz")

            def parity(seed):
                if not (tmp / f"parity{seed}").exists():
                    parity_split(tmp / f"parity{seed}", images, labels, rest, seed)
                return tmp / f"parity{seed}"
            compare("lenet", tmp / "lenet.npz", parity, "3", {**common, "lr": 0.01}, args.seeds, twin)
            for lr in (None, 0.01):  # the real cnn train from scratch: lenet, its own normalisation
                scores = []
                for seed in range(args.seeds):
                    prep = prepare(parity(seed), TrainConfig(epochs=args.epochs, batch_size=8, seed=seed, lr=lr,
                                                             image_size=32, color="gray"))
                    fit(prep, tmp / "scratch.npz")
                    scores.append(prep.result.final_val_accuracy)
                print(f"lenet: cnn train --arch lenet from scratch, lr {prep.config.lr:g}: "
                      f"{' '.join(f'{m:.4f}' for m in scores)}, mean {statistics.mean(scores):.4f}")
    print(f"({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
