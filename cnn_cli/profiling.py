"""Where a network's forward pass spends its time, node by node, as ONNX Runtime's profiler says it.

``profile(network, x)`` runs one eval-mode forward pass of a ``Network`` one
node at a time and times each node; ``by_kind`` sums those rows per layer
kind; ``multiply_adds`` counts a batch's multiply-adds in the convolution and
linear layers. The library prints nothing: ``bench/zoo.py --profile`` (and
later ``cnn info MODEL --profile``) format the rows.

The nodes run as ``Network.node_outputs`` runs them, each layer on its own:
the rewrites ``Network.forward`` makes (a ReLU moved after a max pooling, a
conv fused with the 2x2 pooling after it) are not made, so that every node
has a time of its own. A value is dropped once no later node reads it, as in
a forward pass.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

#: The input of a network's first node (``nn.INPUT``).
_IMAGE = -1


class NodeTime(NamedTuple):
    """One node's share of a forward pass: its name, layer kind, what the layer is, output shape, milliseconds."""

    name: str
    kind: str
    detail: str
    shape: tuple
    ms: float


class KindTime(NamedTuple):
    """The nodes of one layer kind together: how many, their milliseconds and their share of the pass."""

    kind: str
    count: int
    ms: float
    share: float


def profile(network, x, repeat=1):
    """Time each node of an eval-mode forward pass of ``network`` on the batch ``x`` -> [NodeTime], node order.

    With ``repeat`` above 1, the pass runs that many times and each node gets
    its median time: on a shared machine one pass catches other work's
    stalls on a few nodes. Call it once before timing to compile the kernels
    (the first call of each kernel in a process loads or compiles it).
    """
    passes = [_one_pass(network, x) for _ in range(max(1, int(repeat)))]
    first = passes[0]
    return [row._replace(ms=float(np.median([p[i].ms for p in passes]))) for i, row in enumerate(first)]


def _one_pass(network, x):
    last_read = {}
    for i, ins in enumerate(network.inputs):
        for j in ins:
            last_read[j] = i
    values = {_IMAGE: np.asarray(x, np.float32)}
    rows = []
    for i, layer in enumerate(network.layers):
        given = [values[j] for j in network.inputs[i]]
        runner = layer.evaluating()
        start = time.perf_counter()
        values[i] = runner.forward(given[0] if layer.arity == 1 else given)
        ms = (time.perf_counter() - start) * 1e3
        rows.append(NodeTime(network.names[i], layer.kind, layer.describe(), tuple(values[i].shape), ms))
        for j in network.inputs[i]:
            if last_read[j] == i:
                values.pop(j, None)
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
    """
    total = 0
    for layer, shape in zip(network.layers, network.shapes):
        if layer.kind not in ("conv", "linear"):
            continue
        weight = layer.params["weight"]
        per_output = int(np.prod(weight.shape[1:]))  # C_in/groups * kH * kW, or in_features
        total += per_output * int(np.prod(shape))
    return total * batch
