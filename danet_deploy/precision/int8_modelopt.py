"""INT8 for TensorRT through NVIDIA ModelOpt (`modelopt.onnx.quantization.quantize`), the default target: it
calibrates with ONNX Runtime on the CPU and places Q/DQ where TensorRT fuses them.

Settings TensorRT needs: symmetric INT8 (zero point 0)
for activations and weights, per-channel weight scales, FP32 model inputs/outputs. Layers left unquantized
stay FP32 (`high_precision_dtype="fp32"`): ModelOpt's FP16 option is a plain cast with no range check, and
DANet's CAM energy overflows FP16 (see `fp16.py` for the protected FP16 conversion).

Calibration methods: `entropy` (TensorRT's classic choice) and `max` are ModelOpt's own. ModelOpt has no
`percentile`; it is computed here (symmetric percentile of |x| per tensor, 2048-bin histograms, as ONNX
Runtime's percentile calibrator does) and handed to ModelOpt as a TensorRT calibration cache, so Q/DQ
placement still follows ModelOpt's TensorRT rules. That costs two extra passes over the images.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from danet_deploy.bounded_ort.query_blocks import bounded_model
from danet_deploy.bounded_ort.segments import SegmentedRun
from danet_deploy.errors import CheckFailedError
from danet_deploy.files import temporary_folder
from danet_deploy.library_noise import quiet_modelopt
from danet_deploy.precision import bounded_calibration
from danet_deploy.precision.bounded_calibration import bounded_calibrators
from danet_deploy.precision.calibration_data import CalibrationReader, CalibrationSet
from danet_deploy.precision.int8_ort import (
    onnxruntime_quantization_restored,
)
from danet_deploy.precision.probes import (
    MagnitudeProbe,
    activation_tensors,
)
from danet_deploy.signals import interrupts_held

PERCENTILE_BINS = 2048


def percentile_amax(
    model: onnx.ModelProto, calib: CalibrationSet, percentile: float, on_batch: Callable[[int], None] | None = None
) -> dict[str, float]:
    """Symmetric percentile of |x| per activation tensor: pass 1 finds max |x| (reduced in-graph, `MagnitudeProbe`),
    pass 2 fills 2048-bin histograms segment by segment (`bounded_ort.segments`), so memory stays bounded."""
    tensors = [calib.input_name, *activation_tensors(model)]
    probe = MagnitudeProbe(model, tensors[1:])
    amax: dict[str, float] = {}
    for batch in calib.batches():
        peaks = {
            calib.input_name: float(np.abs(batch.astype(np.float32)).max(initial=0.0)),
            **probe.run({calib.input_name: batch}),
        }
        for name, peak in peaks.items():
            amax[name] = max(amax.get(name, 0.0), peak)
        if on_batch is not None:
            on_batch(batch.shape[0])
    del probe
    hists = {name: np.zeros(PERCENTILE_BINS, np.int64) for name in amax}
    bounded, _, _ = bounded_model(model)
    run = SegmentedRun(bounded, tensors, bounded_calibration.CALIBRATION_SEGMENT_BYTES)
    del bounded
    for batch in calib.batches():
        for values in run.run({calib.input_name: batch}):
            for name, value in values.items():
                if 0 < amax[name] < np.inf:
                    hists[name] += np.histogram(np.abs(value.astype(np.float32)), PERCENTILE_BINS, (0, amax[name]))[0]
            del values
        if on_batch is not None:
            on_batch(batch.shape[0])
    result = {}
    for name, hist in hists.items():
        if not 0 < amax[name] < np.inf or not hist.sum():
            continue
        cdf = np.cumsum(hist) / hist.sum()
        edge = int(np.searchsorted(cdf, percentile / 100.0)) + 1
        result[name] = amax[name] * min(edge, PERCENTILE_BINS) / PERCENTILE_BINS
    return result


def write_trt_cache(amax: dict[str, float], path: Path) -> None:
    """TensorRT calibration cache text (scale = amax / 127 as big-endian float32 hex), ModelOpt's import format."""
    lines = ["TRT-8501-EntropyCalibration2"]
    lines += [f"{name}: {struct.pack('!f', value / 127.0).hex()}" for name, value in amax.items() if value > 0]
    path.write_text("\n".join(lines) + "\n")


def run_modelopt(
    model: onnx.ModelProto,
    calib: CalibrationSet,
    method: str,
    patterns: list[str],
    percentile: float,
    on_batch: Callable[[int], None] | None = None,
    target_dla: bool = False,
) -> bytes:
    """Quantize in a private temp folder (ModelOpt writes intermediate files beside its input). Every model run
    ModelOpt makes (attention shapes, calibration) is bounded in memory (`bounded_calibrators`); a static model's
    MatMul shapes come from shape inference instead of a run. `target_dla`: Q/DQ on every tensor (ModelOpt's DLA
    placement), so that every tensor has a scale for an implicit-INT8 calibration cache."""
    with interrupts_held():
        from modelopt.onnx.quantization import quantize

    with temporary_folder("int8") as tmp:
        src, out = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        onnx.save(model, str(src))
        cache_path = None
        if method == "percentile":
            cache_path = Path(tmp) / "percentile.cache"
            write_trt_cache(percentile_amax(model, calib, percentile, on_batch), cache_path)
        shape = calib.input.shape(calib.batch, calib.size)
        static = all(d.HasField("dim_value") for d in model.graph.input[0].type.tensor_type.shape.dim)
        with quiet_modelopt(), onnxruntime_quantization_restored(), bounded_calibrators(modelopt=True):
            quantize(
                onnx_path=str(src),
                quantize_mode="int8",
                calibration_data_reader=CalibrationReader(calib, on_batch),
                calibration_shapes={calib.input_name: shape} if static else None,
                # With a cache ModelOpt still runs a pass; "max" is its cheapest, and the cache overrides the scales.
                calibration_method="max" if method == "percentile" else method,
                calibration_cache_path=str(cache_path) if cache_path else None,
                calibration_eps=["cpu"],
                nodes_to_exclude=list(patterns),
                high_precision_dtype="fp32",
                target_dla=target_dla,
                output_path=str(out),
                log_level="ERROR",
            )
        if not out.is_file():
            raise CheckFailedError(f"ModelOpt wrote no quantized model for {calib.root}")
        return out.read_bytes()
