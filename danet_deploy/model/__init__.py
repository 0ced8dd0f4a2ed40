"""The DANet model family."""

from .danet import ChannelAttention, DAHead, DANet, PositionAttention, build_danet, memory_efficient_attention
from .resnet import DilatedResNet

__all__ = [
    "ChannelAttention",
    "DAHead",
    "DANet",
    "DilatedResNet",
    "PositionAttention",
    "build_danet",
    "memory_efficient_attention",
]
