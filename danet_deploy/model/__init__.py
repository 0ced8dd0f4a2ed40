"""The DANet model family."""

from .danet import ChannelAttention, DAHead, DANet, PositionAttention, build_danet
from .resnet import DilatedResNet

__all__ = ["ChannelAttention", "DAHead", "DANet", "DilatedResNet", "PositionAttention", "build_danet"]
