"""Reference networks, written by hand in torch, for the import tests and ``bench/zoo.py``.

torchvision cannot be installed beside the CPU torch 2.13 used here (its PyPI
wheels are CUDA builds), so the architectures are written out again. Where
torchvision has the model, the module tree, and so every ``state_dict`` key, is
torchvision's: a torchvision checkpoint loads into these with ``strict=True``.

Everything takes and returns ``(N, C, H, W)`` float32 tensors; an input size is
written ``(C, H, W)``.

=====================================  ==============================================
builder                                 source of the layout
=====================================  ==============================================
``resnet18/34/50``                      He et al. 2015; torchvision ``resnet.py`` (v1.5:
                                        the stride sits on the 3x3 of a Bottleneck)
``mobilenet_v2``                        Sandler et al. 2018; torchvision ``mobilenetv2.py``
``mobilenet_v3_small_block``            Howard et al. 2019 (one bneck block with SE)
``squeezenet1_1``                       Iandola et al. 2016; torchvision ``squeezenet.py``
``alexnet``                             torchvision ``alexnet.py`` (the one-GPU variant)
``vgg11``, ``vgg16``                    Simonyan & Zisserman 2014, configs A and D
``inception_block_net``                 Szegedy et al. 2014 (GoogLeNet's module, 5x5 branch)
``densenet_block_net``                  Huang et al. 2017; torchvision ``densenet.py``
``small_unet``                          Ronneberger et al. 2015, three levels
``pnet``, ``rnet``, ``onet``            Zhang et al. 2016 (MTCNN); facenet_pytorch 2.6.0
``alexnet_lrn_onnx``                    Krizhevsky et al. 2012 (LRN, grouped convs)
=====================================  ==============================================

Tests import it as ``torch_zoo`` (pytest puts ``tests/`` on ``sys.path``). Bench scripts
put the repository root on ``sys.path`` first, as ``bench/train.py`` does for
``bench/_torch_twin.py``, then ``from tests import torch_zoo`` (``tests/`` is a namespace
package: it has no ``__init__.py``).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

EXPORTERS = ("legacy", "dynamo")
# The lowest opset torch 2.13's dynamo exporter implements: asked for 17, it exports 18 and
# then tries onnx's version converter, which fails on some graphs (Squeeze/ReduceMean axes).
DYNAMO_MIN_OPSET = 18
DEFAULT_OPSETS = {"legacy": 17, "dynamo": DYNAMO_MIN_OPSET}
MTCNN_NETS = ("pnet", "rnet", "onet")


# ---------------------------------------------------------------- ResNet (torchvision names)

class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut; ``(N, C_in, H, W) -> (N, planes, H/s, W/s)``."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4.

    ``(N, C_in, H, W) -> (N, 4 * planes, H/s, W/s)``.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet: ``(N, 3, H, W) -> (N, num_classes)``.

    conv1 7x7/2, maxpool 3x3/2, four stages (the first stride 1, the others 2),
    global average pool, fc. The last map is H/32 x W/32, so H, W >= 32.
    """

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes=1000):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); 11.7 M parameters at 1000 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet34(num_classes=1000):
    """ResNet-34 (BasicBlock, [3, 4, 6, 3])."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes)


def resnet50(num_classes=1000):
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); 25.6 M parameters at 1000 classes."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


# ---------------------------------------------------------------- MobileNet V2 (torchvision names)

class ConvNormActivation(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: conv (no bias), BN, activation; "same" padding.

    Its children are numbered 0, 1, 2, which is where the ``features.N.0`` keys come from.
    """

    def __init__(self, c_in, c_out, kernel_size=3, stride=1, groups=1, activation=nn.ReLU6):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(c_out),
            activation(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped when t = 1), 3x3 depthwise, 1x1 linear project.

    ``(N, inp, H, W) -> (N, oup, H/s, W/s)``; the input is added back when s = 1 and inp = oup.
    """

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ConvNormActivation(inp, hidden, 1)] if expand_ratio != 1 else []
        layers += [ConvNormActivation(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 at width 1.0: ``(N, 3, H, W) -> (N, num_classes)``.

    The last map is H/32 x W/32.
    """

    # (t, c, n, s) from table 2 of Sandler et al.: expansion, channels, repeats, first stride.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes=1000):
        super().__init__()
        features = [ConvNormActivation(3, 32, stride=2)]
        c_in = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        features.append(ConvNormActivation(c_in, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes=1000):
    """MobileNetV2 (ReLU6, exported as Clip; depthwise 3x3); 3.5 M parameters at 1000 classes."""
    return MobileNetV2(num_classes)


# ---------------------------------------------------------------- MobileNet V3 block

class SqueezeExcitation(nn.Module):
    """torchvision's SE: ``x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))``, fc as 1x1 convs.

    ``(N, C, H, W) -> (N, C, H, W)``; the (N, C, 1, 1) scale broadcasts over H, W (ONNX Mul).
    """

    def __init__(self, channels, squeeze_channels):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


class MobileNetV3Block(nn.Module):
    """A bneck block of MobileNetV3 (Howard et al. 2019, table 2: 5x5, exp 96, out 40, SE, HS).

    1x1 expand + BN + HardSwish, depthwise 5x5 + BN + HardSwish, SE, 1x1 project + BN,
    residual add. ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels, expanded):
        super().__init__()
        self.expand = ConvNormActivation(channels, expanded, 1, activation=nn.Hardswish)
        self.depthwise = ConvNormActivation(expanded, expanded, 5, groups=expanded,
                                            activation=nn.Hardswish)
        self.se = SqueezeExcitation(expanded, expanded // 4)
        self.project = nn.Sequential(nn.Conv2d(expanded, channels, 1, bias=False),
                                     nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class MobileNetV3SmallBlockNet(nn.Module):
    """Stem 3x3/2 (16 ch, HardSwish), 1x1 to 40, one SE bneck block, MobileNetV3's head.

    The head is torchvision's: 1x1 conv + HardSwish, global average pool,
    Linear + HardSwish, Dropout, Linear. ``(N, 3, H, W) -> (N, num_classes)``.
    """

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = ConvNormActivation(3, 16, 3, stride=2, activation=nn.Hardswish)
        self.widen = ConvNormActivation(16, 40, 1, activation=nn.Hardswish)
        self.block = MobileNetV3Block(40, 96)
        self.head = ConvNormActivation(40, 96, 1, activation=nn.Hardswish)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 64), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.head(self.block(self.widen(self.stem(x))))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def mobilenet_v3_small_block(num_classes=10):
    """A small net around one MobileNetV3 block (HardSwish, HardSigmoid, SE); H, W >= 2."""
    return MobileNetV3SmallBlockNet(num_classes)


# -------------------------------------------------------- SqueezeNet 1.1 (torchvision names)

class Fire(nn.Module):
    """1x1 squeeze + ReLU, then 1x1 and 3x3 expands + ReLU, concatenated on channels.

    ``(N, inplanes, H, W) -> (N, e1x1 + e3x3, H, W)``.
    """

    def __init__(self, inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1: ``(N, 3, H, W) -> (N, num_classes)``.

    Three 3x3/2 max pools with ``ceil_mode=True``; the classifier is a 1x1 conv
    + ReLU + global average pool (no Linear). H, W >= 17.
    """

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_1(num_classes=1000):
    """SqueezeNet 1.1; 1.2 M parameters at 1000 classes."""
    return SqueezeNet(num_classes)


# ------------------------------------------------------- AlexNet and VGG (torchvision names)

class AlexNet(nn.Module):
    """torchvision's AlexNet (64-192-384-256-256 channels, no LRN): ``(N, 3, H, W) -> (N, K)``.

    ``avgpool`` is AdaptiveAvgPool2d((6, 6)); at 224 x 224 the features are
    already 6 x 6, so it is the identity there (and exports as such).
    """

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def alexnet(num_classes=1000):
    """torchvision's AlexNet; 61 M parameters at 1000 classes."""
    return AlexNet(num_classes)


# Simonyan & Zisserman, table 1: channel counts of the 3x3 convolutions, "M" a 2x2/2 max pool.
VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


class VGG(nn.Module):
    """torchvision's VGG without BN: ``(N, 3, H, W) -> (N, num_classes)``.

    ``features.N`` alternate Conv2d 3x3 pad 1 and ReLU, with MaxPool2d(2, 2);
    ``avgpool`` is AdaptiveAvgPool2d((7, 7)), the identity at 224 x 224.
    """

    def __init__(self, config, num_classes=1000):
        super().__init__()
        layers, c_in = [], 3
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg11(num_classes=1000):
    """VGG-11 (config A); 133 M parameters at 1000 classes."""
    return VGG(VGG_CONFIGS["vgg11"], num_classes)


def vgg16(num_classes=1000):
    """VGG-16 (config D); 138 M parameters at 1000 classes."""
    return VGG(VGG_CONFIGS["vgg16"], num_classes)


# ---------------------------------------------------------------- GoogLeNet inception module

class BasicConv2d(nn.Module):
    """torchvision GoogLeNet's conv + BN (eps 1e-3) + ReLU."""

    def __init__(self, c_in, c_out, kernel_size, padding=0, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding,
                              bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """GoogLeNet's module (Szegedy et al. 2014, fig. 2b): four branches concatenated.

    1x1; 1x1 -> 3x3; 1x1 -> 5x5 (torchvision writes 3x3 here, a known slip;
    the paper's 5x5 is kept); 3x3/1 max pool (ceil_mode, as torchvision) -> 1x1.
    ``(N, C, H, W) -> (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)``.
    """

    def __init__(self, c_in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(c_in, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(c_in, ch3x3red, 1),
                                     BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(c_in, ch5x5red, 1),
                                     BasicConv2d(ch5x5red, ch5x5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1, ceil_mode=True),
                                     BasicConv2d(c_in, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionBlockNet(nn.Module):
    """Stem conv 3x3/2 + max pool, inception 3a and 3b at a quarter of GoogLeNet's widths, head.

    ``(N, 3, H, W) -> (N, num_classes)``; H, W >= 8.
    """

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = BasicConv2d(3, 48, 3, padding=1, stride=2)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(48, 16, 24, 32, 4, 8, 8)      # 64 channels out
        self.inception3b = Inception(64, 32, 32, 48, 8, 24, 16)    # 120 channels out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(120, num_classes)

    def forward(self, x):
        x = self.inception3b(self.inception3a(self.maxpool1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def inception_block_net(num_classes=10):
    """A small GoogLeNet-style net: two inception modules (Concat of four branches)."""
    return InceptionBlockNet(num_classes)


# ---------------------------------------------------------------- DenseNet block

class DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer``: BN-ReLU-Conv1x1 (bn_size*growth) - BN-ReLU-Conv3x3 (growth).

    ``(N, C, H, W) -> (N, growth_rate, H, W)``: only the new features; the block concatenates.
    """

    def __init__(self, c_in, growth_rate, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features):
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """torchvision's ``_DenseBlock``: layer i sees the concatenation of the input and all earlier
    layers' outputs. ``(N, C, H, W) -> (N, C + num_layers * growth_rate, H, W)``."""

    def __init__(self, num_layers, c_in, bn_size, growth_rate):
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(c_in + i * growth_rate, growth_rate, bn_size)

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """torchvision's ``_Transition``: BN, ReLU, 1x1 conv, 2x2/2 average pool."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseBlockNet(nn.Module):
    """conv0 3x3 + norm0 + relu0 + pool0, dense block of 4 (growth 8), transition to half the
    channels, dense block of 2, norm5, ReLU, global pool, classifier (torchvision's order).

    ``(N, 3, H, W) -> (N, num_classes)``; H, W >= 4.
    """

    def __init__(self, num_classes=10, growth_rate=8, bn_size=4):
        super().__init__()
        c = 16
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, c, 3, padding=1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(c))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, padding=1))
        self.features.add_module("denseblock1", DenseBlock(4, c, bn_size, growth_rate))
        c += 4 * growth_rate
        self.features.add_module("transition1", Transition(c, c // 2))
        c //= 2
        self.features.add_module("denseblock2", DenseBlock(2, c, bn_size, growth_rate))
        c += 2 * growth_rate
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


def densenet_block_net(num_classes=10):
    """A small DenseNet: two dense blocks joined by a transition (average pool)."""
    return DenseBlockNet(num_classes)


# ---------------------------------------------------------------- U-Net

def _double_conv(c_in, c_out):
    """U-Net's unit: (3x3 conv pad 1, BN, ReLU) twice; keeps H, W."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class SmallUNet(nn.Module):
    """Three-level U-Net with the three ways up that exporters turn into ConvTranspose and Resize.

    - level 3 -> 2: ConvTranspose2d(k=2, s=2), then Concat with the level-2 skip;
    - level 2 -> 1: nn.Upsample(scale 2, bilinear, align_corners=False), then Concat
      with the level-1 skip (ONNX Resize, linear, half_pixel);
    - a context path: F.interpolate(bottom, scale 4, nearest), 1x1 conv, Concat into the head
      (ONNX Resize, nearest, asymmetric + floor as torch exports it).

    ``(N, 3, H, W) -> (N, num_classes, H, W)`` per-pixel logits; H and W divisible by 4.
    """

    def __init__(self, num_classes=2, width=8):
        super().__init__()
        w = width
        self.enc1 = _double_conv(3, w)
        self.enc2 = _double_conv(w, 2 * w)
        self.pool = nn.MaxPool2d(2)
        self.bottom = _double_conv(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _double_conv(4 * w, 2 * w)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = _double_conv(3 * w, w)
        self.context = nn.Conv2d(4 * w, w, 1)
        self.head = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        bottom = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(bottom), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        context = self.context(F.interpolate(bottom, scale_factor=4, mode="nearest"))
        return self.head(torch.cat([d1, context], 1))


def small_unet(num_classes=2):
    """A three-level U-Net, 8-16-32 channels: ConvTranspose, bilinear and nearest Resize, Concat."""
    return SmallUNet(num_classes)


# ---------------------------------------------------------------- MTCNN (facenet_pytorch names)

class PNet(nn.Module):
    """MTCNN proposal net, fully convolutional: ``(N, 3, H, W) ->`` (boxes ``(N, 4, h, w)``,
    face probability ``(N, 2, h, w)``) with h = ceil((H - 2) / 2) - 4; 12 x 12 gives 1 x 1.

    Layer names and the output order (regression, then softmax) are facenet_pytorch's.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """MTCNN refinement net: ``(N, 3, 24, 24) ->`` (boxes ``(N, 4)``, probability ``(N, 2)``).

    Column 1 of the probability is "face". The 3 x 3 x 64 map is permuted to
    (N, W, H, C) before flattening, as the Caffe weights (converted by
    facenet_pytorch) expect; the exported graph has a Transpose there.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """MTCNN output net: ``(N, 3, 48, 48) ->`` (boxes ``(N, 4)``, landmarks ``(N, 10)``,
    probability ``(N, 2)``), in facenet_pytorch's order; permuted to (N, W, H, C) as R-Net."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def pnet():
    """MTCNN P-Net, untrained (``load_mtcnn("pnet")`` for the real weights)."""
    return PNet()


def rnet():
    """MTCNN R-Net, untrained (``load_mtcnn("rnet")`` for the real weights)."""
    return RNet()


def onet():
    """MTCNN O-Net, untrained (``load_mtcnn("onet")`` for the real weights)."""
    return ONet()


# Input sizes the MTCNN cascade feeds each net (Zhang et al. 2016, sec. II-A).
MTCNN_INPUT_SIZES = {"pnet": (3, 12, 12), "rnet": (3, 24, 24), "onet": (3, 48, 48)}


def mtcnn_weights_path(name):
    """``facenet_pytorch/data/{name}.pt`` of the installed package, found without importing it.

    Importing facenet_pytorch imports torchvision, which cannot be installed
    here; ``find_spec`` of a top-level package only locates it.
    Raises FileNotFoundError when the package or the file is missing.
    """
    if name not in MTCNN_NETS:
        raise ValueError(f"name must be one of {MTCNN_NETS}, but got {name!r}")
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("facenet_pytorch is not installed; "
                                "pip install --no-deps facenet-pytorch==2.6.0")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / f"{name}.pt"
        if path.is_file():
            return path
    raise FileNotFoundError(f"data/{name}.pt not found in facenet_pytorch at "
                            f"{list(spec.submodule_search_locations)}")


def load_mtcnn(name):
    """The MTCNN net ``name`` ("pnet", "rnet", "onet") with facenet_pytorch's weights, in eval().

    Loaded with ``weights_only=True`` (no pickled code) and ``strict=True``.
    """
    path = mtcnn_weights_path(name)   # validates the name
    model = {"pnet": PNet, "rnet": RNet, "onet": ONet}[name]()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return model.eval()


# ---------------------------------------------------------------- weights and export

def randomize(model, seed):
    """Give every parameter and BN statistic deterministic, non-trivial values; return model.eval().

    Conv, ConvTranspose and Linear weights are He-normal (std sqrt(2 / fan_in)),
    so activations keep their scale through deep stacks; biases are U(-0.1, 0.1).
    Every BatchNorm gets weight U(0.5, 1.5), bias U(-0.2, 0.2), running_mean
    U(-0.2, 0.2) and running_var U(0.5, 2), so no BN is the identity and a
    wrong epsilon or a swapped mean/var shows. PReLU slopes are U(0.05, 0.45),
    distinct per channel.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform_(t, low, high):
        t.copy_(torch.rand(t.shape, generator=g) * (high - low) + low)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                uniform_(m.weight, 0.5, 1.5)
                uniform_(m.bias, -0.2, 0.2)
                uniform_(m.running_mean, -0.2, 0.2)
                uniform_(m.running_var, 0.5, 2.0)
            elif isinstance(m, nn.PReLU):
                uniform_(m.weight, 0.05, 0.45)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
                if m.bias is not None:
                    uniform_(m.bias, -0.1, 0.1)
    return model.eval()


def _ir_version(model_proto):
    """The IR version onnx's release table pairs with the model's opsets (opset 13: 7;
    14-18: 8), rather than whatever the installed onnx or exporter writes by default, so a
    file is the same on every machine and older runtimes read it."""
    default = [o for o in model_proto.opset_import if o.domain in ("", "ai.onnx")]
    return helper.find_min_ir_version_for(default, ignore_unknown=True)


def _output_names(model, example):
    """Graph output names: "output" for one tensor, else "output0", "output1", ... (MTCNN)."""
    with torch.no_grad():
        out = model(example)
    return ["output"] if isinstance(out, torch.Tensor) else [f"output{i}" for i in range(len(out))]


def export_onnx(model, path, size, *, batch=1, exporter="legacy", opset=None, dynamic_hw=False):
    """Export ``model`` (in eval mode) for a ``(batch, *size)`` input named "input"; return path.

    exporter "legacy": ``torch.onnx.export(dynamo=False, opset_version=opset)``, one file;
    opset defaults to 17.
    exporter "dynamo": torch's default exporter (through onnxscript), which writes the weights
    as external data in ``path`` + ".data" beside the graph; opset defaults to, and must be
    at least, 18 (``DYNAMO_MIN_OPSET``).
    dynamic_hw makes input dims 2 and 3 symbolic (legacy names them "height" and "width";
    dynamo names its own symbols).
    Outputs are "output" or "output0", "output1", .... The IR version is then pinned to
    onnx's table for the opset (``_ir_version``) and the file checked with onnx.checker.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, but got {exporter!r}")
    if len(size) != 3:
        raise ValueError(f"size must be (C, H, W), but got {size!r}")
    if opset is None:
        opset = DEFAULT_OPSETS[exporter]
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ValueError(f"the dynamo exporter of torch {torch.__version__} writes opset "
                         f"{DYNAMO_MIN_OPSET} and later (it converts lower opsets down for some "
                         f"graphs only, silently keeping {DYNAMO_MIN_OPSET} for the others), "
                         f"but opset={opset} was asked; use exporter='legacy' or opset >= "
                         f"{DYNAMO_MIN_OPSET}")
    path = Path(path)
    model.eval()
    example = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
    output_names = _output_names(model, example)
    with torch.no_grad():
        if exporter == "legacy":
            dynamic_axes = {"input": {2: "height", 3: "width"}} if dynamic_hw else None
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=output_names,
                              dynamic_axes=dynamic_axes)
        else:
            dims = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=["input"], output_names=output_names,
                              dynamic_shapes=(dims,) if dynamic_hw else None,
                              external_data=True, verbose=False)
    proto = onnx.load(str(path), load_external_data=False)
    written = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if written != opset:
        raise RuntimeError(f"torch wrote opset {written} for {type(model).__name__}, "
                           f"not the opset {opset} asked for")
    proto.ir_version = _ir_version(proto)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


# ---------------------------------------------------------------- AlexNet 2012 with LRN, in ONNX

# Krizhevsky, Sutskever & Hinton 2012, sec. 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75.
LRN_ATTRIBUTES = {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 2.0}

# (name, C_out, kernel, stride, pad, groups) of the five convolutions; groups 2 where the
# paper's two GPUs split the channels (as in Caffe's bvlc_alexnet).
ALEXNET_2012_CONVS = (("conv1", 96, 11, 4, 0, 1), ("conv2", 256, 5, 1, 2, 2),
                      ("conv3", 384, 3, 1, 1, 1), ("conv4", 384, 3, 1, 1, 2),
                      ("conv5", 256, 3, 1, 1, 2))


def _alexnet_2012_map_size(h):
    """Spatial size after conv5's max pool: conv1 11x11/4, then three 3x3/2 max pools with
    floor rounding (ONNX's default); conv2-5 keep the size."""
    h = (h - 11) // 4 + 1
    for _ in range(3):
        h = (h - 3) // 2 + 1
    return h


def alexnet_lrn_onnx(path, seed=0, *, size=(3, 227, 227), num_classes=1000, hidden=4096):
    """Write the 2012 AlexNet with ONNX ``LRN`` nodes (opset 13), random weights; return path.

    conv1 11x11/4 96 - ReLU - LRN - maxpool 3/2 - conv2 5x5 256 (2 groups) - ReLU - LRN -
    maxpool - conv3 3x3 384 - ReLU - conv4 3x3 384 (2 groups) - ReLU - conv5 3x3 256
    (2 groups) - ReLU - maxpool - Flatten - fc6 (hidden) - ReLU - Dropout - fc7 (hidden) -
    ReLU - Dropout - fc8 (num_classes). Input "input" ``(1, *size)``, output "output".

    Built with onnx.helper because torch exports ``LocalResponseNorm`` as a chain of
    Pow/Pad/AveragePool rather than LRN. 227 x 227 gives 6 x 6 after the last pool;
    smaller inputs (at least 67 x 67) shrink fc6's input, and ``hidden`` the FC widths.
    Weights are He-normal, biases U(-0.1, 0.1), drawn from numpy's Generator(seed).
    """
    c_in, h, w = size
    if min(_alexnet_2012_map_size(h), _alexnet_2012_map_size(w)) < 1:
        raise ValueError(f"size must be at least (C, 67, 67) for AlexNet, but got {size!r}")
    rng = np.random.default_rng(seed)
    initializers, nodes = [], []

    def add_weight(name, shape, fan_in):
        initializers.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32), name))

    def add_bias(name, n):
        initializers.append(numpy_helper.from_array(
            rng.uniform(-0.1, 0.1, n).astype(np.float32), name))

    x = "input"
    for name, c_out, k, stride, pad, groups in ALEXNET_2012_CONVS:
        fan_in = c_in // groups * k * k
        add_weight(f"{name}.weight", (c_out, c_in // groups, k, k), fan_in)
        add_bias(f"{name}.bias", c_out)
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [name],
                                      name=name, kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[pad] * 4, group=groups))
        nodes.append(helper.make_node("Relu", [name], [f"relu_{name}"], name=f"relu_{name}"))
        x, c_in = f"relu_{name}", c_out
        if name in ("conv1", "conv2"):
            nodes.append(helper.make_node("LRN", [x], [f"norm_{name}"], name=f"norm_{name}",
                                          **LRN_ATTRIBUTES))
            x = f"norm_{name}"
        if name in ("conv1", "conv2", "conv5"):
            nodes.append(helper.make_node("MaxPool", [x], [f"pool_{name}"], name=f"pool_{name}",
                                          kernel_shape=[3, 3], strides=[2, 2]))
            x = f"pool_{name}"
    nodes.append(helper.make_node("Flatten", [x], ["flatten"], name="flatten", axis=1))
    x = "flatten"
    features = c_in * _alexnet_2012_map_size(h) * _alexnet_2012_map_size(w)
    for name, n_out in (("fc6", hidden), ("fc7", hidden), ("fc8", num_classes)):
        add_weight(f"{name}.weight", (n_out, features), features)
        add_bias(f"{name}.bias", n_out)
        out = "output" if name == "fc8" else name
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out],
                                      name=name, transB=1))
        x, features = out, n_out
        if name != "fc8":
            nodes.append(helper.make_node("Relu", [x], [f"relu_{name}"], name=f"relu_{name}"))
            nodes.append(helper.make_node("Dropout", [f"relu_{name}"], [f"drop_{name}"],
                                          name=f"drop_{name}"))
            x = f"drop_{name}"
    graph = helper.make_graph(
        nodes, "alexnet_2012_lrn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, num_classes])],
        initializers)
    opsets = [helper.make_opsetid("", 13)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tests/torch_zoo.py",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


# ---------------------------------------------------------------- the quick set

def tiny_models():
    """name -> (builder, (C, H, W)): the nets the import tests run on every push.

    Each builder takes no argument and returns an untrained model; call
    ``randomize(model, seed)`` before comparing. Inputs are small: 64 x 64 for
    the ImageNet nets (ResNet-18's last map is 2 x 2 there, MobileNetV2's 2 x 2,
    SqueezeNet's 3 x 3), 32 x 32 for the blocks, the MTCNN nets at their cascade
    sizes. AlexNet, VGG and ResNet-34/50 are left out: their weights (61-138 M
    parameters) or depth make them a benchmark's job.
    """
    return {
        "resnet18": (resnet18, (3, 64, 64)),
        "mobilenet_v2": (mobilenet_v2, (3, 64, 64)),
        "mobilenet_v3_small_block": (mobilenet_v3_small_block, (3, 32, 32)),
        "squeezenet1_1": (squeezenet1_1, (3, 64, 64)),
        "inception_block_net": (inception_block_net, (3, 32, 32)),
        "densenet_block_net": (densenet_block_net, (3, 32, 32)),
        "small_unet": (small_unet, (3, 32, 32)),
        "pnet": (pnet, MTCNN_INPUT_SIZES["pnet"]),
        "rnet": (rnet, MTCNN_INPUT_SIZES["rnet"]),
        "onet": (onet, MTCNN_INPUT_SIZES["onet"]),
    }
