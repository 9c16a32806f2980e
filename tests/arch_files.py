"""Writes the shipped torchvision architecture files (``filters/resnet18.toml`` ...) from their recipes.

The files are what users read (``cnn info resnet50 --size 224``), so they are
plain TOML in the graph form; ResNet-50 alone has 175 nodes, so they are
generated here rather than typed, and ``tests/test_safetensors_import.py``
checks that the shipped files are exactly what this script writes. Run it
from the repository root after changing a recipe::

    python tests/arch_files.py

Node names are torchvision's module paths, so that every ``state_dict`` key
of torchvision's (and timm's, for the ResNets) models is ``<node>.<param>``
here. A node that computes what a torchvision module returns carries that
module's name: the last ReLU of a ResNet block is ``layer1.0``, the Concat of
a SqueezeNet Fire module ``features.3``, the Add of a MobileNetV2 block
``features.2``. Nodes torchvision makes in ``forward`` without a module of
their own (the residual Add, torch.flatten) get names of the same style.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cnn_cli.safetensorsimport import ARCHITECTURES

FILTERS = Path(__file__).resolve().parent.parent / "filters"

#: ``cnn import``'s ``--arch`` names and the file each is shipped as.
FILES = ARCHITECTURES


class _Graph:
    """Tables in order; each reads the table before it unless ``inputs`` says otherwise."""

    def __init__(self):
        self.tables, self.last = [], "input"

    def add(self, name, type_, inputs=None, **fields):
        table = {"name": name, "type": type_}
        if inputs is not None and inputs != [self.last]:
            table["inputs"] = inputs
        table.update(fields)
        self.tables.append(table)
        self.last = name
        return name

    def conv(self, name, out, k, stride=1, padding=0, groups=1, bias=True, inputs=None):
        fields = {"out_channels": out, "kernel_size": k}
        fields.update({key: v for key, v, default in (("stride", stride, 1), ("padding", padding, 0),
                                                         ("groups", groups, 1), ("bias", bias, True))
                       if v != default})
        return self.add(name, "conv", inputs, **fields)


# ------------------------------------------------------------------------------------ ResNet

def _resnet(blocks, bottleneck):
    g = _Graph()
    g.conv("conv1", 64, 7, stride=2, padding=3, bias=False)
    g.add("bn1", "batchnorm")
    g.add("relu", "relu")
    x = g.add("maxpool", "maxpool", kernel_size=3, stride=2, padding=1)
    inplanes, expansion = 64, 4 if bottleneck else 1
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(count):
            p, stride = f"layer{stage}.{b}", 2 if stage > 1 and b == 0 else 1
            if bottleneck:  # torchvision's v1.5: the stride sits on the 3x3
                g.conv(f"{p}.conv1", planes, 1, bias=False, inputs=[x])
                g.add(f"{p}.bn1", "batchnorm")
                g.add(f"{p}.relu", "relu")
                g.conv(f"{p}.conv2", planes, 3, stride=stride, padding=1, bias=False)
                g.add(f"{p}.bn2", "batchnorm")
                g.add(f"{p}.relu_2", "relu")
                g.conv(f"{p}.conv3", planes * 4, 1, bias=False)
                out = g.add(f"{p}.bn3", "batchnorm")
            else:
                g.conv(f"{p}.conv1", planes, 3, stride=stride, padding=1, bias=False, inputs=[x])
                g.add(f"{p}.bn1", "batchnorm")
                g.add(f"{p}.relu", "relu")
                g.conv(f"{p}.conv2", planes, 3, padding=1, bias=False)
                out = g.add(f"{p}.bn2", "batchnorm")
            identity = x
            if stride != 1 or inplanes != planes * expansion:
                g.conv(f"{p}.downsample.0", planes * expansion, 1, stride=stride, bias=False, inputs=[x])
                identity = g.add(f"{p}.downsample.1", "batchnorm")
            g.add(f"{p}.add", "add", inputs=[out, identity])
            x = g.add(p, "relu")
            inplanes = planes * expansion
    g.add("avgpool", "globalavgpool")
    g.add("flatten", "flatten")
    g.add("fc", "linear", out_features="classes")
    return g.tables


# ------------------------------------------------------------------------ AlexNet and VGG

def _classifier(g, dropout_first):
    """torchvision's three-Linear head; AlexNet drops out before each hidden Linear, VGG after."""
    layers = (["dropout", "linear", "relu", "dropout", "linear", "relu", "linear"] if dropout_first
              else ["linear", "relu", "dropout", "linear", "relu", "dropout", "linear"])
    linears = iter([4096, 4096, "classes"])
    for i, kind in enumerate(layers):
        name = f"classifier.{i}"
        if kind == "linear":
            g.add(name, "linear", out_features=next(linears))
        elif kind == "dropout":
            g.add(name, "dropout", p=0.5)
        else:
            g.add(name, "relu")


