"""Where a network's forward pass spends its time, step by step, as ONNX Runtime's profiler says it.

``profile(network, x)`` runs one eval-mode forward pass of a ``Network`` and
times each step; ``by_kind`` sums those rows per kind; ``multiply_adds``
counts a batch's multiply-adds in the convolution and linear layers. The
library prints nothing: ``bench/zoo.py --profile`` and ``cnn info MODEL
--profile`` format the rows.

The steps are those ``Network.forward`` runs, so the times are a real pass's:
a conv and the ReLU, clip or 2x2 max pooling it feeds run as one step, whose
row names both nodes ("conv1+relu1", kind "conv+relu"), and a ReLU before a
max pooling runs after it, on the pooled values. Where a step may write over
an input that dies, it does, as in a forward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class NodeTime(NamedTuple):
    """One step's share of a forward pass: its node's name, layer kind and description (each joined by "+"
    or "; " for a fused step's two nodes), output shape, milliseconds."""

    name: str
    kind: str
    detail: str
    shape: tuple
    ms: float


class KindTime(NamedTuple):
    """The steps of one kind together: how many, their milliseconds and their share of the pass."""

    kind: str
    count: int
    ms: float
    share: float


def profile(network, x, repeat=1):
    """Time each step of an eval-mode forward pass of ``network`` on the batch ``x`` -> [NodeTime], run order.

    With ``repeat`` above 1, the pass runs that many times and each step gets
    its median time: on a shared machine one pass catches other work's
    stalls on a few steps. Call it once before timing to compile the kernels
    (the first call of each kernel in a process loads or compiles it).
    """
    passes = [_one_pass(network, x) for _ in range(max(1, int(repeat)))]
    first = passes[0]
    return [row._replace(ms=float(np.median([p[i].ms for p in passes]))) for i, row in enumerate(first)]


def _one_pass(network, x):
    rows = []

    def clock(step, seconds, y):
        nodes = step.nodes
        rows.append(NodeTime("+".join(network.names[i] for i in nodes),
                             "+".join(network.layers[i].kind for i in nodes),
                             "; ".join(network.layers[i].describe() for i in nodes), tuple(y.shape), seconds * 1e3))

    network.forward(np.asarray(x, np.float32), clock=clock)
    return rows


def by_kind(rows):
    """[NodeTime] -> [KindTime], the slowest kind first."""
    total = sum(row.ms for row in rows) or 1.0
    kinds = {}
    for row in rows:
        count, ms = kinds.get(row.kind, (0, 0.0))
        kinds[row.kind] = (count + 1, ms + row.ms)
    return sorted((KindTime(kind, count, ms, ms / total) for kind, (count, ms) in kinds.items()),
                  key=lambda k: -k.ms)


def multiply_adds(network, batch=1):
    """Multiply-adds of one forward pass over ``batch`` images, counted in the conv and linear layers.

    A convolution's output pixel costs C_in/groups * kH * kW per filter, a
    linear layer's output in_features; the rest (batch norm, activations,
    pooling, additions) is not counted, as the usual MAC figures of
    ResNet-18 (1.8 G at 224x224) and MobileNetV2 (0.3 G) do not count it.
    A block (``parts``, such as a residual block) counts its convolutions,
    each over the block's output map, which its strided parts produce.
    """
    total = 0
    for layer, shape in zip(network.layers, network.shapes):
        for part in getattr(layer, "parts", {}).values() or [layer]:
            if part.kind in ("conv", "linear"):
                weight = part.params["weight"]
                outputs = int(np.prod(shape)) if part is layer else weight.shape[0] * int(np.prod(shape[1:]))
                total += int(np.prod(weight.shape[1:])) * outputs  # C_in/groups * kH * kW, or in_features
    return total * batch
