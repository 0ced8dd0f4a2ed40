"""The DANet model family."""

from danet_deploy.model.danet import (
    ChannelAttention,
    DAHead,
    DANet,
    PositionAttention,
    build_danet,
    memory_efficient_attention,
)
from danet_deploy.model.resnet import DilatedResNet

__all__ = [
    "ChannelAttention",
    "DAHead",
    "DANet",
    "DilatedResNet",
    "PositionAttention",
    "build_danet",
    "memory_efficient_attention",
]
