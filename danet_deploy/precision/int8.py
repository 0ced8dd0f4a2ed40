"""FP32 ONNX -> INT8 Q/DQ ONNX for TensorRT (explicit quantization, ModelOpt: `int8_modelopt`) or for ONNX
Runtime's CPU provider (`int8_ort`): one entry, `quantize_int8`, with the shared sampler, cache and checks against
FP32. The mIoU-guarded mixed INT8/FP32 search is `int8_budget`; Q/DQ checks are `qdq`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import onnx

from danet_deploy.artifact import OnnxModel
from danet_deploy.bounded_ort.query_blocks import bounded_session
from danet_deploy.errors import BadInputError, CheckFailedError
from danet_deploy.files import save_onnx, sha256_file
from danet_deploy.graph.editor import opset_of
from danet_deploy.options import Int8Options
from danet_deploy.precision.calibration_cache import CalibrationCache, cache_key, cache_key_material, key_tool_versions
from danet_deploy.precision.calibration_data import CalibrationInfo, calibration_set
from danet_deploy.precision.calibration_images import calibration_folder
from danet_deploy.precision.int8_modelopt import run_modelopt
from danet_deploy.precision.int8_ort import (
    CpuProfile,
    KernelChoice,
    cpu_profile,
    float_nodes,
    isa_summary,
    kernel_choices,
    run_onnxruntime_quantizer,
)
from danet_deploy.precision.node_patterns import compile_patterns
from danet_deploy.precision.probes import (
    Agreement,
    compare_models,
)
from danet_deploy.precision.qdq import QdqSummary, check_qdq, qdq_summary
from danet_deploy.precision.source import finish_model, fp32_source

log = logging.getLogger(__name__)


TRT86_MAX_OPSET = 17  # JetPack 6.0


class Int8Target(str, Enum):
    """Who runs the INT8 model: TensorRT (symmetric Q/DQ, float outputs) or ONNX Runtime's CPU integer kernels."""

    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, name: str | Int8Target) -> Int8Target:
        """'tensorrt' / 'trt' or 'onnxruntime' / 'ort'."""
        aliases = {"trt": cls.TENSORRT, "ort": cls.ONNXRUNTIME}
        try:
            return aliases.get(str(name)) or cls(name)
        except ValueError:
            raise BadInputError(f"unknown INT8 target {name!r}; choose tensorrt (trt) or onnxruntime (ort)") from None


@dataclass
class Int8Record:
    onnx_path: str
    onnx_sha256: str
    source_sha256: str
    method: str
    percentile: float | None
    calibration: CalibrationInfo
    cache_hit: bool
    cache_key: str
    nodes_to_exclude: list[str]
    qdq: QdqSummary
    agreement: Agreement  # vs FP32 on the first calibration images (seen data: an optimistic figure)
    seconds: float
    warnings: list[str] = field(default_factory=list)
    target: Int8Target = Int8Target.TENSORRT
    cpu_profile: CpuProfile | None = None  # ONNX Runtime target: the instruction-set profile quantized for
    float_nodes: dict[str, list[str]] = field(default_factory=dict)  # ONNX Runtime target: kept float by rule
    kernels: list[KernelChoice] = field(default_factory=list)  # ONNX Runtime target: its kernel per Conv/MatMul

    @property
    def integer_kernels(self) -> list[KernelChoice]:
        return [k for k in self.kernels if k.integer]


def calibration_passes(method: str, target: Int8Target) -> int:
    """How often calibration reads the images: percentile for TensorRT is computed here (2 passes) and handed to
    ModelOpt, which still runs its cheapest pass."""
    return 3 if method == "percentile" and target is Int8Target.TENSORRT else 1


