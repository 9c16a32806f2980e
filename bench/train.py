"""Time an epoch of `cnn train` against an equivalent PyTorch loop, in one run.

    python bench/train.py [--epochs 3]

Data: scikit-learn's handwritten digits (1,797 images of 8x8) upscaled to
32x32, split 75/25 with a fixed seed, as in the training tests. Both sides
train the default `lenet` architecture with Adam (lr 0.001), batch 32, on the
same normalised arrays; epochs are interleaved (ours, torch, ours, ...) and
compared by their medians. torch uses 2 threads. Needs scikit-learn; torch is
optional (without it only our time is printed).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as the `cnn` command does (BLAS on one thread, memory reuse), before numpy.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from cnn_cli import config  # noqa: E402

config.tune_process()

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

from _timing import time_once  # noqa: E402


def write_digits(root):
    """The digits as a train/ + val/ ImageFolder of 32x32 PNGs (fixed 75/25 split)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut = int(0.75 * len(order))
    for split, ids in (("train", order[:cut]), ("val", order[cut:])):
        for i in ids:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(np.uint8(digits.images[i] / 16 * 255))
            img.resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i}.png")


def torch_lenet(torch, classes):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed on each side")
    args = parser.parse_args(argv)

    from cnn_cli.train import TrainConfig, prepare, run_epoch

    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp))
        prep = prepare(Path(tmp), TrainConfig(arch="lenet", image_size=32, color="gray"))
    n = len(prep.y_train)
    compile_s, _ = time_once(lambda: run_epoch(prep, 0))
    print(f"digits: {n} training images 32x32, batch 32, lenet, adam")
    print(f"first epoch (includes compiling or loading cached kernels): {compile_s:.2f} s")

    contenders = {"cnn": lambda e: run_epoch(prep, e)}
    try:
        import torch

        torch.set_num_threads(2)
        torch.manual_seed(0)
        model = torch_lenet(torch, len(prep.meta.classes))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.from_numpy(prep.x_train)
        y = torch.from_numpy(prep.y_train)
        loss_fn = torch.nn.CrossEntropyLoss()

        def torch_epoch(e):
            order = torch.randperm(n)
            for i in range(0, n, 32):
                idx = order[i : i + 32]
                opt.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()

        torch_epoch(0)
        contenders["torch"] = torch_epoch
    except ImportError:
        print("torch not installed: only our time is shown")

    times = {name: [] for name in contenders}
    for e in range(1, args.epochs + 1):
        for name, fn in contenders.items():
            times[name].append(time_once(lambda: fn(e))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'':8}{'epoch (s)':>12}{'images/s':>12}")
    for name, t in med.items():
        print(f"{name:8}{t:12.3f}{n / t:12.0f}")
    if "torch" in med:
        print(f"ratio cnn/torch: {med['cnn'] / med['torch']:.2f}  (target <= 1.0)")


if __name__ == "__main__":
    main()
