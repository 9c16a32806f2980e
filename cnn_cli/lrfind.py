"""The learning-rate range test (``cnn train --find-lr``): training batches at rates that grow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LrFinding:
    """The learning-rate range test's record: the rates tried, the batch losses and their smoothed curve."""

    rates: list
    losses: list
    smoothed: list      # a centred moving average of the losses (``LR_FIND_WINDOW``), without lag
    suggestion: float   # a tenth of ``lowest``
    lowest: float       # the first rate by which the smoothed loss made 98% of its fall to its lowest


#: Batches each side of a point that ``find_lr`` averages the loss over.
LR_FIND_WINDOW = 4


def find_lr(prep, *, start=1e-7, end=10.0, steps=100, stop_factor=4.0):
    """The learning-rate range test (Smith 2017; fastai's ``lr_find``): train for
    ``steps`` batches at rates growing exponentially from ``start`` to ``end``.

    The test stops early when the loss stops being finite or exceeds
    ``stop_factor`` times the lowest running mean of 2 * LR_FIND_WINDOW + 1
    batches. The suggestion is a tenth of the first rate by which the
    smoothed loss (centred, so it does not lag behind the rate as fastai's
    running average does) has made 98% of its fall to its lowest value: a
    rate at which the loss still falls fast. The network and optimizer of ``prep`` are changed and
    should not be saved; nothing is written.
    """
    from .train import TrainingError, random_stream, train_step  # train imports this module

    cfg = prep.config
    n, bs = len(prep.x_train), cfg.batch_size
    batches = max(1, -(-n // bs))
    rates, losses = [], []
    span = 2 * LR_FIND_WINDOW + 1
    for step in range(steps):
        epoch, b = divmod(step, batches)
        order = random_stream(cfg.seed, "shuffle", epoch).permutation(n)
        prep.optimizer.lr = start * (end / start) ** (step / max(steps - 1, 1))
        try:
            loss, _ = train_step(prep, order[b * bs:(b + 1) * bs], random_stream(cfg.seed, "batch", epoch, b),
                                 epoch, b)
        except TrainingError:
            break
        rates.append(prep.optimizer.lr)
        losses.append(loss)
        if len(losses) >= span:
            means = np.convolve(losses, np.ones(span) / span, mode="valid")
            if means[-1] > stop_factor * means.min():
                break
    if len(losses) < 2:
        raise TrainingError(f"the range test diverged at once, from {start:g}; the data cannot be trained on")
    smoothed = [float(np.mean(losses[max(0, i - LR_FIND_WINDOW):i + LR_FIND_WINDOW + 1]))
                for i in range(len(losses))]
    low, first = min(smoothed), smoothed[0]
    near = next(i for i, v in enumerate(smoothed) if v <= low + 0.02 * (first - low))
    return LrFinding(rates, losses, smoothed, rates[near] / 10, rates[near])
