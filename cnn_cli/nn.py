"""The network that strings layers together, and the loss.

``Network`` builds its layers in order from the input shape and runs them as
``torch.nn.Sequential`` would, with the state-dict names ``<index>.<param>``.
The layers themselves are in ``cnn_cli.layers``, ``cnn_cli.trainable`` and
``cnn_cli.blocks``; their names stay importable from here.
"""

from __future__ import annotations

import functools
import sys
import time

import numpy as np

from . import config, registry
from . import functional as F
from .blocks import NetVLAD, Residual
from .functional import threads
from .graphlayers import Clip
from .layers import Activation, LayerError, Pool
from .merges import Add
from .profiling import multiply_adds
from .trainable import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, Param

__all__ = ["BatchNorm2d", "Conv2d", "Dropout", "Flatten", "Linear", "NetVLAD", "Network", "Param", "Residual",
           "Segment", "softmax_cross_entropy"]


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy of softmax(logits) against integer labels; returns (loss, dL/dlogits, probs).

    With ``label_smoothing`` eps, the target is (1 - eps) on the label plus
    eps / classes everywhere, as in ``torch.nn.functional.cross_entropy``.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    expz = np.exp(z)
    probs = expz / expz.sum(axis=1, keepdims=True)
    n, classes = logits.shape
    log_probs = z - np.log(expz.sum(axis=1, keepdims=True))
    eps = float(label_smoothing)
    loss = -(1 - eps) * log_probs[np.arange(n), labels].mean()
    grad = probs.copy()
    grad[np.arange(n), labels] -= 1 - eps
    if eps:
        loss -= eps * log_probs.mean(axis=1).mean()
        grad -= eps / classes
    return float(loss), (grad / n).astype(np.float32), probs


