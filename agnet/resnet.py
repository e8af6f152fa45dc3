"""ResNet trunks (He et al. 2016) with torchvision's module layout, without importing torchvision.

Importing ``torchvision`` costs about 3 s per process on a 2-core CPU (its ``ops`` package pulls in
``torch._dynamo``), and every training and extraction job is a fresh process. The few classes the trunk
needs are therefore defined here. They build the same modules in the same order, with the same
initialisation, as ``torchvision.models.resnet`` (v0.29): attribute names (``conv1``, ``bn1``,
``layer1.0.downsample.0`` …) match torchvision's, so its ImageNet files load strictly, and for the same
seed the random weights are bit-identical (``tests/test_model.py`` compares both).

Shapes: ``ResNet.forward`` maps (B, 3, H, W) to (B, C) after global average pooling, with
C = 512 (ResNet-18/34) or 2048 (ResNet-50/101); ``fc`` is ``nn.Identity`` (the classifier is not used).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3 × 3 convolutions and an identity (or 1 × 1 projection) shortcut; ResNet-18/34."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1 × 1 → 3 × 3 (stride here, "ResNet v1.5" as torchvision) → 1 × 1 (× 4 channels); ResNet-50/101."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """conv1 (7 × 7, stride 2) → max-pool → layer1 … layer4 (strides 1, 2, 2, 2) → GAP → ``fc``.

    ``widths`` are the four stages' base channel counts (64-128-256-512 for the standard networks).
    ``with_classifier=False`` leaves out the 1000-way ``fc`` (then ``nn.Identity``); building it first and
    replacing it, as ``build_trunk`` does, keeps the random-number stream identical to torchvision's.
    """

    def __init__(self, block: type[nn.Module], layers: list[int], widths=(64, 128, 256, 512),
                 num_classes: int = 1000, with_classifier: bool = True):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for index, (planes, blocks) in enumerate(zip(widths, layers), start=1):
            setattr(self, f"layer{index}", self._make_layer(block, planes, blocks, stride=1 if index == 1 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes) if with_classifier else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


#: torchvision's networks: block type and blocks per stage.
ARCHITECTURES = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


def resnet(name: str) -> ResNet:
    """torchvision's ``models.<name>(weights=None)``: same modules, same initialisation, same RNG draws."""
    block, layers = ARCHITECTURES[name]
    return ResNet(block, layers)


def set_last_stride(net: nn.Module, stride: int) -> nn.Module:
    """Set the stride of ``net.layer4``'s first block (its strided 3 × 3 convolution and its 1 × 1 projection
    shortcut) to ``stride`` in place; returns ``net``.

    ``stride=1`` is BoT's "last stride" trick (Luo et al. 2019): layer4 keeps layer3's resolution, so a ResNet-50 at
    256 × 256 gives a 16 × 16 map instead of 8 × 8. Only strides change: the weights (and so an ImageNet file)
    are the same, and with ``stride=2`` the network is untouched.
    """
    if stride not in (1, 2):
        raise ValueError(f"last stride must be 1 or 2, got {stride}")
    block = net.layer4[0]
    strided = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    strided.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)
    block.stride = stride
    return net
