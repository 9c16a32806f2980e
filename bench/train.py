"""`cnn train` against a torch loop with the same recipe: epoch time, and accuracy.

    python bench/train.py [--arch lenet] [--augment shift=4px,rotate=10,flip] [--timing-epochs 3]
    python bench/train.py --accuracy [--arch all] [--data digits-shift,textures] [--seeds 2] [--same-draws]
    python bench/train.py --lockstep --arch all

Both sides train the same network from the same initial weights (ours,
loaded into a torch twin built from our layers: bench/_torch_twin.py), on
the same normalised arrays, with the same optimizer and learning rate,
batch size, epochs, schedule, warm-up, label smoothing and augmentations
(ours with cnn_cli.augment; torch's with affine_grid + grid_sample on the
batch, drawn from torch's generator). torch runs 2 threads (--torch-threads).

Timing (always): epochs of the digits (scikit-learn's 1,797 8x8 digits
upscaled to 32x32, split 75/25 by a fixed seed) are interleaved, ours with
and without the augmentations, torch's with them, and compared by medians.

Accuracy (--accuracy): full runs with `cnn train`'s defaults for each data
set and architecture, the final validation accuracy of each side:
  digits-shift  the digits, training with --augment (default shift=4px), and
                every validation digit moved by up to 4 px (a fixed draw);
  textures      three classes of 32x32 grey patches (scikit-image's brick,
                grass and gravel photographs, patches of 64x64 halved),
                training patches from the top 60% of each photograph and
                validation patches from the rest, so none overlap.
Same draws (--accuracy --same-draws): a third run, torch fed cnn's shuffles
and augmented batches (dropout masks stay torch's). It ends at cnn's
accuracy to four decimals after 20 epochs (lenet and netvlad on the
textures), so the cnn and torch columns differ only by their random draws;
their per-seed spread (about 2.5 points on the textures) is what --seeds
averages away.
Lockstep (--lockstep): both loops fed the same 50 batches, without
augmentation or dropout, and how far apart their weights end. Where the
arithmetic is the same, they stay within float32 rounding of each other
(lenet: 1e-6; alexnet with SGD: 4e-6), so accuracies differ only by the
random draws (shuffles, augmentations, dropout masks). Adam's step is
nearly the sign of tiny gradients, and batch norm over a channel that is
almost constant divides by sqrt(eps), so both amplify rounding differences
into a different, equally good, path: alexnet with Adam ends 1e-1 apart,
resnet 2e-1 with Adam and 8e-1 with SGD (its batch norm agrees with torch's
to 1e-7 on such channels; the gap is 1e-6 after two steps, 1e-3 after three).

Needs scikit-learn and scikit-image; torch is optional (without it only our
figures are printed).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as the `cnn` command does (BLAS on one thread, memory reuse), before numpy.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from cnn_cli import config  # noqa: E402

config.tune_process()

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from _timing import interleaved_medians, time_once  # noqa: E402

ARCHS = ("lenet", "alexnet", "resnet", "netvlad")
DATA = ("digits-shift", "textures")
DEFAULT_AUGMENT = "shift=4px"
TEST_SHIFT = 4  # pixels the validation digits of digits-shift are moved by, at most


# ----------------------------------------------------------------------------- data sets


def write_digits(root, shift_val=0, size=32):
    """The digits as a train/ + val/ ImageFolder of size x size PNGs (fixed 75/25 split);
    each validation image moved by up to ``shift_val`` pixels (black fill)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut = int(0.75 * len(order))
    rng = np.random.default_rng(1)
    for split, ids in (("train", order[:cut]), ("val", order[cut:])):
        for i in ids:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(np.uint8(digits.images[i] / 16 * 255))
            img = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
            if split == "val" and shift_val:
                dy, dx = rng.integers(-shift_val, shift_val + 1, 2)
                img = np.roll(np.pad(img, shift_val), (dy, dx), axis=(0, 1))[shift_val:-shift_val,
                                                                             shift_val:-shift_val]
            Image.fromarray(img).save(folder / f"{i}.png")


