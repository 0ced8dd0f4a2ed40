"""TensorRT's INT8 calibration cache, written from the scales of a Q/DQ ONNX (implicit quantization).

DLA runs INT8 only by implicit quantization (per-tensor dynamic ranges; TensorRT issue 2222), and TensorRT 8.6's
ONNX parser misreads the opset-19 Q/DQ models ModelOpt writes. For both, NVIDIA's route (the Q/DQ translator,
NVIDIA/Deep-Learning-Accelerator-SW tools/qdq-translator) is: take each activation's scale from the Q/DQ model and
hand the FP32 network to TensorRT with a calibration cache holding those scales, INT8 and FP16 flags.

The cache is TensorRT's text format, checked against real sources rather than guessed:
- first line `TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2`: the version number is TensorRT's own
  (NvInferRuntimeBase.h: major*1000 + minor*100 + patch in 8.x, e.g. 8601; major*10000 + minor*100 + patch from
  10.0, e.g. 100300, as in NVIDIA TAO's published caches) and the algorithm must match the calibrator reading it
  (an 8.6 header is refused by 10.x, seen in the wild), so the cache is written for the running TensorRT;
- then one line per tensor, `<tensor name>: <scale>`, the scale a float32 (amax / 127, the Q/DQ scale itself)
  written as the 8 hex digits of its IEEE-754 bits (trtexec `readScalesFromCalibrationCache`: the text after the
  last ':' and a space, parsed base 16 as a 32-bit int and reinterpreted as float).
"""

from __future__ import annotations

import struct

import numpy as np
import onnx
from onnx import numpy_helper

from danet_deploy.errors import BadInputError

ALGORITHM = "EntropyCalibration2"  # what Polygraphy's default calibrator (IInt8EntropyCalibrator2) reads


def tensorrt_version_number(version: tuple[int, ...]) -> int:
    """NV_TENSORRT_VERSION of a release: (8, 6, 1) -> 8601, (10, 3, 0) -> 100300."""
    major, minor, patch = (*version, 0, 0)[:3]
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """Per-tensor scales of the activations a Q/DQ model quantizes, by tensor name (weights are left out: TensorRT
    derives weight scales itself in implicit quantization)."""
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants or len(node.input) < 2:
            continue
        tensor = constants.get(node.input[1])
        if tensor is None:
            continue
        values = numpy_helper.to_array(tensor).astype(np.float32).reshape(-1)
        if values.size == 1 and values[0] > 0:
            scales[node.input[0]] = float(values[0])
    return scales


def calibration_cache_text(scales: dict[str, float], tensorrt_version: tuple[int, ...]) -> str:
    """The cache TensorRT reads for these per-tensor scales."""
    if not scales:
        raise BadInputError("no per-tensor activation scale to write into a TensorRT calibration cache")
    lines = [f"TRT-{tensorrt_version_number(tensorrt_version)}-{ALGORITHM}"]
    lines += [f"{name}: {struct.pack('>f', scale).hex()}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def read_calibration_cache(text: str) -> tuple[str, dict[str, float]]:
    """(header, scales) of a cache, read as trtexec reads it (the name ends at the last ':')."""
    header, *rows = text.splitlines()
    scales = {}
    for row in rows:
        name, sep, value = row.rpartition(":")
        if sep:
            scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()[:8].rjust(8, "0")))[0]
    return header, scales
