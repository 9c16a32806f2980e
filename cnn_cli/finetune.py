"""Fine-tuning: ``cnn train DATASET --from MODEL``, a trained network's layers under a new head.

The source model (any model ``cnn`` loads: trained here, imported, or an
``.onnx`` file) is cut after one node, the *cut*: by default the input of its
classifier (its last linear layer, or a 1x1 convolution followed by global
pooling), else the node ``--head`` names. Nodes the cut does not read from are
dropped, and a new head for the dataset's classes is appended as graph tables:
``head.fc`` after a flat cut, ``head.pool`` (global average pooling),
``head.flatten`` and ``head.fc`` after one that leaves maps, or ``head.conv``
and copies of what followed the old 1x1 classifier. The kept nodes keep their
names, so their weights load by state-dict name.

``--freeze`` fixes the nodes up to one (in the graph's order; ``all`` is every
node before the head): they run as eval mode runs them, so their batch norms
use and keep their running statistics, and no optimizer sees their weights
(``nn.partial_training``). The unfrozen nodes before the head learn at
``--backbone-lr-mult`` times the rate (``optim.Optimizer``'s ``lr_mults``).
``--probe`` freezes everything but the head and computes the features the
head reads once per image (``embed.Embedder``, the machinery of ``cnn embed``),
so each epoch trains only the head on arrays.

The model keeps the source's preprocessing, and records its lineage in
``meta.source``: the source file and its SHA-256, the cut, the head's nodes and
what was frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import layersel
from .meta import Architecture, ModelError, ModelMeta, Training
from .modelfile import build_network, load_model
from .nn import INPUT, Param, iter_nodes, partial_training

#: What a run's head nodes are called: ``head.fc``, ``head.pool``...
HEAD = "head"

#: Layer kinds that may follow a classifier and are dropped with it (they hold no weights).
AFTER_CLASSIFIER = {"softmax", "dropout", "flatten", "relu", "globalavgpool", "globalmaxpool"}

#: The settings only a fine-tune takes, and their rules (``train._check_settings`` applies them).
RULES = {
    "head": (lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a node's name"),
    "freeze": (lambda v: isinstance(v, str) and v.strip() != "", "none, all or a node's name"),
    "backbone_lr_mult": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                         and 0 <= v < float("inf"), "a finite number of at least 0"),
    "probe": (lambda v: isinstance(v, bool), "true or false"),
}

#: Images whose features ``--probe`` computes at once.
PROBE_BATCH = 64


class FineTuneError(ValueError):
    """The source model cannot be fine-tuned as asked; the message says what to change."""


@dataclass
class Cut:
    """Where the source is cut and what is appended: source ``kept`` nodes, then the ``head``'s tables."""

    kept: list          # indices of the source's nodes kept, in order
    cut: int            # the source's node the head reads
    head: list          # the head's tables (graph form, reading the cut by name)
    how: str            # why the head is there, for the lineage


def _ancestors(inputs, node):
    """``node`` and every node it reads from, directly or not, in order."""
    seen, todo = {node}, [node]
    while todo:
        for j in inputs[todo.pop()]:
            if j != INPUT and j not in seen:
                seen.add(j)
                todo.append(j)
    return sorted(seen)


def _head_names(names):
    """A prefix for the head's nodes that no source node's name starts with."""
    prefix, k = HEAD, 1
    while any(n == prefix or n.startswith(prefix + ".") for n in names):
        prefix, k = f"{HEAD}{k}", k + 1
    return prefix