def write_textures(root, per_class=(240, 80), patch=64, size=32):
    """scikit-image's brick, grass and gravel photographs cut into patches: train/ from the top
    60% of each photograph, val/ from the bottom 40%."""
    from skimage import data

    rng = np.random.default_rng(0)
    for name in ("brick", "grass", "gravel"):
        photo = getattr(data, name)()
        cut = int(0.6 * photo.shape[0])
        for split, (top, bottom), count in (("train", (0, cut), per_class[0]),
                                            ("val", (cut, photo.shape[0]), per_class[1])):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                y = rng.integers(top, bottom - patch + 1)
                x = rng.integers(0, photo.shape[1] - patch + 1)
                tile = Image.fromarray(photo[y:y + patch, x:x + patch])
                tile.resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")


def write_data(name, root):
    if name == "digits":
        write_digits(root)
    elif name == "digits-shift":
        write_digits(root, shift_val=TEST_SHIFT)
    elif name == "textures":
        write_textures(root)
    else:
        raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(DATA)}")


def prepared(data, **settings):
    """``train.prepare`` on a fresh copy of the data set ``data``, with ``settings`` for TrainConfig."""
    from cnn_cli.train import TrainConfig, prepare

    with tempfile.TemporaryDirectory() as tmp:
        write_data(data, Path(tmp))
        return prepare(Path(tmp), TrainConfig(image_size=32, color="gray", **settings))


# ----------------------------------------------------------------------------- the torch side