class Network:
    """A directed acyclic graph of layers, run as ``torch.nn`` would run the equivalent module.

    Node i is ``layers[i]``; it reads the outputs of the nodes ``inputs[i]``
    (``INPUT``, -1, is the image), all earlier in the list, so the list is a
    topological order and the last node is the output. Without ``inputs`` the
    nodes form a chain, as ``torch.nn.Sequential``. A node's parameters have
    the state-dict names ``<name>.<param>``, with ``names[i]`` the node's name
    (by default its index, as in ``Sequential``). Layers that read several
    nodes (add, concat, mul) have ``arity != 1``; their ``build``, ``forward``
    and ``backward`` take and give lists. ``seed=None`` draws no initial
    weights (they are placeholders): for a network whose weights are loaded next.
    """

    def __init__(self, layers, input_shape, seed=0, inputs=None, names=None):
        self.inputs, self.names = topology(layers, inputs, names)
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        rng = _NoDraws() if seed is None else np.random.default_rng(seed)
        self.shapes = []
        for i, layer in enumerate(self.layers):
            if not registry.allows(layer, registry.NETWORK):
                raise LayerError(f"layer {i} ({layer.kind}) cannot be part of a trained network")
            try:
                self.shapes.append(tuple(layer.build(self.in_shape(i), rng)))
            except (LayerError, ValueError) as exc:
                raise LayerError(f"layer {i} ({self._label(i)}): {exc}") from None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv2d) and self.inputs[i] == (INPUT,):
                layer.input_grad = False  # nothing needs dL/d(image)
        self._steps = _steps(self.layers, self.inputs, range(len(self.layers)))
        self._eval_steps = _steps(self.layers, self.inputs, range(len(self.layers)), inference=True)

    def _label(self, i):
        name = self.names[i]
        return self.layers[i].kind if name == str(i) else f"{name}, {self.layers[i].kind}"

    def in_shape(self, i):
        """The input shape of node ``i``: one shape, or a list of them for a layer that reads several."""
        shapes = [self.input_shape if j == INPUT else self.shapes[j] for j in self.inputs[i]]
        return shapes[0] if self.layers[i].arity == 1 else shapes

    def forward(self, x, train=False, clock=None):
        """The network's output for the batch ``x``. ``clock(step, seconds, output)`` is called after each
        step, if given (``profiling``); a step is a node, or two that run fused (``step.nodes``).

        In eval mode a large enough batch is shared between the threads in chunks, each run through
        the whole network on one core (a whole pass repays the hand-off, a small node did not); eval
        mode computes each image on its own (layers are per example, batch norm uses running stats).
        """
        out, n = len(self.layers) - 1, x.shape[0]
        split = not train and clock is None and n > 1 and config.THREADS > 1 and not threads.in_pool() \
            and n * self._work_per_image >= config.BATCH_SPLIT_MIN_WORK
        chunks = min(n, config.THREADS * config.BATCH_SPLIT_CHUNKS) if split else 1
        if chunks < 2:
            return _run(self._steps if train else self._eval_steps, {INPUT: x}, out, train, clock=clock)
        bounds, outputs = [n * k // chunks for k in range(chunks + 1)], [None] * chunks

        def worker(next_chunk):
            with threads.alone():
                while (k := next_chunk()) is not None:
                    outputs[k] = _run(self._eval_steps, {INPUT: x[bounds[k]:bounds[k + 1]]}, out, False)

        threads.share(worker, chunks)
        return np.concatenate(outputs)

    @functools.cached_property
    def _work_per_image(self):  # the shapes are fixed once built; counting took 0.2-0.5 ms a call
        return multiply_adds(self)

    def backward(self, grad):
        return _back(self._steps, len(self.layers) - 1, grad, INPUT)

    def node_outputs(self, x):
        """Every node's output for the batch ``x`` in eval mode, in node order (each made, no rewrites)."""
        return [y for _, y in iter_nodes(self.layers, self.inputs, x)]

    def segment(self, start=0, stop=None):
        """Nodes ``start`` to ``stop - 1`` as a ``Segment``: run as in eval mode, with a backward pass.

        ``net.segment(0, i + 1)`` gives node i's output, and ``net.segment(i + 1)``
        the logits from it and, backwards, the gradient at node i. Segments of
        one network share what they computed: a node of a later segment that
        reads a node before ``start`` (a skip connection) takes the value the
        earlier segment's last forward pass left.
        """
        stop = len(self.layers) if stop is None else stop
        return Segment(self, start, stop)

    def trainable(self):
        return [layer for layer in self.layers if isinstance(layer, Param)]

    def zero_grad(self):
        for layer in self.trainable():
            layer.zero_grad()

    def parameters(self):
        """(name, param, grad) for every parameter."""
        for name, layer in zip(self.names, self.layers):
            if isinstance(layer, Param):
                for k, v in layer.params.items():
                    yield f"{name}.{k}", v, layer.grads[k]

    def state_dict(self):
        """Every parameter and buffer by torch's name (arrays are the live ones)."""
        out = {}
        for name, layer in zip(self.names, self.layers):
            if isinstance(layer, Param):
                out.update(layer.state(f"{name}."))
        return out

    def load_state_dict(self, state):
        """Copy arrays in; every name must be present with the right shape."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise LayerError(f"weights do not fit the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, arr in own.items():
            value = np.asarray(state[name])
            if value.shape != arr.shape:
                raise LayerError(f"weight '{name}' has shape {value.shape}, but the architecture needs {arr.shape}")
            arr[...] = value

    @property
    def num_params(self):
        return sum(layer.num_params for layer in self.trainable())

    def torch_twin(self):
        """The equivalent ``torch.nn`` module, each layer's own twin, holding a copy of the current
        weights under the same state-dict names (for the tests and ``bench/``; needs torch)."""
        import torch
        from torch import nn

        twins = [layer.torch_twin(self.in_shape(i)) for i, layer in enumerate(self.layers)]
        if self.inputs == chain(len(self.layers)) and self.names == [str(i) for i in range(len(self.layers))]:
            module = nn.Sequential(*twins)
        else:
            module = _TorchGraph(nn, twins, self.inputs, self.names)
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state_dict().items()}, strict=True)
        return module


def _TorchGraph(nn, twins, inputs, names):
    """A ``torch.nn.Module`` that runs ``twins`` as the graph ``inputs`` says, each under its node's name."""

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.nodes = list(zip(names, inputs))
            for name, twin in zip(names, twins):
                self._set(name, twin)

        def _set(self, name, module):
            # A dotted name ("layer1.0.conv1") is a path of submodules, as in torchvision.
            *path, last = name.split(".")
            owner = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.add_module(last, module)

        def _get(self, name):
            return self.get_submodule(name)

        def forward(self, x):
            values = {INPUT: x}
            for i, (name, ins) in enumerate(self.nodes):
                values[i] = self._get(name)(*(values[j] for j in ins))
            return values[len(self.nodes) - 1]

    return Graph()


#: The image, as a node's input.
INPUT = -1


class _NoDraws:
    """Stands in for a random generator where every weight is loaded right after building
    (an import): drawing VGG-16's 138 M initial weights took seconds for nothing."""

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.ones(size, np.float32)

    def standard_normal(self, size=None, dtype=np.float64):
        return np.ones(size, dtype)


def iter_nodes(layers, inputs, x, last=None):
    """(index, output) of nodes 0 to ``last`` (default: all) of a graph for the batch ``x``, in
    order and in eval mode; each value is let go once no node up to ``last`` reads it."""
    last = len(layers) - 1 if last is None else last
    last_read = {}
    for i in range(last + 1):
        for j in inputs[i]:
            last_read[j] = i
    values = {INPUT: x}
    for i in range(last + 1):
        given = [values[j] for j in inputs[i]]
        y = layers[i].forward(given[0] if layers[i].arity == 1 else given)
        for j in set(inputs[i]):
            if last_read[j] == i:
                del values[j]
        if last_read.get(i, -1) > i:
            values[i] = y
        yield i, y


def chain(count):
    """The inputs of ``count`` nodes in a chain: each reads the one before it."""
    return [(i - 1,) for i in range(count)]


def topology(layers, inputs=None, names=None):
    """(inputs, names) for ``layers``, checked: a chain with index names when not given.

    ``layers`` may carry them (``pipeline.build_layers`` returns a ``Layers``
    list with the graph form's ``inputs`` and ``names``).
    """
    inputs = getattr(layers, "inputs", None) if inputs is None else inputs
    names = getattr(layers, "names", None) if names is None else names
    count = len(layers)
    inputs = chain(count) if inputs is None else [tuple(int(j) for j in ins) for ins in inputs]
    names = [str(i) for i in range(count)] if names is None else [str(n) for n in names]
    if len(inputs) != count or len(names) != count or len(set(names)) != count:
        raise LayerError("a network needs one input list and one distinct name per layer")
    for i, (layer, ins) in enumerate(zip(layers, inputs)):
        if not ins or any(not INPUT <= j < i for j in ins):
            raise LayerError(f"layer {i} ({names[i]}) must read earlier layers or the input, not {list(ins)}")
        arity = getattr(layer, "arity", 1)
        if (arity == 1) != (len(ins) == 1):
            raise LayerError(f"layer {i} ({names[i]}, {layer.kind}) reads {len(ins)} inputs, but takes "
                             + ("one" if arity == 1 else "two or more"))
    return inputs, names


class _Node:
    """One step of a run: ``layer`` reads the values ``ins`` and writes the value ``out``."""

    def __init__(self, layer, ins, out, nodes):
        self.layer, self.ins, self.out = layer, tuple(ins), out
        self.nodes = tuple(nodes)  # the network's nodes this step runs, in node order (two when fused)
        self.multi = getattr(layer, "arity", 1) != 1
        self.overwrites = hasattr(layer, "overwrite")  # it has an in-place eval form

    def forward(self, xs, train):
        return self.layer.forward(xs if self.multi else xs[0], train)

    def overwrite(self, xs, dying):
        """The eval-mode output, which may be written over the inputs ``dying`` (indices into ``xs``)."""
        return self.layer.overwrite(xs, dying) if self.multi else self.layer.overwrite(xs[0])

    def backward(self, grad):
        grads = self.layer.backward(grad)
        return list(grads) if self.multi else [grads]


def _fusable_pool(layer):
    return isinstance(layer, Pool) and layer.kind == "maxpool" \
        and F.pair("stride", layer.stride, 1) == F.pair("kernel_size", layer.kernel_size, 1) \
        and F.pair("padding", layer.padding, 0) == (0, 0)


def _steps(layers, inputs, nodes, inference=False):
    """The steps that run ``nodes`` (indices into ``layers``, in order), with these rewrites
    where a node's only reader is the next node and reads nothing else:

    - a ReLU then a max pooling run as the pooling then the ReLU. Max pooling then
      ReLU computes exactly what ReLU then max pooling does: ReLU keeps the order of
      values, so each window keeps its value, and its gradient reaches the same pixel
      (or is zero either way, where the window's maximum is not positive). The swapped
      order runs the ReLU and its gradient on a quarter of the pixels of a 2x2 pooling.
      For ``inference`` only steps (eval mode), a ReLU after a convolution stays where
      it is unless the pooling then joins the convolution: the convolution clips its
      output as it stores it, where the ReLU after the pooling is a pass of its own.
    - a Conv2d then a max pooling of stride = kernel_size, no padding, run as one step
      by ``F.conv2d_max_pool2d`` (``_ConvPool``).
    - a Conv2d then a ReLU or clip, and a sum then a ReLU or clip, run as one step
      (``_ConvActivation``, ``_SumActivation``).

    The value between the two is never made, so the rewrite needs it read by no one else.
    """
    readers = [0] * len(layers)
    for ins in inputs:
        for j in ins:
            if j != INPUT:
                readers[j] += 1
    readers[-1] += 1  # the network's output

    def linked(i, k):
        return inputs[k] == (i,) and readers[i] == 1

    nodes = list(nodes)
    units, k = [], 0
    while k < len(nodes):
        i = nodes[k]
        nxt = nodes[k + 1] if k + 1 < len(nodes) else None
        a, b = layers[i], layers[nxt] if nxt is not None else None
        after_conv = k > 0 and isinstance(layers[nodes[k - 1]], Conv2d) and linked(nodes[k - 1], i)
        if b is not None and linked(i, nxt) and isinstance(a, Activation) and a.kind == "relu" \
                and isinstance(b, Pool) and b.kind == "maxpool" \
                and not (inference and after_conv and not _fusable_pool(b)):
            units += [_Node(b, inputs[i], ("pooled", i), [nxt]), _Node(a, [("pooled", i)], nxt, [i])]
            k += 2
        else:
            units.append(_Node(a, inputs[i], i, [i]))
            k += 1
    steps = []
    for unit in units:
        last = steps[-1] if steps else None
        only = last is not None and unit.ins == (last.out,) \
            and (isinstance(last.out, tuple) or readers[last.out] == 1)
        pair = None
        if only and isinstance(last.layer, Conv2d) and _fusable_pool(unit.layer):
            pair = _ConvPool(last.layer, unit.layer)
        elif only and isinstance(last.layer, Conv2d) and _in_place(unit.layer):
            pair = _ConvActivation(last.layer, unit.layer)
        elif only and isinstance(last.layer, Add) and _in_place(unit.layer):
            pair = _SumActivation(last.layer, unit.layer)
        if pair is None:
            steps.append(unit)
        else:
            steps[-1] = _Node(pair, last.ins, unit.out, last.nodes + unit.nodes)
    return steps


def _in_place(layer):
    """Whether ``layer`` is a ReLU or a clip (ReLU6), which eval mode applies to a conv's output in place."""
    return (isinstance(layer, Activation) and layer.kind == "relu") or isinstance(layer, Clip)


def _clip_range(layer):
    """(lo, hi) of a ReLU (0, inf) or a clip layer, as ``_in_place`` takes them."""
    return (layer.min, layer.max) if isinstance(layer, Clip) else (0.0, np.inf)


class _ConvActivation:
    """A Conv2d and the ReLU or clip after it. In eval mode the activation overwrites the conv's
    output in place: no second array of the same size is made and filled (ReLU and ReLU6 were
    3-14% of a ResNet's and a MobileNet's forward pass). Training runs the two layers as they are."""

    def __init__(self, conv, activation):
        self.conv, self.activation = conv, activation

    def forward(self, x, train=False):
        if not train:  # the conv's path clips its output as it stores it (functional.fused)
            from .functional.fused import conv2d_clip

            return conv2d_clip(x, self.conv.params["weight"], self.conv.params.get("bias"),
                               *_clip_range(self.activation), **self.conv.options)
        y = self.conv.forward(x, train)
        return self.activation.forward(y, True) if train else self.activation.overwrite(y)

    def backward(self, grad):
        return self.conv.backward(self.activation.backward(grad))


class _SumActivation:
    """A sum of nodes and the ReLU or clip after it: how ResNet's blocks end. In eval mode, when an input
    of the sum dies here, one pass writes the clipped sum over it (``functional.fused.sum_clip``), where
    numpy's add then maximum took 4-6 times as long. Otherwise the two layers run as they are."""

    arity = None

    def __init__(self, merge, activation):
        self.merge, self.activation = merge, activation

    def forward(self, xs, train=False):
        y = self.merge.forward(xs, train)
        return self.activation.forward(y, True) if train else self.activation.overwrite(y)

    def overwrite(self, xs, dying):
        into = next((xs[k] for k in dying if k < 2), None)
        if into is not None and len(xs) == 2 and xs[0].shape == xs[1].shape \
                and all(x.dtype == np.float32 and x.flags.c_contiguous for x in xs):
            from .functional.fused import sum_clip

            return sum_clip(into, xs[1] if into is xs[0] else xs[0], *_clip_range(self.activation))
        return self.activation.overwrite(self.merge.overwrite(xs, dying))

    def backward(self, grad):
        return self.merge.backward(self.activation.backward(grad))


def _run(steps, values, out, train, keep=False, clock=None):
    """Run ``steps`` from ``values`` ({id: array}, the inputs); returns the value ``out``.

    ``clock``, if given, is called with each step, its seconds and its output
    (which it must not keep: that would stop the next step writing over it),
    for ``profiling``, whose steps then run exactly as a forward pass runs them.

    Without ``keep``, a value is dropped once the last step that reads it has
    run. In eval mode, that step also writes its output over such an input
    when its layer has an in-place form (``overwrite``: an activation, batch
    norm, a residual sum) and nothing outside the run can see the input's
    memory (``_unshared``): an inference pass then holds, at each step, little
    more than the values later steps read. The given ``values`` (the caller's
    arrays) are never written over.
    """
    last_read = {}
    for n, step in enumerate(steps):
        for j in step.ins:
            last_read[j] = n
    given = set(values)
    for n, step in enumerate(steps):
        xs = [values[j] for j in step.ins]
        dying = [] if train or keep or not step.overwrites else \
            [k for k, j in enumerate(step.ins) if last_read[j] == n and j != out and j not in given
             and _unshared(xs[k], 1 + step.ins.count(j))]
        start = time.perf_counter() if clock else 0.0
        values[step.out] = step.overwrite(xs, dying) if dying else step.forward(xs, train)
        if clock:
            clock(step, time.perf_counter() - start, values[step.out])
        del xs  # the inputs that die here go now, not after the next step
        if not keep:
            for j in step.ins:
                if last_read[j] == n and j != out:
                    values.pop(j, None)
    return values[out]


def _unshared(x, held):
    """Whether ``x`` may be written over: a writeable float32 array referenced ``held`` times (by
    the run's values and the step's input list) and nowhere else, each array or buffer it views
    referenced only by the view. Nothing else (the caller, a layer that kept it, another value
    viewing the same memory) can see it then: numpy's own elision of temporaries tests the same."""
    # getrefcount also counts its argument and this frame's name for the object.
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.writeable) \
            or sys.getrefcount(x) != held + 2:
        return False
    x = x.base
    while x is not None:
        if sys.getrefcount(x) != 3:  # the view's base, this frame's name, the argument
            return False
        x = getattr(x, "base", None)
    return True


