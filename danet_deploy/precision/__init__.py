"""Precision stage: FP32 ONNX -> INT8 Q/DQ ONNX (calibrated, for TensorRT or ONNX Runtime's CPU kernels, optionally
mIoU-guarded) or FP16 ONNX (overflow-protected).

Each stage takes the FP32 model (an `OnnxModel` or its path, parsed once) and returns the output path plus a
small record; the output ONNX keeps the source's danet-deploy metadata and adds a `danet_deploy.precision`
entry. Modules: `calibration_data` (image selection and preprocessing), `calibration_cache` (content-keyed
INT8 results), `probes` (intermediate tensors, agreement with FP32), `source` (the FP32 source,
output metadata), `node_patterns` (`--exclude`), `int8` (both targets), `int8_modelopt` (the TensorRT target),
`int8_ort` (the ONNX Runtime target), `int8_budget` (mIoU-guarded search), `qdq` (Q/DQ checks), `fp16`.
"""

from __future__ import annotations

from danet_deploy.artifact import META_PRECISION
from danet_deploy.precision.calibration_cache import CalibrationCache, cache_dir
from danet_deploy.precision.calibration_data import CalibrationInfo, CalibrationSet, CalibrationWarning, calibration_set
from danet_deploy.precision.fp16 import Fp16Record, RangeReport, TensorRange, convert_fp16, fp16_session
from danet_deploy.precision.int8 import Int8Record, Int8Target, quantize_int8
from danet_deploy.precision.int8_budget import BudgetRecord, BudgetStep, LayerSensitivity, quantize_with_budget
from danet_deploy.precision.probes import Agreement

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
    "Int8Target",
    "LayerSensitivity",
    "RangeReport",
    "TensorRange",
    "cache_dir",
    "calibration_set",
    "convert_fp16",
    "fp16_session",
    "quantize_int8",
    "quantize_with_budget",
]