def _alexnet():
    g = _Graph()
    for i, item in enumerate((("conv", 64, 11, 4, 2), "relu", "pool", ("conv", 192, 5, 1, 2), "relu", "pool",
                              ("conv", 384, 3, 1, 1), "relu", ("conv", 256, 3, 1, 1), "relu",
                              ("conv", 256, 3, 1, 1), "relu", "pool")):
        if item == "relu":
            g.add(f"features.{i}", "relu")
        elif item == "pool":
            g.add(f"features.{i}", "maxpool", kernel_size=3, stride=2)
        else:
            _, out, k, stride, padding = item
            g.conv(f"features.{i}", out, k, stride=stride, padding=padding)
    g.add("flatten", "flatten")
    _classifier(g, dropout_first=True)
    return g.tables


VGG_CONFIGS = {  # Simonyan & Zisserman, table 1 (configurations A and D); "M" a 2x2/2 max pool
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


def _vgg(config):
    g, i = _Graph(), 0
    for v in config:
        if v == "M":
            g.add(f"features.{i}", "maxpool", kernel_size=2, stride=2)
            i += 1
        else:
            g.conv(f"features.{i}", v, 3, padding=1)
            g.add(f"features.{i + 1}", "relu")
            i += 2
    g.add("flatten", "flatten")
    _classifier(g, dropout_first=False)
    return g.tables


# ------------------------------------------------------------------------ SqueezeNet 1.1

def _fire(g, p, squeeze, expand):
    g.conv(f"{p}.squeeze", squeeze, 1)
    s = g.add(f"{p}.squeeze_activation", "relu")
    g.conv(f"{p}.expand1x1", expand, 1)
    a = g.add(f"{p}.expand1x1_activation", "relu")
    g.conv(f"{p}.expand3x3", expand, 3, padding=1, inputs=[s])
    b = g.add(f"{p}.expand3x3_activation", "relu")
    g.add(p, "concat", inputs=[a, b])


def _squeezenet1_1():
    g = _Graph()
    g.conv("features.0", 64, 3, stride=2)
    g.add("features.1", "relu")
    pool = {"kernel_size": 3, "stride": 2, "ceil_mode": True}
    for i, item in enumerate((pool, (16, 64), (16, 64), pool, (32, 128), (32, 128), pool, (48, 192), (48, 192),
                              (64, 256), (64, 256)), start=2):
        if item is pool:
            g.add(f"features.{i}", "maxpool", **pool)
        else:
            _fire(g, f"features.{i}", *item)
    g.add("classifier.0", "dropout", p=0.5)
    g.conv("classifier.1", "classes", 1)
    g.add("classifier.2", "relu")
    g.add("classifier.3", "globalavgpool")
    g.add("flatten", "flatten")
    return g.tables


# ------------------------------------------------------------------------ MobileNetV2

MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),  # (t, c, n, s):
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))              # Sandler et al., table 2


def _conv_bn_relu6(g, p, out, k, stride=1, groups=1):
    """torchvision's Conv2dNormActivation: children 0 (conv), 1 (BN), 2 (ReLU6, a clip to [0, 6])."""
    g.conv(f"{p}.0", out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False)
    g.add(f"{p}.1", "batchnorm")
    return g.add(f"{p}.2", "clip", min=0.0, max=6.0)