class TorchRun:
    """The torch loop of one run: the twin of ``prep.network``, and ``prep``'s recipe."""

    def __init__(self, prep):
        import torch

        from _torch_twin import TorchAugment, torch_module

        cfg, pre = prep.config, prep.meta.preprocessing
        torch.manual_seed(cfg.seed)
        self.torch, self.prep, self.cfg = torch, prep, cfg
        self.model = torch_module(prep.network)
        opt = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
        kwargs = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
        self.opt = opt(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)
        self.augment = TorchAugment(cfg.augment, pre.mean, pre.std, cfg.augment_fill)
        self.x, self.y = torch.from_numpy(prep.x_train), torch.from_numpy(prep.y_train)
        self.x_val, self.y_val = torch.from_numpy(prep.x_val), torch.from_numpy(prep.y_val)

    def epoch(self, e, our_draws=False):
        """One epoch; with ``our_draws``, on ``cnn train``'s shuffle and augmented batches
        (its random streams) instead of torch's own draws."""
        from cnn_cli.optim import learning_rate, warmup_factor
        from cnn_cli.train import random_stream

        torch, cfg = self.torch, self.cfg
        self.model.train()
        n, bs = len(self.y), cfg.batch_size
        batches = -(-n // bs)
        rate = learning_rate(cfg.lr, cfg.schedule, e, cfg.epochs)
        order = torch.from_numpy(random_stream(cfg.seed, "shuffle", e).permutation(n)) if our_draws \
            else torch.randperm(n)
        for b in range(batches):
            for group in self.opt.param_groups:
                group["lr"] = rate * warmup_factor(e, b, batches, cfg.warmup)
            idx = order[b * bs:(b + 1) * bs]
            self.opt.zero_grad()
            if our_draws:
                xb = torch.from_numpy(self.prep.augmenter(self.prep.x_train[idx.numpy()],
                                                          random_stream(cfg.seed, "batch", e, b)))
            else:
                xb = self.augment(self.x[idx])
            logits = self.model(xb)
            torch.nn.functional.cross_entropy(logits, self.y[idx], label_smoothing=cfg.label_smoothing).backward()
            self.opt.step()

    def accuracy(self):
        with self.torch.no_grad():
            self.model.eval()
            return float((self.model(self.x_val).argmax(1) == self.y_val).float().mean())


def have_torch(threads):
    try:
        import torch

        torch.set_num_threads(threads)
        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------- the two reports


def timing(args, torch_ok):
    from cnn_cli.train import run_epoch

    augmented = prepared("digits", arch=args.arch, augment=args.augment)
    plain = prepared("digits", arch=args.arch)
    n = len(augmented.y_train)
    print(f"digits: {n} training images 32x32, batch {augmented.config.batch_size}, {args.arch}, "
          f"{augmented.config.optimizer}, --augment {','.join(augmented.config.augment)}")
    first, _ = time_once(lambda: run_epoch(augmented, 0))
    print(f"first epoch (includes compiling or loading cached kernels): {first:.2f} s")
    run_epoch(plain, 0)
    contenders = {"cnn": lambda: run_epoch(augmented, 1), "cnn, no augmentation": lambda: run_epoch(plain, 1)}
    if torch_ok:
        twin, twin_plain = TorchRun(augmented), TorchRun(plain)
        twin.epoch(0)
        twin_plain.epoch(0)
        contenders["torch"] = lambda: twin.epoch(1)
        contenders["torch, no augmentation"] = lambda: twin_plain.epoch(1)
    else:
        print("torch not installed: only our times are shown")
    load_before = os.getloadavg()
    med = interleaved_medians(contenders, args.timing_epochs)
    print(f"load average (1, 5, 15 min) before the timed epochs {_load(load_before)}, after {_load(os.getloadavg())}: "
          "torch's threads slow down most when another process holds a core")
    print(f"{'':26}{'epoch (s)':>10}{'images/s':>10}")
    for name, t in med.items():
        print(f"{name:26}{t:10.3f}{n / t:10.0f}")
    print(f"augmentation costs cnn {100 * (med['cnn'] / med['cnn, no augmentation'] - 1):+.1f}% "
          "of an epoch (target <= +25%)")
    if torch_ok:
        print(f"ratio cnn/torch with augmentation: {med['cnn'] / med['torch']:.2f} (target <= 1.0); "
              f"without: {med['cnn, no augmentation'] / med['torch, no augmentation']:.2f}")


def _load(averages):
    return " ".join(f"{a:.2f}" for a in averages)


def accuracy(args, torch_ok):
    from cnn_cli.train import evaluate_arrays, run_epoch

    archs = ARCHS if args.arch == "all" else tuple(args.arch.split(","))
    datas = DATA if args.data == "all" else tuple(args.data.split(","))
    print(f"{'data':14}{'arch':9}{'seed':>5}{'cnn':>8}{'torch':>8}{'cnn s':>8}{'torch s':>8}  recipe")
    for data in datas:
        augment = args.augment if data == "digits-shift" else args.texture_augment
        for arch in archs:
            rows = []
            for seed in range(args.seeds):
                settings = dict(arch=arch, augment=augment, seed=seed)
                if args.epochs:
                    settings["epochs"] = args.epochs
                if args.schedule:
                    settings["schedule"] = args.schedule
                prep = prepared(data, **settings)
                twin = TorchRun(prep) if torch_ok else None
                same = TorchRun(prep) if torch_ok and args.same_draws else None
                ours_s = theirs_s = 0.0
                for e in range(prep.config.epochs):
                    if same is not None:
                        same.epoch(e, our_draws=True)
                    ours_s += time_once(lambda: run_epoch(prep, e))[0]
                    if twin is not None:
                        theirs_s += time_once(lambda: twin.epoch(e))[0]
                ours = evaluate_arrays(prep.network, prep.x_val, prep.y_val)[1]
                theirs = twin.accuracy() if twin is not None else float("nan")
                if same is not None:
                    print(f"{'':14}{'':9}{seed:5d}  torch on cnn's draws: {same.accuracy():.4f} "
                          f"(cnn {ours:.4f})", flush=True)
                rows.append((ours, theirs))
                cfg = prep.config
                recipe = (f"{cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, batch {cfg.batch_size}, {cfg.epochs} epochs, "
                          f"--augment {','.join(cfg.augment) or 'none'}")
                print(f"{data:14}{arch:9}{seed:5d}{ours:8.4f}{theirs:8.4f}{ours_s:8.1f}{theirs_s:8.1f}  {recipe}",
                      flush=True)
            if args.seeds > 1:
                mine, theirs = (statistics.mean(r[i] for r in rows) for i in (0, 1))
                print(f"{data:14}{arch:9}{'mean':>5}{mine:8.4f}{theirs:8.4f}  "
                      f"difference {100 * (mine - theirs):+.1f} points")


def lockstep(args):
    """Both loops fed the same batches, without augmentation or dropout: how far apart the weights drift.

    Equal weights after many steps mean the two sides run the same recipe,
    so their accuracies differ only by their random draws.
    """
    import torch

    from cnn_cli.nn import Dropout
    from cnn_cli.train import train_step

    archs = ARCHS if args.arch == "all" else tuple(args.arch.split(","))
    for arch in archs:
        prep = prepared("digits", arch=arch, optimizer=args.lockstep_optimizer)
        twin = TorchRun(prep)
        for layer in prep.network.layers:
            if isinstance(layer, Dropout):
                layer.p = 0.0
        for m in twin.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        twin.model.train()
        n, steps = len(prep.y_train), 50
        order = np.random.default_rng(0).permutation(n)
        for b in range(steps):
            idx = order[(b * 32) % (n - 32):][:32]
            train_step(prep, idx, np.random.default_rng(b), 0, b)
            twin.opt.zero_grad()
            torch.nn.functional.cross_entropy(twin.model(twin.x[idx]), twin.y[idx]).backward()
            twin.opt.step()
        theirs = twin.model.state_dict()
        worst = max(float(np.linalg.norm(v - theirs[k].numpy()) / max(float(theirs[k].norm()), 1e-12))
                    for k, v in prep.network.state_dict().items() if v.dtype.kind == "f")
        print(f"lockstep {arch:8} {args.lockstep_optimizer}: after {steps} steps of the same batches the weights "
              f"differ by at most {worst:.1e} of their norm (tensor by tensor)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="lenet", help="lenet, alexnet, resnet, netvlad or a file; with "
                        "--accuracy or --lockstep also a comma-separated list, or all (only one is timed)")
    parser.add_argument("--augment", default=DEFAULT_AUGMENT, help="as cnn train --augment, for the timing and "
                        f"for digits-shift (default {DEFAULT_AUGMENT})")
    parser.add_argument("--texture-augment", default="flip,vflip", help="--augment for textures")
    parser.add_argument("--timing-epochs", type=int, default=3, help="epochs timed on each side")
    parser.add_argument("--accuracy", action="store_true", help="also train full runs and compare accuracy")
    parser.add_argument("--lockstep", action="store_true", help="also run both loops on the same batches "
                        "(no augmentation or dropout) and print how far their weights drift apart")
    parser.add_argument("--lockstep-optimizer", default="adam", help="with --lockstep: adam or sgd")
    parser.add_argument("--data", default="all", help=f"with --accuracy: {', '.join(DATA)} or all")
    parser.add_argument("--seeds", type=int, default=1, help="with --accuracy: runs per data set and architecture")
    parser.add_argument("--same-draws", action="store_true", help="with --accuracy: also train torch on cnn's "
                        "shuffles and augmented batches; equal accuracy means the two differ only by their draws")
    parser.add_argument("--epochs", type=int, default=None, help="with --accuracy: epochs [default: cnn train's]")
    parser.add_argument("--schedule", default=None, help="with --accuracy: constant, step or cosine "
                        "[default: cnn train's]")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch's threads (2: the size of the "
                        "machine; 1 is steadier when other processes keep a core busy)")
    args = parser.parse_args(argv)
    torch_ok = have_torch(args.torch_threads)
    started = time.perf_counter()
    if args.arch in ARCHS or Path(args.arch).is_file():  # one architecture: time its epochs
        timing(args, torch_ok)
    if args.lockstep and torch_ok:
        print()
        lockstep(args)
    if args.accuracy:
        print()
        accuracy(args, torch_ok)
    print(f"\n({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
