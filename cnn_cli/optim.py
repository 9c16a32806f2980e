"""Optimizers and learning-rate schedules, with torch.optim's update rules.

Each optimizer keeps its state as named arrays (``state_dict``), so a
checkpoint can save it and ``--resume`` continue exactly where it stopped.
"""

from __future__ import annotations

import math

import numpy as np

from .choices import OPTIMIZERS, SCHEDULES


class Optimizer:
    """Base: ``step(params)`` updates every (name, param, grad) in place.

    ``lr_mults`` ({param name: factor}) gives parameter groups, as torch's
    ``param_groups`` do: the parameter ``name`` moves at ``lr * lr_mults[name]``
    (1 for a name not listed). A fine-tune trains the layers before its new head
    so, at a fraction of the head's rate. ``lr`` stays the one the schedule sets.
    """

    #: The arrays kept per parameter, saved as ``state.<param>.<slot>``.
    SLOTS = ()

    def __init__(self, lr, weight_decay=0.0, lr_mults=None):
        self.lr, self.weight_decay = lr, weight_decay
        self.lr_mults = dict(lr_mults or {})
        self.state = {}  # name -> array
        self.steps = 0

    def step(self, params):
        self.steps += 1
        for name, p, g in params:
            if self.weight_decay:
                g = g + np.float32(self.weight_decay) * p
            self._update(name, p, g, self.lr * self.lr_mults.get(name, 1.0))

    def state_dict(self):
        return {"steps": np.array(self.steps), **{f"state.{k}": v for k, v in self.state.items()}}

    def load_state_dict(self, arrays, params):
        """Restore ``state_dict()``'s arrays for the parameters ``params`` ({name: array}).

        A checkpoint may be crafted or come from another optimizer: every key
        must be one this optimizer writes, for a parameter of this network,
        with its shape, and finite (ValueError names the first that is not).
        """
        steps = arrays.get("steps")
        if steps is None or steps.shape != () or steps.dtype.kind not in "iu" or int(steps) < 0:
            raise ValueError(f"the {type(self).__name__} state has no valid step count")
        state = {}
        for key, value in arrays.items():
            if key == "steps":
                continue
            name, _, slot = key.removeprefix("state.").rpartition(".")
            if not key.startswith("state.") or slot not in self.SLOTS or name not in params:
                raise ValueError(f"the {type(self).__name__} state has an unknown entry '{key}'")
            if value.shape != params[name].shape or value.dtype.kind != "f" or not np.all(np.isfinite(value)):
                raise ValueError(f"the {type(self).__name__} state '{key}' is not a finite float array "
                                 f"of shape {params[name].shape}")
            state[f"{name}.{slot}"] = value.astype(np.float32)
        self.steps, self.state = int(steps), state


class SGD(Optimizer):
    """torch.optim.SGD: buf = momentum * buf + g (buf = g at the first step); p -= lr * buf."""

    SLOTS = ("momentum",)

    def __init__(self, lr, momentum=0.9, weight_decay=0.0, lr_mults=None):
        super().__init__(lr, weight_decay, lr_mults)
        self.momentum = momentum

    def _update(self, name, p, g, lr):
        if self.momentum:
            buf = self.state.get(f"{name}.momentum")
            if buf is None:
                buf = self.state[f"{name}.momentum"] = g.astype(np.float32).copy()
            else:
                buf *= np.float32(self.momentum)
                buf += g
            g = buf
        p -= np.float32(lr) * g


class Adam(Optimizer):
    """torch.optim.Adam (Kingma & Ba, 2015) with bias correction; weight decay adds to the gradient."""

    SLOTS = ("m", "v")

    def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, lr_mults=None):
        super().__init__(lr, weight_decay, lr_mults)
        self.betas, self.eps = betas, eps

    def _update(self, name, p, g, lr):
        # The float32 operations of torch's step, in its order, in place: one scratch array and
        # the denominator a step, where the expressions made eight temporaries (and two zero
        # arrays a parameter for setdefault): the step of a LeNet's 8 parameters took 224 us
        # of CPU against 292, with the same bits.
        b1, b2 = self.betas
        m = self.state.get(f"{name}.m")
        if m is None:
            m = self.state[f"{name}.m"] = np.zeros_like(p)
        v = self.state.get(f"{name}.v")
        if v is None:
            v = self.state[f"{name}.v"] = np.zeros_like(p)
        scratch = np.multiply(g, np.float32(1 - b1))
        m *= np.float32(b1)
        m += scratch
        np.multiply(g, np.float32(1 - b2), out=scratch)
        scratch *= g
        v *= np.float32(b2)
        v += scratch
        t = self.steps
        step = lr / (1 - b1**t)
        denom = np.sqrt(v)
        denom /= np.float32(math.sqrt(1 - b2**t))
        denom += np.float32(self.eps)
        np.multiply(m, np.float32(step), out=scratch)
        scratch /= denom
        p -= scratch


def make_optimizer(name, lr, *, momentum=0.9, weight_decay=0.0, lr_mults=None):
    """The optimizer ``name`` (one of ``choices.OPTIMIZERS``); ``momentum`` applies to sgd only;
    ``lr_mults`` as ``Optimizer`` says."""
    if name == "sgd":
        return SGD(lr, momentum=momentum, weight_decay=weight_decay, lr_mults=lr_mults)
    if name == "adam":
        return Adam(lr, weight_decay=weight_decay, lr_mults=lr_mults)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, but got {name!r}")


def learning_rate(base, schedule, epoch, epochs, step_size=None, gamma=0.1):
    """The learning rate for a 0-based ``epoch``.

    step: base * gamma ** (epoch // step_size), step_size defaulting to a third
    of the run; cosine: torch's CosineAnnealingLR over ``epochs`` down to 0.
    """
    if schedule == "constant":
        return base
    if schedule == "step":
        size = step_size or max(1, epochs // 3)
        return base * gamma ** (epoch // size)
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    raise ValueError(f"schedule must be one of {SCHEDULES}, but got {schedule!r}")


def warmup_factor(epoch, batch, batches, warmup):
    """What the schedule's rate is multiplied by at a 0-based (epoch, batch) of ``batches``.

    Linear warm-up over the first ``warmup`` epochs, batch by batch: from
    1/(warmup * batches) at the first batch up to 1 at the last batch of the
    warm-up, and 1 after it, whichever the schedule.
    """
    if warmup <= 0:
        return 1.0
    return min(1.0, (epoch * batches + batch + 1) / (warmup * batches))