def _classifier(network):
    """(cut, head kind, classifier node) of the source's classifier: its last linear layer, or a
    1x1 convolution followed by global pooling, with only a chain of weightless layers after it;
    the cut is the node it reads. (None, None, None) when there is none."""
    layers, inputs = network.layers, network.inputs
    for i in range(len(layers) - 1, -1, -1):
        after = range(i + 1, len(layers))
        if any(layers[j].num_params or layers[j].kind not in AFTER_CLASSIFIER or inputs[j] != (j - 1,)
               for j in after):
            break  # anything else after it: the last layers are not a classifier head
        if len(inputs[i]) != 1 or inputs[i][0] == INPUT:
            continue
        if layers[i].kind == "linear":
            return inputs[i][0], "flat", i
        if layers[i].kind == "conv" and tuple(layers[i].kernel_size) == (1, 1) \
                and any(layers[j].kind in ("globalavgpool", "globalmaxpool") for j in after):
            return inputs[i][0], "conv", i
    return None, None, None


def plan_cut(network, tables, where, head=None, classes="classes"):
    """The ``Cut`` of a source ``network`` (its architecture ``tables``) for a new head.

    ``head`` names the node to cut after (OptionError, a usage error, when no
    node has that name); without it the cut is before the classifier, and a
    model with none is refused (FineTuneError).
    """
    names = network.names
    if head is not None:
        cut = layersel.select_one(layersel.of(network.layers, names), head, option="--head")
        kind = "maps" if len(network.shapes[cut]) == 3 else "flat"
        how = f"cut after '{names[cut]}' (--head)"
    else:
        cut, kind, old = _classifier(network)
        if cut is None:
            raise FineTuneError(f"{where}: has no classifier to replace (no linear layer, nor a 1x1 convolution "
                                "followed by global pooling, at its end); name the node to cut after with "
                                f"--head NODE ({layersel.listing(layersel.of(network.layers, names))})")
        how = f"classifier after '{names[cut]}' replaced"
    kept = _ancestors(network.inputs, cut)
    prefix = _head_names(names)
    cut_name = names[cut]
    if kind == "conv":  # a new 1x1 convolution, then copies of the weightless layers after the old one
        head_tables = [{**_table(tables, old), "out_channels": classes, "name": f"{prefix}.conv",
                        "inputs": [cut_name]}]
        for i in range(old + 1, len(names)):
            kind_i = network.layers[i].kind
            name = f"{prefix}.{kind_i}"
            head_tables.append({**_table(tables, i), "name": name if all(t["name"] != name for t in head_tables)
                                else f"{name}{i}", "inputs": [head_tables[-1]["name"]]})
    elif kind == "maps":
        head_tables = [{"type": "globalavgpool", "name": f"{prefix}.pool", "inputs": [cut_name]},
                       {"type": "flatten", "name": f"{prefix}.flatten", "inputs": [f"{prefix}.pool"]},
                       {"type": "linear", "out_features": classes, "name": f"{prefix}.fc",
                        "inputs": [f"{prefix}.flatten"]}]
    else:
        head_tables = [{"type": "linear", "out_features": classes, "name": f"{prefix}.fc", "inputs": [cut_name]}]
    return Cut(kept, cut, head_tables, how)


def _table(tables, i):
    """The source's table of node ``i`` without its graph keys."""
    return {k: v for k, v in tables[i].items() if k not in ("name", "inputs")}


def cut_tables(network, tables, plan, classes):
    """The new architecture's tables: the kept source nodes (graph form, by name), then the head.

    A kept table's ``"classes"`` becomes the source's count of ``classes``, which
    its weights were made for (a cut after the old classifier keeps it).
    """
    names = network.names
    out = []
    for i in plan.kept:
        reads = ["input" if j == INPUT else names[j] for j in network.inputs[i]]
        table = {k: classes if v == "classes" else v for k, v in _table(tables, i).items()}
        out.append({**table, "name": names[i], "inputs": reads})
    return out + plan.head


