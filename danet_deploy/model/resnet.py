"""Dilated ResNet backbone with output stride 8, as DANet uses it.

Attribute names follow torchvision/MMSegmentation (`layer1.0.conv1`, `downsample.0`), which is also what
the official DANet code uses under its `pretrained.` prefix, so checkpoint mapping stays a prefix swap.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from danet_deploy.config import BLOCKS_PER_DEPTH, ModelConfig


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """Stride on the 3x3 conv (the "pytorch" style of both upstream projects)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stem(channels: Sequence[int]) -> nn.Sequential:
    """(C,): 7x7 conv; (a, b, c): three 3x3 convs (deep stem). BN + ReLU after each conv."""
    if len(channels) == 1:
        return nn.Sequential(
            nn.Conv2d(3, channels[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
    layers: list[nn.Module] = []
    in_ch = 3
    for i, out_ch in enumerate(channels):
        layers += [conv3x3(in_ch, out_ch, stride=2 if i == 0 else 1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    return nn.Sequential(*layers)


class DilatedResNet(nn.Module):
    """ResNet with layer3/layer4 dilated instead of strided (output stride 8).

    layer3's first block uses dilation 1 and the rest 2 (both upstream projects contract the first
    block); layer4's blocks use `layer4_dilations` (multi-grid 4, 8, 16 or contracted 2, 4, 4).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if config.bottleneck else BasicBlock
        blocks = BLOCKS_PER_DEPTH[config.depth]
        width = config.base_width
        self.stem = make_stem(config.stem_channels)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = config.stem_channels[-1]
        self.layer1 = self._make_layer(block, width, blocks[0], stride=1, dilations=[1])
        self.layer2 = self._make_layer(block, width * 2, blocks[1], stride=2, dilations=[1])
        self.layer3 = self._make_layer(block, width * 4, blocks[2], stride=1, dilations=[1, 2])
        self.layer4 = self._make_layer(block, width * 8, blocks[3], stride=1, dilations=config.layer4_dilations)
        self.out_channels = self.inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, count: int, stride: int, dilations: Sequence[int]
    ) -> nn.Sequential:
        # Dilations after the listed ones repeat the last (layer3: 1, 2, 2, ...), except for layer4's
        # multi-grid list, which has one entry per block.
        per_block = [dilations[min(i, len(dilations) - 1)] for i in range(count)]
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, per_block[0], downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, d, None) for d in per_block[1:]]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer2(self.layer1(x))
        return self.layer4(self.layer3(x))
