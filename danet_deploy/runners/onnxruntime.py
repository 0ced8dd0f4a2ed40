"""ONNX Runtime runner (CPU provider) for any exported ONNX: float or uint8 input, FP32/FP16/Q-DQ."""

from __future__ import annotations

import os

import numpy as np

from ..config import ModelConfig
from ..data.preprocess import normalize
from ..errors import BadInputError
from ..export.artifact import OnnxModel, onnxruntime_session


class OnnxRuntimeRunner:
    def __init__(self, path: str | os.PathLike[str], name: str | None = None, threads: int | None = None):
        model = OnnxModel.load(path, external_data=False)
        self.path = model.path
        self.config: ModelConfig = model.config
        self.precision = model.precision.value
        try:
            if self.precision == "fp16":
                # ORT's CPU provider runs most FP16 ops in FP32 and never rounds between them, which hides
                # FP16 overflow; this session stores every FP16 intermediate in FP16, as a GPU would.
                from ..precision.fp16 import fp16_session

                self.session = fp16_session(self.path)
            else:
                self.session = onnxruntime_session(self.path, threads)
        except Exception as exc:  # onnxruntime raises its own exception types for invalid models
            raise BadInputError(
                f"{self.path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:160]})"
            ) from None
        self.name = name or f"onnxruntime:{self.path.name}"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.uint8_input = inp.type == "tensor(uint8)"
        dims = inp.shape[1:3] if self.uint8_input else inp.shape[2:4]
        self.input_size = tuple(dims) if all(isinstance(d, int) for d in dims) else None  # type: ignore[assignment]
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def infer(self, image: np.ndarray) -> np.ndarray:
        feed = image[None] if self.uint8_input else normalize(image, self.config).astype(self.input_dtype)
        logits = self.session.run(["logits"], {self.input_name: feed})[0]
        return logits.astype(np.float32, copy=False)
