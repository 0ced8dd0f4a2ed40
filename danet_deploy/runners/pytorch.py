"""PyTorch reference runner: FP32 on the CPU, or FP16 on a CUDA GPU where one exists."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..config import ModelConfig
from ..data.preprocess import normalize
from ..errors import EXIT_MISSING_DEPENDENCY, DeployError


class PyTorchRunner:
    def __init__(self, model: torch.nn.Module, config: ModelConfig, name: str = "pytorch", half: bool = False):
        self.config = config
        self.name = name
        self.precision = "fp16" if half else "fp32"
        self.input_size: tuple[int, int] | None = None
        self.device = torch.device("cpu")
        if half:
            if not torch.cuda.is_available():
                raise DeployError("PyTorch FP16 needs a CUDA GPU (none found, or torch is a CPU build)",
                                  EXIT_MISSING_DEPENDENCY)  # fmt: skip
            self.device = torch.device("cuda")
            model = copy.deepcopy(model).half()
        self.model = model.to(self.device).eval()
        self.dtype = torch.float16 if half else torch.float32

    def infer(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(normalize(image, self.config)).to(self.device, self.dtype)
        with torch.inference_mode():
            return self.model(x).float().cpu().numpy()
