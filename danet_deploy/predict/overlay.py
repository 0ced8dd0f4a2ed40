"""Colouring label maps: the palette PNG of class ids, and the image blended with the class colours plus a legend
of the classes present."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from danet_deploy.config import ModelConfig

DEFAULT_ALPHA = 0.5  # weight of the class colour in the overlay (MMSegmentation's `show_result_pyplot` opacity)


def palette_array(config: ModelConfig) -> np.ndarray:
    """classes x 3 uint8: the model's colour per class."""
    return np.asarray(config.palette[: config.num_classes], np.uint8).reshape(-1, 3)


def label_image(labels: np.ndarray, config: ModelConfig) -> Image.Image:
    """An 8-bit palette ("P") image of the class ids with the model's palette: opens as the class ids in any
    label tool (`np.asarray(Image.open(p))`) and shows in the class colours in any viewer."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = palette_array(config).reshape(-1).tolist()
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def blend(image: np.ndarray, labels: np.ndarray, config: ModelConfig, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """H x W x 3 uint8: round((1 - alpha) * image + alpha * palette[label]) per pixel."""
    colours = palette_array(config)[labels]
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def legend_box(image_size: tuple[int, int], count: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) the legend of `count` classes covers in an image of (H, W): the top-left corner."""
    h, w = image_size
    row = _row_height(h)
    return 0, 0, min(w, row * 10), min(h, row * count + 4)


def _row_height(height: int) -> int:
    return max(10, min(24, height // 20))


def draw_legend(overlay: np.ndarray, present: list[int], config: ModelConfig) -> np.ndarray:
    """The overlay with a legend (a colour swatch and the class name per present class) in its top-left corner."""
    if not present:
        return overlay
    img = Image.fromarray(overlay)
    draw = ImageDraw.Draw(img)
    h = overlay.shape[0]
    row = _row_height(h)
    font = ImageFont.load_default(size=max(8, row - 4))
    x0, y0, x1, y1 = legend_box(overlay.shape[:2], len(present))
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(0, 0, 0))
    palette = palette_array(config)
    for i, cls in enumerate(present):
        top = 2 + i * row
        colour = tuple(int(c) for c in palette[cls])
        draw.rectangle((2, top + 1, row - 2, top + row - 2), fill=colour)
        draw.text((row + 2, top), config.class_names[cls], fill=(255, 255, 255), font=font)
    return np.asarray(img)


def overlay_image(
    image: np.ndarray, labels: np.ndarray, config: ModelConfig, alpha: float = DEFAULT_ALPHA, legend: bool = True
) -> np.ndarray:
    """The image blended with the class colours (`blend`), with a legend of the classes present."""
    mixed = blend(image, labels, config, alpha)
    if not legend:
        return mixed
    present = [int(c) for c in np.flatnonzero(np.bincount(labels.reshape(-1), minlength=config.num_classes))]
    return draw_legend(mixed, present, config)
