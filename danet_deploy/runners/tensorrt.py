"""TensorRT runner: checks the engine's sidecar against this system, then runs it through Polygraphy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..data.preprocess import normalize
from ..engine.build import running_system
from ..engine.sidecar import check_compatible, read_sidecar
from ..errors import BadInputError


class TensorRTRunner:
    def __init__(self, path: str | os.PathLike[str], name: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise BadInputError(f"{self.path}: no such engine file")
        sidecar = read_sidecar(self.path)
        if not sidecar.model_config:
            raise BadInputError(f"{self.path}: the sidecar has no model config")
        # Compare versions and GPU before deserializing: a mismatched plan fails inside TensorRT otherwise.
        self.warnings = check_compatible(sidecar, running_system(), self.path)
        from polygraphy.backend.trt import EngineFromPath, TrtRunner

        self.runner = TrtRunner(EngineFromPath(str(self.path)))
        self.runner.activate()
        self.config = ModelConfig.from_dict(sidecar.model_config)
        self.precision = sidecar.precision
        self.name = name or f"tensorrt:{self.path.name}"
        self.uint8_input = sidecar.uint8_input
        self.input_size = sidecar.fixed_input_size

    def infer(self, image: np.ndarray) -> np.ndarray:
        feed = image[None] if self.uint8_input else normalize(image, self.config)
        outputs = self.runner.infer({"image": feed})
        return np.asarray(outputs["logits"], dtype=np.float32)

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None and getattr(runner, "is_active", False):
            runner.deactivate()