def _back(steps, out, grad, want):
    """Backward through ``steps`` from dL/d(value ``out``) = ``grad``; returns dL/d(value ``want``).

    Where a value feeds several steps, their gradients sum; a step whose value
    does not reach ``out`` is skipped.
    """
    grads = {out: grad}
    for step in reversed(steps):
        g = grads.pop(step.out, None)
        if g is None:
            continue
        for j, gj in zip(step.ins, step.backward(g)):
            if gj is not None:
                grads[j] = grads[j] + gj if j in grads else gj
    return grads.get(want)


class _ConvPool:
    """A Conv2d and the max pooling after it, run as one step by ``F.conv2d_max_pool2d``.

    The fused kernel pools each tile of sums while it is in cache and never
    writes the conv output, four times the size of the pooled one. The
    values are exactly those of the two layers; the backward pass is theirs,
    from what this step saves for each of them.
    """

    def __init__(self, conv, pool):
        self.conv, self.pool = conv, pool

    def forward(self, x, train=False):
        weight = self.conv.params["weight"]
        y, argmax = F.conv2d_max_pool2d(x, weight, self.conv.params.get("bias"), pool=self.pool.kernel_size,
                                        **self.conv.options)
        if train:
            self.conv.save_for_backward(x)
            self.pool.save_for_backward((x.shape[0], *self.conv.build(x.shape[1:])), argmax)
        return y

    def backward(self, grad):
        return self.conv.backward(self.pool.backward(grad))