class FromModel:
    """A run that starts from a trained model (``--from``): checked, and its cut planned, before
    any image is decoded; ``network_and_meta`` then builds the new network."""

    def __init__(self, config):
        from .sources import file_record
        from .train import run_settings

        path = config.from_model
        try:
            self.source, self.source_meta, _ = load_model(path)
            digest = file_record(path)["sha256"]
        except ModelError as exc:
            raise FineTuneError(str(exc)) from None
        except OSError as exc:
            raise FineTuneError(f"{path}: {exc.strerror or exc}") from None
        pre = self.source_meta.preprocessing
        for option, given, own in (("--image-size", config.image_size, pre.image_size),
                                   ("--color", config.color, pre.color)):
            if given is not None and given != own:
                raise FineTuneError(f"{option} {given}: {path} takes {pre.color} {pre.image_size}x"
                                    f"{pre.image_size} images, as it was trained; leave {option} out (images "
                                    "are resized and converted)")
        self.plan = plan_cut(self.source, self.source_meta.architecture.layers, path, config.head)
        config = replace(config, arch=self.source_meta.architecture.name, image_size=pre.image_size,
                         color=pre.color)
        if config.probe and config.freeze != "all":
            raise FineTuneError(f"--probe trains the head alone; it cannot go with --freeze {config.freeze}")
        self.config = run_settings(config, "the settings")
        self.tables = cut_tables(self.source, self.source_meta.architecture.layers, self.plan,
                                 len(self.source_meta.classes))
        self.digest = digest
        # Refuse a --freeze node the new network lacks now, before any image is read.
        frozen_through(self.config.freeze, [self.source.names[i] for i in self.plan.kept],
                       [self.source.layers[i] for i in self.plan.kept])

    def restore(self, dataset, dataset_root, optimizer, report):
        return {}

    def network_and_meta(self, dataset, x_train, n_train, n_val):
        """The new network (the kept nodes' weights from the source, the head's drawn as a run from
        scratch draws its initial weights) and its metadata."""
        from .train import STREAM_TAGS

        config, src = self.config, self.source_meta
        arch = Architecture(src.architecture.name, self.tables,
                            f"fine-tuned from {config.from_model}: {self.plan.how}")
        meta = ModelMeta(arch, dataset.classes, src.preprocessing,
                         Training(config, dataset.split_rule, int(n_train), int(n_val), dataset.sha256,
                                  dataset_fingerprint=dataset.fingerprint),
                         source=self._lineage())
        network = build_network(meta, seed=[config.seed, STREAM_TAGS["init"]], where=f"{config.from_model} with a new head")
        weights = self.source.state_dict()
        for name, arr in network.state_dict().items():
            if not name.startswith(_head_prefix(self.plan)):
                arr[...] = weights[name]
        return network, meta

    def _lineage(self):
        """``meta.source``: the file trained from, the cut, the head and what was frozen."""
        from pathlib import Path

        cfg, plan, src = self.config, self.plan, self.source_meta.source or {}
        head = [t["name"] for t in plan.head]
        notes = [f"fine-tuned: {plan.how}; new head {', '.join(head)}",
                 f"frozen: {_frozen_words(cfg.freeze)}"
                 + (f"; the rest before the head at {cfg.backbone_lr_mult:g} x lr" if cfg.freeze != "all" else "")]
        if src.get("sha256") and src["sha256"] != self.digest:  # an .onnx file is its own source
            notes.append(f"{Path(cfg.from_model).name} came from {src.get('format')} file {src.get('file')} "
                         f"(SHA-256 {src['sha256']})")
        kind = "onnx" if str(cfg.from_model).lower().endswith(".onnx") else "cnn model"
        return {"format": kind, "file": Path(cfg.from_model).name, "sha256": self.digest,
                "fine_tuned": True, "cut": self.source.names[plan.cut], "head": head, "frozen": cfg.freeze,
                "probe": cfg.probe, "assumed": notes}


def _head_prefix(plan):
    return plan.head[0]["name"].rsplit(".", 1)[0] + "."


def _frozen_words(freeze):
    return {"none": "nothing", "all": "every layer before the head"}.get(freeze, f"every layer up to '{freeze}'")


def frozen_through(freeze, names, layers):
    """How many of the nodes (``names``, all before the head) ``freeze`` fixes: none, all, or up
    to and including the node it names (OptionError, a usage error, when there is none)."""
    if freeze == "none":
        return 0
    if freeze == "all":
        return len(names)
    return layersel.select_one(layersel.of(layers, names), freeze, option="--freeze") + 1


