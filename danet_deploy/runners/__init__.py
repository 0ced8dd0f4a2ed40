"""Backends behind one interface (`Runner`): an RGB uint8 image in, float32 logits out.

Each runner prepares its input as the model's input spec says (normalized float NCHW, or raw uint8 NHWC for
an ONNX model with baked preprocessing), so `verify`, `benchmark` and the report treat every backend the
same way. The concrete runners import their backend lazily: `from danet_deploy.runners import
OnnxRuntimeRunner` does not import torch or TensorRT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danet_deploy.runners.base import Runner, activated, cpu_device

if TYPE_CHECKING:
    from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner
    from danet_deploy.runners.pytorch import PyTorchRunner
    from danet_deploy.runners.tensorrt import TensorRTRunner

__all__ = ["OnnxRuntimeRunner", "PyTorchRunner", "Runner", "TensorRTRunner", "activated", "cpu_device"]

_LAZY = {"OnnxRuntimeRunner": "onnxruntime", "PyTorchRunner": "pytorch", "TensorRTRunner": "tensorrt"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