class Segment:
    """Consecutive nodes of a network, run as in eval mode, whose backward pass gives
    the gradient at the segment's input: what explanations (Grad-CAM) need at a node.

    ``forward(x, keep=True)`` computes exactly the eval-mode outputs (batch norm
    with its running statistics, dropout letting everything through) and keeps
    what ``backward`` needs; ``x`` is the value of node ``start - 1`` (the image
    for ``start = 0``). The steps are the network's own rewrites within the
    segment, so its last output is exactly the last node's. ``backward`` also
    sums the conv and linear layers' parameter gradients into their ``grads``,
    as training's backward does. Every value a forward pass makes is left in the
    network's ``_values`` for a later segment's skip connections.
    """

    def __init__(self, network, start, stop):
        layers = [layer.evaluating() for layer in network.layers]
        self.network, self.start, self.stop = network, start, stop
        self.before = INPUT if start == 0 else start - 1
        self._steps = _steps(layers, network.inputs, range(start, stop))

    def forward(self, x, keep=False):
        values = dict(getattr(self.network, "_values", {}))
        values[self.before] = x
        y = _run(self._steps, values, self.stop - 1, keep, keep=True)
        self.network._values = values
        return y

    def backward(self, grad):
        return _back(self._steps, self.stop - 1, grad, self.before)


