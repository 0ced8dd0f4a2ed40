"""Precision stage: FP32 ONNX -> INT8 Q/DQ ONNX (calibrated, optionally mIoU-guarded) or FP16 ONNX (overflow-protected).

Each stage takes an ONNX path and returns the output path plus a small record; the output ONNX keeps the
source's danet-deploy metadata and adds a `danet_deploy.precision` entry.
"""

from __future__ import annotations

from .calibration import (
    META_PRECISION,
    Agreement,
    CalibrationCache,
    CalibrationInfo,
    CalibrationSet,
    CalibrationWarning,
    cache_dir,
    calibration_set,
    load_calibration_array,
)
from .fp16 import Fp16Record, RangeReport, TensorRange, convert_fp16, fp16_session
from .int8 import BudgetRecord, BudgetStep, Int8Record, LayerSensitivity, quantize_int8, quantize_with_budget

__all__ = [
    "META_PRECISION",
    "Agreement",
    "BudgetRecord",
    "BudgetStep",
    "CalibrationCache",
    "CalibrationInfo",
    "CalibrationSet",
    "CalibrationWarning",
    "Fp16Record",
    "Int8Record",
    "LayerSensitivity",
    "RangeReport",
    "TensorRange",
    "cache_dir",
    "calibration_set",
    "convert_fp16",
    "fp16_session",
    "load_calibration_array",
    "quantize_int8",
    "quantize_with_budget",
]
