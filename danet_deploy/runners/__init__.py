"""Backends behind one interface: an RGB uint8 image in, float32 logits out.

Each runner does its own preprocessing from the model config (or feeds raw uint8 to an ONNX model with
baked preprocessing), so `verify` and `benchmark` treat every backend the same way.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    name: str
    precision: str  # "fp32", "fp16" or "int8": selects the verify thresholds
    # Fixed (H, W) the backend accepts, or None when any size works.
    input_size: tuple[int, int] | None

    def infer(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB (already at `input_size` when fixed) -> 1 x classes x H x W float32 logits."""
        ...