def partial_training(network, first, given=None):
    """Forward and backward passes of ``network`` that train only its nodes ``first`` onwards.

    Returns ``(forward(x, train) -> output, backward(grad))``. The nodes before
    ``first`` are fixed: they run as eval mode runs them (``evaluating()``: batch
    norm on its running statistics, which do not move; dropout lets everything
    through), keep nothing for a backward pass, and get no gradient, so a
    backward pass stops where they end. With ``given`` (a node index), ``x`` is
    that node's output and only nodes ``first`` onwards run: they must read
    ``given`` or one another (a fine-tune's head trained on features computed
    once). ``forward(x, train=True)`` keeps what ``backward`` needs, as
    ``Network.forward`` does; with ``train=False`` it is the eval-mode output.
    """
    count = len(network.layers)
    after = _steps(network.layers, network.inputs, range(first, count))
    read_after = {j for ins in network.inputs[first:] for j in ins if j < first}
    if given is not None and not read_after <= {given}:
        raise LayerError(f"nodes {first} onwards read nodes other than {given}: {sorted(read_after)}")
    fixed = [layer.evaluating() for layer in network.layers[:first]] + network.layers[first:]
    before = [] if given is not None else _steps(fixed, network.inputs, range(first), inference=True)
    last_read = {j: n for n, step in enumerate(before) for j in step.ins}

    def forward(x, train=False):
        values = {INPUT if given is None else given: x}
        for n, step in enumerate(before):  # what the trained nodes read is kept; the rest goes at once
            values[step.out] = step.forward([values[j] for j in step.ins], False)
            for j in step.ins:
                if last_read[j] == n and j not in read_after:
                    values.pop(j, None)
        return _run(after, {j: values[j] for j in read_after}, count - 1, train)

    def backward(grad):
        _back(after, count - 1, grad, INPUT)

    return forward, backward