def colour_note(color, gray, report):
    """Say once how the dataset's images are made to fit the source's colour."""
    if color == "rgb" and gray.all():
        report("the images are grey and the model takes rgb: each is given as three equal channels")
    elif color == "gray" and not gray.all():
        report("the model takes grey images: colour images are converted to luminance")


class Trainer:
    """What a fine-tune's training steps run: the network's nodes ``first`` onwards, the rest fixed
    (``nn.partial_training``); with ``given``, its inputs are that node's outputs (``--probe``)."""

    def __init__(self, network, first, given=None):
        self.network, self.first = network, first
        self._forward, self.backward = partial_training(network, first, given)
        self.layers = network.layers[first:]

    def forward(self, x, train=False):
        return self._forward(x, train)

    def zero_grad(self):
        for layer in self.layers:
            if isinstance(layer, Param):
                layer.zero_grad()

    def parameters(self):
        """(name, param, grad) of the trained nodes, named as ``Network.parameters`` names them."""
        for name, layer in zip(self.network.names[self.first:], self.layers):
            if isinstance(layer, Param):
                for k, v in layer.params.items():
                    yield f"{name}.{k}", v, layer.grads[k]


def attach(prep, report):
    """Set ``prep`` up for a fine-tune: the trained part (``prep.trainer``), the learning rates of
    the nodes before the head, and for ``--probe`` the features in place of the images."""
    net, cfg, source = prep.network, prep.config, prep.meta.source or {}
    try:
        start = net.names.index(source["head"][0])
    except (KeyError, IndexError, ValueError, TypeError):
        raise FineTuneError("the model does not record its fine-tune's head (meta.source.head)") from None
    first = frozen_through(cfg.freeze, net.names[:start], net.layers[:start])
    backbone = zip(net.names[first:start], net.layers[first:start])  # trained, before the head
    prep.optimizer.lr_mults = {f"{node}.{k}": cfg.backbone_lr_mult for node, layer in backbone
                               if isinstance(layer, Param) for k in layer.params}
    if not cfg.probe:
        prep.trainer = Trainer(net, first)
        return
    pooled = net.layers[start].kind == "globalavgpool" and net.layers[start + 1].kind == "flatten"
    given = start + 1 if pooled else start - 1
    prep.trainer = Trainer(net, given + 1, given)
    prep.val_images = prep.x_val
    prep.x_train = features(net, start - 1, prep.x_train, pooled)
    prep.x_val = features(net, start - 1, prep.x_val, pooled)
    report(f"--probe: computed the features of node '{net.names[start - 1]}' once for {len(prep.x_train)} "
           f"training and {len(prep.x_val)} validation images; training the head on them")


def features(network, node, x, pooled):
    """The output of ``node`` for the normalised images ``x``, in eval mode, through ``cnn embed``'s
    ``Embedder``: with ``pooled``, each map's mean (its ``gap``), as the head's global pooling gives it."""
    from .embed import Embedder
    from .sources import Source

    count = node + 1
    if pooled or len(network.shapes[node]) != 3:
        source = Source(None, None, vector_layers=network.layers[:count], vector_shapes=network.shapes[:count],
                        vector_inputs=network.inputs[:count], vector_names=network.names[:count])
        compute = Embedder(source, node, "gap", normalize=False).rows
    else:  # the maps a 1x1 conv head reads, whole: the nodes run as the Embedder runs them
        def compute(batch):
            for _, y in iter_nodes(network.layers, network.inputs, batch, node):
                pass
            return y
    shape = network.shapes[node][:1] if pooled else network.shapes[node]
    rows = [compute(x[i:i + PROBE_BATCH]) for i in range(0, len(x), PROBE_BATCH)]
    return np.concatenate(rows) if rows else np.zeros((0, *shape), np.float32)


