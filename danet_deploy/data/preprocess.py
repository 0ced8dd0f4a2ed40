"""Preprocessing from the model config: RGB uint8 -> normalized float32 N x 3 x H x W."""

from __future__ import annotations

import numpy as np
from PIL import Image

from danet_deploy.config import ModelConfig


def normalize(image: np.ndarray, config: ModelConfig) -> np.ndarray:
    """H x W x 3 uint8 RGB -> 1 x 3 x H x W float32, (x / 255 - mean) / std."""
    x = image.astype(np.float32) / 255.0
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an H x W x 3 uint8 image to (H, W); a no-op when the size already matches."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
