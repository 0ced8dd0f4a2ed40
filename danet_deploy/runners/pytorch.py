"""PyTorch reference runner (FP32 on the CPU)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import ModelConfig
from ..data.preprocess import normalize


class PyTorchRunner:
    def __init__(self, model: torch.nn.Module, config: ModelConfig, name: str = "pytorch"):
        self.model = model.eval()
        self.config = config
        self.name = name
        self.precision = "fp32"
        self.input_size: tuple[int, int] | None = None

    def infer(self, image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(normalize(image, self.config))).numpy()
