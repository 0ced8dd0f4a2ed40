"""Linear-cost attention modules from DANet's literature, as drop-in replacements for its branches.

Each keeps its upstream parameter names, so weights trained with the reference code load unchanged:
Shuffle Attention as SA-Net's `sa_layer` (cweight, cbias, sweight, sbias, gn), squeeze-excitation as
torchvision's `SqueezeExcitation` (fc1, fc2). Output shape equals input shape for all three.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleAttention(nn.Module):
    """SA-Net: G groups, each split into a channel-gated and a spatially-gated half, then shuffled.

    Channel half: sigmoid(cweight * avgpool(x) + cbias) * x. Spatial half: sigmoid(sweight * GN(x) + sbias) * x,
    GroupNorm with one group per channel. Concatenated per group, then a 2-group channel shuffle.
    """

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        if channels % (2 * groups):
            raise ValueError(f"Shuffle Attention needs channels ({channels}) divisible by 2 * groups ({groups})")
        self.groups = groups
        half = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        grouped = x.reshape(b * self.groups, c // self.groups, h, w)
        x_channel, x_spatial = grouped.chunk(2, dim=1)
        channel_gate = torch.sigmoid(self.cweight * x_channel.mean((2, 3), keepdim=True) + self.cbias)
        spatial_gate = torch.sigmoid(self.sweight * self.gn(x_spatial) + self.sbias)
        out = torch.cat([x_channel * channel_gate, x_spatial * spatial_gate], dim=1).reshape(b, c, h, w)
        return channel_shuffle(out, 2)


class SqueezeExcitation(nn.Module):
    """SE: x * sigmoid(fc2(relu(fc1(avgpool(x))))), the FCs as 1x1 convs (torchvision's names)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class SpatialGate(nn.Module):
    """x * sigmoid(1x1 conv(x)): one gate value per position, shared by all channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x))
