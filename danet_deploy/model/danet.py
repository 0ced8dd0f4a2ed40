"""DANet: dilated ResNet + dual attention head (position attention PAM, channel attention CAM).

Defined exactly as the official code and MMSegmentation compute it; head attribute names follow
MMSegmentation's `DAHead` (the descriptive ones), checkpoint mapping lives in `checkpoints.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from danet_deploy.config import ModelConfig
from danet_deploy.model.light_attention import ShuffleAttention, SpatialGate, SqueezeExcitation
from danet_deploy.model.resnet import DilatedResNet


class ConvBNReLU(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


# The exact memory-efficient PAM evaluation keeps each query block's attention map at about this many bytes.
QUERY_CHUNK_BYTES = 64 << 20


class PositionAttention(nn.Module):
    """PAM: out = gamma * V softmax(Q^T K)^T + x over all N = H*W positions (no 1/sqrt(d) scaling).

    As trained (and exported) the N x N map is computed at once: 4 GiB per map at 1024x2048. With
    `block_bytes` set (see `memory_efficient_attention`) the same attention is evaluated one block of
    queries at a time: softmax is over the keys of each query row, so the rows are independent and the
    result equals the full computation up to float rounding, with block x N maps of about that size.
    torch's `scaled_dot_product_attention(scale=1)` is no help on the CPU: its memory-efficient kernels need
    the value head size to equal the query/key one (PAM: 512 vs 64), and its fallback builds the N x N map.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.query_project = nn.Conv2d(channels, channels // 8, 1)
        self.key_project = nn.Conv2d(channels, channels // 8, 1)
        self.value_project = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.block_bytes: int | None = None  # None: the whole map at once, as trained
        self.last_block: int | None = None  # queries per block in the last forward (None: all at once)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.query_project(x).flatten(2).transpose(1, 2)  # B, N, C/8
        key = self.key_project(x).flatten(2)  # B, C/8, N
        value = self.value_project(x).flatten(2)  # B, C, N
        n = query.shape[1]
        chunk = n if self.block_bytes is None else query_chunk(n, query.element_size(), self.block_bytes)
        self.last_block = None
        if chunk >= n or torch.onnx.is_in_onnx_export():
            attention = torch.softmax(torch.bmm(query, key), dim=-1)  # B, N, N
            out = torch.bmm(value, attention.transpose(1, 2))
        else:
            out = value.new_empty(value.shape)
            self.last_block = chunk
            for start in range(0, n, chunk):
                attention = torch.softmax(torch.bmm(query[:, start : start + chunk], key), dim=-1)  # B, chunk, N
                out[:, :, start : start + chunk] = torch.bmm(value, attention.transpose(1, 2))
        return self.gamma * out.reshape(x.shape) + x


def query_chunk(positions: int, itemsize: int = 4, max_bytes: int = QUERY_CHUNK_BYTES) -> int:
    """Queries per block so that one block's attention map (block x N) stays within `max_bytes`."""
    return max(1, min(positions, max_bytes // (positions * itemsize)))


@contextlib.contextmanager
def memory_efficient_attention(model: nn.Module, max_bytes: int | None = None) -> Iterator[nn.Module]:
    """Evaluate every PAM of `model` in query blocks for the block (exact: see `PositionAttention`), each block's
    map about `max_bytes` (default `QUERY_CHUNK_BYTES`); the module's parameters and its exported graph are
    unchanged. Used by the export parity check and verify's PyTorch reference, where the map as trained would
    need 8 GiB at 1024x2048."""
    max_bytes = QUERY_CHUNK_BYTES if max_bytes is None else max_bytes
    pams = [m for m in model.modules() if isinstance(m, PositionAttention)]
    before = [m.block_bytes for m in pams]
    for m in pams:
        m.block_bytes = max_bytes
    try:
        yield model
    finally:
        for m, saved in zip(pams, before):
            m.block_bytes = saved


class ChannelAttention(nn.Module):
    """CAM: out = gamma * softmax(rowmax(E) - E) X + x with E = X X^T (C x C), as trained."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # B, C, N
        energy = torch.bmm(flat, flat.transpose(1, 2))  # B, C, C
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = torch.softmax(energy_new, dim=-1)
        out = torch.bmm(attention, flat).reshape(x.shape)
        return self.gamma * out + x


def position_attention(config: ModelConfig, channels: int) -> nn.Module:
    if config.position_attention == "shuffle":
        return ShuffleAttention(channels, config.sa_groups)
    if config.position_attention == "spatial-gate":
        return SpatialGate(channels)
    return PositionAttention(channels)


def channel_attention(config: ModelConfig, channels: int) -> nn.Module:
    if config.channel_attention == "se":
        return SqueezeExcitation(channels, config.se_reduction)
    return ChannelAttention()


# Attribute names per variant, so checkpoint keys say which module they hold (head.pam.*, head.sa.*, ...).
ATTENTION_ATTRIBUTE = {"pam": "pam", "shuffle": "sa", "spatial-gate": "spatial_gate", "cam": "cam", "se": "se"}


class DAHead(nn.Module):
    """Two branches on the backbone feature, fused by a sum, plus the two training-only aux classifiers.

    The branch convs keep MMSegmentation's names (pam_*/cam_*: position and channel branch) for every
    variant; the attention module between them is PAM/CAM or a light replacement chosen by the config.
    """

    def __init__(self, in_channels: int, config: ModelConfig):
        super().__init__()
        num_classes = config.num_classes
        inter = in_channels // 4
        self.position_name = ATTENTION_ATTRIBUTE[config.position_attention]
        self.channel_name = ATTENTION_ATTRIBUTE[config.channel_attention]
        self.pam_in_conv = ConvBNReLU(in_channels, inter)
        setattr(self, self.position_name, position_attention(config, inter))
        self.pam_out_conv = ConvBNReLU(inter, inter)
        self.cam_in_conv = ConvBNReLU(in_channels, inter)
        setattr(self, self.channel_name, channel_attention(config, inter))
        self.cam_out_conv = ConvBNReLU(inter, inter)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(inter, num_classes, 1)
        self.pam_aux_classifier = nn.Conv2d(inter, num_classes, 1)
        self.cam_aux_classifier = nn.Conv2d(inter, num_classes, 1)

    def forward(self, x: torch.Tensor, with_aux: bool = False) -> tuple[torch.Tensor, ...]:
        position, channel = getattr(self, self.position_name), getattr(self, self.channel_name)
        pam_feat = self.pam_out_conv(position(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(channel(self.cam_in_conv(x)))
        fused = self.classifier(self.dropout(pam_feat + cam_feat))
        if not with_aux:
            return (fused,)
        return fused, self.pam_aux_classifier(self.dropout(pam_feat)), self.cam_aux_classifier(self.dropout(cam_feat))


class DANet(nn.Module):
    """Normalized N x 3 x H x W image in, N x classes x H x W logits out (bilinear upsampled)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = DilatedResNet(config)
        self.head = DAHead(self.backbone.out_channels, config)

    def _upsample(self, logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.config.align_corners)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        (fused,) = self.head(self.backbone(image))
        return self._upsample(fused, image.shape[-2:])

    def forward_train(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fused, pam_aux, cam_aux) logits at input size, for training with the auxiliary losses."""
        fused, pam_aux, cam_aux = self.head(self.backbone(image), with_aux=True)
        size = image.shape[-2:]
        return self._upsample(fused, size), self._upsample(pam_aux, size), self._upsample(cam_aux, size)


def build_danet(config: ModelConfig) -> DANet:
    return DANet(config)