def _mobilenet_v2():
    g = _Graph()
    x, c_in, index = _conv_bn_relu6(g, "features.0", 32, 3, stride=2), 32, 1
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        for i in range(n):
            p, stride, hidden = f"features.{index}.conv", s if i == 0 else 1, c_in * t
            k = 0
            if t != 1:
                _conv_bn_relu6(g, f"{p}.0", hidden, 1)
                k = 1
            _conv_bn_relu6(g, f"{p}.{k}", hidden, 3, stride=stride, groups=hidden)
            g.conv(f"{p}.{k + 1}", c, 1, bias=False)
            out = g.add(f"{p}.{k + 2}", "batchnorm")
            x = g.add(f"features.{index}", "add", inputs=[x, out]) if stride == 1 and c_in == c else out
            c_in, index = c, index + 1
    _conv_bn_relu6(g, f"features.{index}", 1280, 1)
    g.add("avgpool", "globalavgpool")
    g.add("flatten", "flatten")
    g.add("classifier.0", "dropout", p=0.2)
    g.add("classifier.1", "linear", out_features="classes")
    return g.tables


# ------------------------------------------------------------------------ the files

#: What every file says at its top, as comments.
_HEADER = """\
Written by tests/arch_files.py; edit the recipe there and run it again.
Node names are torchvision's module paths, so its state_dict keys (and timm's,
for ResNets) are this network's weight names: cnn import FILE.safetensors --arch {arch}.
A node named after a torchvision module computes what that module returns."""

#: AlexNet and VGG end their features in an adaptive average pool, which cnn does not have.
_SIZE_NOTE = """
torchvision's AdaptiveAvgPool2d(({n}, {n})) before the classifier is left out:
it is the identity where the last max pool already gives {n}x{n} maps, as a
224x224 input does. At other sizes the classifier would read another number
of features, so cnn import refuses them, naming the sizes that fit."""

RECIPES = {  # --arch name: (tables, description, note)
    "resnet18": (lambda: _resnet((2, 2, 2, 2), False),
                 "torchvision's ResNet-18 (He et al., 2016): basic blocks [2, 2, 2, 2]", ""),
    "resnet34": (lambda: _resnet((3, 4, 6, 3), False),
                 "torchvision's ResNet-34 (He et al., 2016): basic blocks [3, 4, 6, 3]", ""),
    "resnet50": (lambda: _resnet((3, 4, 6, 3), True),
                 "torchvision's ResNet-50 v1.5 (He et al., 2016): bottleneck blocks [3, 4, 6, 3], stride on the 3x3",
                 ""),
    "alexnet": (_alexnet, "torchvision's AlexNet (Krizhevsky, 2014, one-GPU variant) for 224x224 images",
                _SIZE_NOTE.format(n=6)),
    "vgg11": (lambda: _vgg(VGG_CONFIGS["vgg11"]),
              "torchvision's VGG-11 (Simonyan and Zisserman, 2014, configuration A) for 224x224 images",
              _SIZE_NOTE.format(n=7)),
    "vgg16": (lambda: _vgg(VGG_CONFIGS["vgg16"]),
              "torchvision's VGG-16 (Simonyan and Zisserman, 2014, configuration D) for 224x224 images",
              _SIZE_NOTE.format(n=7)),
    "squeezenet1_1": (_squeezenet1_1, "torchvision's SqueezeNet 1.1 (Iandola et al., 2016): Fire modules", ""),
    "mobilenet_v2": (_mobilenet_v2, "torchvision's MobileNetV2 (Sandler et al., 2018): ReLU6 as clip [0, 6]", ""),
}


def _value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def toml_text(arch):
    """The text of ``arch``'s shipped file."""
    build, description, note = RECIPES[arch]
    lines = [f"# {line}".rstrip() for line in (_HEADER.format(arch=arch) + note).split("\n")]
    lines += ['kind = "architecture"', f"description = {_value(description)}"]
    for table in build():
        lines.append("")
        lines.append("[[layer]]")
        lines += [f"{key} = {_value(v)}" for key, v in table.items()]
    return "\n".join(lines) + "\n"


def path_of(arch):
    return FILTERS / f"{FILES[arch]}.toml"


def main():
    for arch in RECIPES:
        path_of(arch).write_text(toml_text(arch), encoding="utf-8")
        print(f"wrote {path_of(arch)}", file=sys.stderr)


if __name__ == "__main__":
    main()