def resolve_patterns(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    """Names of the nodes that `patterns` (node names or regular expressions, `re.match`) select."""
    compiled = compile_patterns(patterns)
    return [n.name for n in model.graph.node if any(c.match(n.name) for c in compiled)]


def quantize_int8(
    model: OnnxModel | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: Int8Options,
    check_images: int = 4,
    on_image: Callable[[int, int], None] | None = None,
) -> tuple[Path, Int8Record]:
    """Calibrate `model` (the FP32 OnnxModel, or its path) on `options.calib` and write an INT8 Q/DQ ONNX to
    `out_path`: TensorRT-ready (target tensorrt, the default) or for ONNX Runtime's CPU integer kernels (target
    onnxruntime, quantized for the instruction-set profile `options.cpu`: None / 'auto' = this CPU).
    `options.budget` is not applied here (see `int8_budget.quantize_with_budget`).

    A cached result (same model bytes, image bytes, settings and tool versions) is reused unless
    `options.recalibrate`. The output is checked (TensorRT: INT8 zero points 0; runs in ONNX Runtime, finite
    logits) on `check_images` images before it is written; nothing is left at `out_path` on failure.
    `on_image(done, total)` is called as calibration images are processed (`total` counts every pass:
    `calibration_passes`). Calibration runs in bounded memory (`bounded_calibrators`).
    `options.unquantized` and `options.every_tensor` (TensorRT target): the type of the layers outside Q/DQ, and
    Q/DQ on every tensor for implicit-INT8 scales (see `Int8Options`).
    """
    options.check()
    with calibration_folder(options.calib, out_path) as calib_path:
        assert calib_path is not None  # Int8Options.calib is required
        return _quantize_int8(model, out_path, options, calib_path, check_images, on_image)


def _quantize_int8(
    model: OnnxModel | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: Int8Options,
    calib_path: Path,
    check_images: int,
    on_image: Callable[[int, int], None] | None,
) -> tuple[Path, Int8Record]:
    method, count, seed, split = options.method, options.count, options.seed, options.split
    percentile, cpu, recalibrate, cache_dir = options.percentile, options.cpu, options.recalibrate, options.cache_dir
    nodes_to_exclude = list(options.exclude)
    unquantized, every_tensor = options.unquantized, options.every_tensor
    started = time.perf_counter()
    target = Int8Target.parse(options.target)
    profile = cpu_profile(cpu) if target is Int8Target.ONNXRUNTIME else None
    source = fp32_source(model)
    patterns = sorted(nodes_to_exclude or [])
    compile_patterns(patterns)  # a bad pattern fails before calibration, for either target
    calib = calibration_set(calib_path, source, count, seed, split)
    settings: dict[str, Any] = {"mode": "int8", "method": method, "nodes_to_exclude": patterns, "high": "fp32"}
    if every_tensor:  # only then in the key: existing cache entries keep their keys
        settings["every_tensor"] = True
    if method == "percentile":
        settings["percentile"] = percentile
    kept: dict[str, list[str]] = {}
    if profile is not None:
        kept = float_nodes(source.proto)
        settings.update(target=target.value, cpu=asdict(profile))
    material = cache_key_material(source, calib, **settings)
    key = cache_key(material)
    cache = CalibrationCache(cache_dir)
    data = None if recalibrate else cache.get(key)
    hit = data is not None
    if data is None:
        total = len(calib) * calibration_passes(method, target)
        done = 0

        def on_batch(images: int) -> None:
            nonlocal done
            done += images
            if on_image is not None:
                on_image(min(done, total), total)

        if on_image is not None:  # the total before the quantizer's own preparation, which takes a while
            on_image(0, total)

        if profile is None:
            data = run_modelopt(source.proto, calib, method, patterns, percentile, on_batch, every_tensor)
        else:
            # ONNX Runtime takes exact node names; ModelOpt (above) takes the patterns themselves.
            excluded = {*resolve_patterns(source.proto, patterns), *(n for names in kept.values() for n in names)}
            data = run_onnxruntime_quantizer(
                source.proto, calib, method, sorted(excluded), percentile, profile, on_batch
            )
        cache.put(key, data, material)
    log.info("int8: calibration cache %s (%s)", "hit" if hit else "miss", key[:12])

    out = Path(out_path)
    quantized = onnx.load_from_string(data)
    if unquantized == "fp16":
        from danet_deploy.precision.fp16 import protected_fp16

        quantized = protected_fp16(quantized, source.proto)
        data = quantized.SerializeToString()
    qdq = check_qdq(quantized, str(out)) if profile is None else qdq_summary(quantized)
    notes = [*calib.warnings, *cache.warnings]  # both were shown as CalibrationWarnings already
    shown = len(notes)
    kernels = kernel_choices(data) if profile is not None else []
    if not qdq.quantized_layers:
        notes.append("no layer was quantized (everything excluded?); the model computes in FP32")
    elif profile is not None and not any(k.integer for k in kernels):
        notes.append("ONNX Runtime runs no Conv/MatMul with an integer kernel: expect FP32 speed or slower")
    opsets = (opset_of(source.proto), opset_of(quantized))
    if profile is None and opsets[0] <= TRT86_MAX_OPSET < opsets[1]:
        # 19 is ModelOpt's minimum for INT8; an opset <= 17 export was most likely meant for TensorRT 8.6.
        notes.append(f"ModelOpt raised the opset from {opsets[0]} to {opsets[1]}; TensorRT 8.6 parses up to 17")
    for note in notes[shown:]:
        log.warning("int8: %s", note)
    agreement = compare_models(bounded_session(source)[0], bounded_session(data)[0], calib, check_images)
    if agreement.nonfinite:
        raise CheckFailedError(f"{out}: INT8 model gives {agreement.nonfinite} NaN/Inf logits on calibration images")
    entry = {
        "precision": "int8",
        "format": "qdq",
        "target": target.value,
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "calibration": {**asdict(calib.info()), "cache_key": key},
        "nodes_to_exclude": patterns,
        "quantized_layers": len(qdq.quantized_layers),
        "unquantized_precision": unquantized,
        "opset": opsets[1],
        "agreement_vs_fp32": asdict(agreement),
        "source_sha256": material["onnx_sha256"],
        "tool_versions": key_tool_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if profile is not None:
        entry["onnxruntime"] = {
            "cpu_profile": asdict(profile),
            "quantized_on": isa_summary(),
            "float_by_rule": kept,
            "integer_kernels": [k.node for k in kernels if k.integer],
        }
    finish_model(quantized, source, entry)
    save_onnx(out, quantized)
    return out, Int8Record(
        onnx_path=str(out),
        onnx_sha256=sha256_file(out),
        source_sha256=material["onnx_sha256"],
        method=method,
        percentile=entry["percentile"],
        calibration=calib.info(),
        cache_hit=hit,
        cache_key=key,
        nodes_to_exclude=patterns,
        qdq=qdq,
        agreement=agreement,
        seconds=round(time.perf_counter() - started, 2),
        warnings=notes,
        target=target,
        cpu_profile=profile,
        float_nodes=kept,
        kernels=kernels,
    )
