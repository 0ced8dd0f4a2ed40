"""Evaluation protocols of the DANet community, applied the same way to every backend.

- whole image (default);
- sliding window (`crop`, `stride`): windows on a grid covering the image, images smaller than the crop padded
  with black (the normalized value of black, as the official code pads), overlapping logits averaged;
- horizontal flip: logits of the flipped image flipped back and averaged;
- multi-scale: the image resized by each scale, logits resized back to the image size and averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from danet_deploy.errors import OptionError

MAX_SCALE = 4.0
Infer = Callable[[np.ndarray], np.ndarray]  # H x W x 3 uint8 -> 1 x C x H x W logits


@dataclass(frozen=True)
class EvalProtocol:
    """How each image is evaluated, the same for every backend.

    Attributes:
        crop: sliding-window size; None: the whole image at once.
        stride: sliding-window step (with `crop`).
        flip: average with the horizontally flipped image.
        scales: image scales whose logits are averaged (multi-scale).
    """

    crop: int | None = None
    stride: int | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if (self.crop is None) != (self.stride is None):
            missing = "stride" if self.stride is None else "crop"
            raise OptionError(missing, "", "a sliding window needs both a crop size and a stride")
        if self.crop is not None and self.stride is not None and not 0 < self.stride <= self.crop:
            raise OptionError("stride", str(self.stride), f"the sliding-window stride must be in 1..crop ({self.crop})")
        # DANet's multi-scale protocols use 0.5-2.0; beyond 4 an image's attention map grows by the 4th power.
        if not self.scales or not all(math.isfinite(s) and 0 < s <= MAX_SCALE for s in self.scales):
            shown = ",".join(f"{s:g}" for s in self.scales)
            raise OptionError("scales", shown, f"each scale must be a number in (0, {MAX_SCALE:g}]")

    @property
    def name(self) -> str:
        parts = [f"slide {self.crop}/{self.stride}" if self.crop else "whole"]
        if self.flip:
            parts.append("flip")
        if self.scales != (1.0,):
            parts.append("scales " + ",".join(f"{s:g}" for s in self.scales))
        return " + ".join(parts)

    def largest_run(self, image: tuple[int, int] | None) -> tuple[int, int] | None:
        """The largest (H, W) a model runs at under this protocol for images up to `image` (a window's size when
        sliding, else the image at its largest scale)."""
        if self.crop is not None:
            return self.crop, self.crop
        if image is None:
            return None
        scale = max(self.scales)
        return max(8, round(image[0] * scale)), max(8, round(image[1] * scale))

    @property
    def is_plain(self) -> bool:
        return self.crop is None and not self.flip and self.scales == (1.0,)


def resize_logits(logits: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    if logits.shape[-2:] == size:
        return logits
    t = F.interpolate(torch.from_numpy(logits), size=size, mode="bilinear", align_corners=align_corners)
    return t.numpy()


def sliding_window(
    infer: Infer, image: np.ndarray, crop: int | tuple[int, int], stride: int | tuple[int, int]
) -> np.ndarray:
    """Logits at the image's size from windows of `crop` (a side, or (H, W) for a model of fixed non-square size)
    every `stride` pixels; images smaller than a window padded with black, overlapping logits averaged."""
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    h, w = image.shape[:2]
    ph, pw = max(h, ch), max(w, cw)
    padded = np.zeros((ph, pw, 3), np.uint8)  # black: normalizes to the official padding value
    padded[:h, :w] = image
    rows = math.ceil(max(ph - ch, 0) / sh) + 1
    cols = math.ceil(max(pw - cw, 0) / sw) + 1
    total: np.ndarray | None = None
    count = np.zeros((1, 1, ph, pw), np.float32)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * sh, ph - ch), min(c * sw, pw - cw)
            logits = infer(np.ascontiguousarray(padded[y0 : y0 + ch, x0 : x0 + cw]))
            if total is None:
                total = np.zeros((1, logits.shape[1], ph, pw), np.float32)
            total[:, :, y0 : y0 + ch, x0 : x0 + cw] += logits
            count[:, :, y0 : y0 + ch, x0 : x0 + cw] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]


def predict(infer: Infer, image: np.ndarray, protocol: EvalProtocol, align_corners: bool) -> np.ndarray:
    """Logits at the image's size under the protocol."""
    h, w = image.shape[:2]

    def once(img: np.ndarray) -> np.ndarray:
        if protocol.crop is not None and protocol.stride is not None:
            return sliding_window(infer, img, protocol.crop, protocol.stride)
        return infer(img)

    total: np.ndarray | None = None
    for scale in protocol.scales:
        size = (max(8, round(h * scale)), max(8, round(w * scale)))
        scaled = (
            image
            if size == (h, w)
            else np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))
        )
        logits = once(scaled)
        if protocol.flip:
            logits = logits + once(np.ascontiguousarray(scaled[:, ::-1]))[..., ::-1]
        logits = resize_logits(np.ascontiguousarray(logits), (h, w), align_corners)
        total = logits if total is None else total + logits
    assert total is not None
    return total / (len(protocol.scales) * (2 if protocol.flip else 1))
