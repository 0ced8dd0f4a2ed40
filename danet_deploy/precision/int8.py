"""FP32 ONNX -> INT8 Q/DQ ONNX for TensorRT (explicit quantization) or for ONNX Runtime's CPU provider, plus an
mIoU-guarded mixed INT8/FP32 mode for either.

Both targets share the calibration sampler, the content-keyed cache, the checks against FP32 and the budget
search; they differ in who places the Q/DQ nodes. For ONNX Runtime it is its own quantizer (`int8_ort.py`:
integer kernels on the CPU). For TensorRT (the default) quantization is NVIDIA ModelOpt's
(`modelopt.onnx.quantization.quantize`): it calibrates with ONNX Runtime on
the CPU and places Q/DQ where TensorRT fuses them. Settings TensorRT needs: symmetric INT8 (zero point 0)
for activations and weights, per-channel weight scales, FP32 model inputs/outputs. Layers left unquantized
stay FP32 (`high_precision_dtype="fp32"`): ModelOpt's FP16 option is a plain cast with no range check, and
DANet's CAM energy overflows FP16 (see `fp16.py` for the protected FP16 conversion).

Calibration methods: `entropy` (TensorRT's classic choice) and `max` are ModelOpt's own. ModelOpt has no
`percentile`; it is computed here (symmetric percentile of |x| per tensor, 2048-bin histograms, as ONNX
Runtime's percentile calibrator does) and handed to ModelOpt as a TensorRT calibration cache, so Q/DQ
placement still follows ModelOpt's TensorRT rules. That costs two extra passes over the images.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import BadInputError, CheckFailedError
from ..export.artifact import META_PRECISION, OnnxModel, write_metadata
from ..files import save_onnx, sha256_file
from ..graph.bounded import QDQ_OPS, bounded_model, bounded_session
from ..graph.editor import opset_of
from ..graph.segments import SegmentedRun
from ..quiet import interrupts_held, quiet_modelopt
from . import bounded_calibration
from .bounded_calibration import bounded_calibrators
from .calibration_cache import CalibrationCache, cache_key, cache_key_material, key_tool_versions
from .calibration_data import CalibrationInfo, CalibrationReader, CalibrationSet, calibration_set
from .int8_ort import (
    CpuProfile,
    KernelChoice,
    cpu_profile,
    float_nodes,
    isa_summary,
    kernel_choices,
    onnxruntime_quantization_restored,
    run_onnxruntime_quantizer,
)
from .probes import ActivationProbe, Agreement, MagnitudeProbe, activation_tensors, compare_models, first_batches
from .stage import compile_patterns, exact_names, finish_model, fp32_source

log = logging.getLogger(__name__)

METHODS = ("entropy", "max", "percentile")
DEFAULT_PERCENTILE = 99.99
PERCENTILE_BINS = 2048
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
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
class QdqSummary:
    """What the Q/DQ model holds; `check_qdq` fails on anything TensorRT would reject."""

    quantize_nodes: int
    dequantize_nodes: int
    per_channel_weights: int  # weights with one scale per output channel
    per_tensor_weights: int
    quantized_layers: list[str]  # Conv/MatMul/Gemm nodes fed by a DequantizeLinear


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


# Q/DQ checks ----------------------------------------------------------------------------------------------


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _constant(name: str, inits: dict[str, np.ndarray], constants: dict[str, np.ndarray]) -> np.ndarray | None:
    return inits[name] if name in inits else constants.get(name)


def _op(node: onnx.NodeProto | None) -> str:
    return node.op_type if node is not None else ""


def qdq_summary(
    model: onnx.ModelProto, inits: dict[str, np.ndarray] | None = None, constants: dict[str, np.ndarray] | None = None
) -> QdqSummary:
    """Count Q/DQ nodes and per-channel weight scales; list the Conv/MatMul/Gemm nodes fed by a DequantizeLinear."""
    inits = _initializers(model) if inits is None else inits
    constants = _constants(model) if constants is None else constants
    producers = {o: n for n in model.graph.node for o in n.output}
    per_channel = per_tensor = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = producers.get(node.input[0])
        weight = node.input[0] in inits or (
            source is not None and source.op_type == "QuantizeLinear" and source.input[0] in inits
        )
        if weight:
            scale = _constant(node.input[1], inits, constants)
            if scale is not None and scale.size > 1:
                per_channel += 1
            else:
                per_tensor += 1
    layers = [
        n.name
        for n in model.graph.node
        if n.op_type in QUANTIZED_OPS and any(_op(producers.get(i)) == "DequantizeLinear" for i in n.input)
    ]
    return QdqSummary(
        quantize_nodes=sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        dequantize_nodes=sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
        per_channel_weights=per_channel,
        per_tensor_weights=per_tensor,
        quantized_layers=layers,
    )


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        n.output[0]: numpy_helper.to_array(a.t)
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }


def check_qdq(model: onnx.ModelProto, where: str) -> QdqSummary:
    """Every Q/DQ is INT8 with zero point 0 (TensorRT rejects others); then the summary."""
    inits, constants = _initializers(model), _constants(model)
    bad: list[str] = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        zero = _constant(node.input[2], inits, constants) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            # An absent zero point defaults to uint8 0: TensorRT needs INT8.
            bad.append(f"{node.name} has no INT8 zero point")
        elif zero.dtype != np.int8 or np.any(zero != 0):
            bad.append(f"{node.name} zero point {zero.dtype} {zero.ravel()[:3].tolist()}")
    if bad:
        raise CheckFailedError(f"{where}: Q/DQ not TensorRT-ready: {'; '.join(bad[:3])} ({len(bad)} in all)")
    return qdq_summary(model, inits, constants)


# percentile ranges ----------------------------------------------------------------------------------------


def percentile_amax(
    model: onnx.ModelProto, calib: CalibrationSet, percentile: float, on_batch: Callable[[int], None] | None = None
) -> dict[str, float]:
    """Symmetric percentile of |x| per activation tensor: pass 1 finds max |x| (reduced in-graph, `MagnitudeProbe`),
    pass 2 fills 2048-bin histograms segment by segment (`graph.segments`), so memory stays bounded."""
    tensors = [calib.input_name, *activation_tensors(model)]
    probe = MagnitudeProbe(model, tensors[1:])
    amax: dict[str, float] = {}
    for batch in calib.batches():
        peaks = {calib.input_name: float(np.abs(batch.astype(np.float32)).max(initial=0.0)),
                 **probe.run({calib.input_name: batch})}  # fmt: skip
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


# quantization ---------------------------------------------------------------------------------------------


def calibration_passes(method: str, target: Int8Target) -> int:
    """How often calibration reads the images: percentile for TensorRT is computed here (2 passes) and handed to
    ModelOpt, which still runs its cheapest pass."""
    return 3 if method == "percentile" and target is Int8Target.TENSORRT else 1


def _run_modelopt(
    model: onnx.ModelProto, calib: CalibrationSet, method: str, patterns: list[str], percentile: float,
    on_batch: Callable[[int], None] | None = None,
) -> bytes:  # fmt: skip
    """Quantize in a private temp folder (ModelOpt writes intermediate files beside its input). Every model run
    ModelOpt makes (attention shapes, calibration) is bounded in memory (`bounded_calibrators`); a static model's
    MatMul shapes come from shape inference instead of a run."""
    with interrupts_held():
        from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory(prefix="danet-int8-") as tmp:
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
                output_path=str(out),
                log_level="ERROR",
            )
        if not out.is_file():
            raise CheckFailedError(f"ModelOpt wrote no quantized model for {calib.root}")
        return out.read_bytes()


def resolve_patterns(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    """Names of the nodes that `patterns` (node names or regular expressions, `re.match`) select."""
    compiled = compile_patterns(patterns)
    return [n.name for n in model.graph.node if any(c.match(n.name) for c in compiled)]


def quantize_int8(
    model: OnnxModel | str | os.PathLike[str],
    calib_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    method: str = "entropy",
    count: int | None = None,
    seed: int = 0,
    nodes_to_exclude: list[str] | None = None,
    recalibrate: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    percentile: float = DEFAULT_PERCENTILE,
    check_images: int = 4,
    target: Int8Target | str = Int8Target.TENSORRT,
    cpu: str | None = None,
    on_image: Callable[[int, int], None] | None = None,
) -> tuple[Path, Int8Record]:
    """Calibrate `model` (the FP32 OnnxModel, or its path) on images from `calib_path` and write an INT8 Q/DQ
    ONNX to `out_path`: TensorRT-ready (`target` tensorrt, the default) or for ONNX Runtime's CPU integer
    kernels (`target` onnxruntime, quantized for the instruction-set profile `cpu`: None / 'auto' = this CPU).

    `nodes_to_exclude`: node names or regular expressions (`re.match`) kept FP32. `count` None takes up to
    500 images. A cached result (same model bytes, image bytes, settings and tool versions) is reused unless
    `recalibrate`. The output is checked (TensorRT: INT8 zero points 0; runs in ONNX Runtime, finite logits)
    before it is written; nothing is left at `out_path` on failure. `on_image(done, total)` is called as
    calibration images are processed (`total` counts every pass: `calibration_passes`). Calibration runs in
    bounded memory (`bounded_calibrators`).
    """
    started = time.perf_counter()
    target = Int8Target.parse(target)
    if method not in METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise BadInputError(f"percentile must be in (50, 100], got {percentile}")
    if cpu is not None and target is not Int8Target.ONNXRUNTIME:
        raise BadInputError("--cpu applies to the ONNX Runtime target (--target ort)")
    profile = cpu_profile(cpu) if target is Int8Target.ONNXRUNTIME else None
    source = fp32_source(model)
    patterns = sorted(nodes_to_exclude or [])
    compile_patterns(patterns)  # a bad pattern fails before calibration, for either target
    calib = calibration_set(calib_path, source, count, seed, split)
    settings: dict[str, Any] = {"mode": "int8", "method": method, "nodes_to_exclude": patterns, "high": "fp32"}
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

        if profile is None:
            data = _run_modelopt(source.proto, calib, method, patterns, percentile, on_batch)
        else:
            # ONNX Runtime takes exact node names; ModelOpt (above) takes the patterns themselves.
            excluded = {*resolve_patterns(source.proto, patterns), *(n for names in kept.values() for n in names)}
            data = run_onnxruntime_quantizer(source.proto, calib, method, sorted(excluded), percentile, profile,
                                             on_batch)  # fmt: skip
        cache.put(key, data, material)
    log.info("int8: calibration cache %s (%s)", "hit" if hit else "miss", key[:12])

    out = Path(out_path)
    quantized = onnx.load_from_string(data)
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
        "unquantized_precision": "fp32",
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


# accuracy budget ------------------------------------------------------------------------------------------


@dataclass
class LayerSensitivity:
    """Relative L2 error (INT8 vs FP32) of a layer's output and of its activation inputs; score = the growth."""

    node: str
    op_type: str
    input_error: float
    output_error: float

    @property
    def score(self) -> float:
        return self.output_error - self.input_error


@dataclass
class BudgetStep:
    excluded: list[str]  # layer names kept FP32 in this step
    miou: float  # percent
    drop: float  # FP32 mIoU minus this, in points
    passed: bool
    cache_hit: bool


@dataclass
class BudgetRecord:
    int8: Int8Record  # the model written (the first step that met the budget)
    fp32_miou: float
    max_miou_drop: float
    eval_data: str
    eval_images: int
    steps: list[BudgetStep]
    sensitivity: list[LayerSensitivity]  # most sensitive first (empty when the first step passed)


def layer_sensitivity(
    fp32: onnx.ModelProto, int8: onnx.ModelProto, layers: list[str], calib: CalibrationSet, images: int
) -> list[LayerSensitivity]:
    """Rank quantized layers by how much relative error they add (output error minus input error).

    Both models are probed at the original tensor names (Q/DQ is inserted between tensors, so the FP32
    tensors keep their names in the Q/DQ model). ONNX Runtime's quantizer fuses a Relu into the Conv before it
    (the Conv then writes the Relu's tensor), so a tensor missing from the INT8 model is followed through such
    Relu / Clip to the one both models have. Using the growth rather than the output error alone keeps
    late layers from ranking high only because error accumulated upstream.
    """
    nodes = {n.name: n for n in fp32.graph.node}
    inits = {i.name for i in fp32.graph.initializer}
    produced = {o for n in fp32.graph.node for o in n.output}
    in_both = {o for n in int8.graph.node for o in n.output} & produced
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in fp32.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def shared(tensor: str) -> str | None:
        while tensor not in in_both:
            after = users.get(tensor, [])
            if len(after) != 1 or after[0].op_type not in ("Relu", "Clip"):
                return None
            tensor = after[0].output[0]
        return tensor

    io: dict[str, tuple[list[str], str]] = {}
    for name in layers:
        node = nodes.get(name)
        out = shared(node.output[0]) if node is not None else None
        if node is not None and out is not None:
            ins = [shared(i) for i in node.input if i in produced and i not in inits]
            io[name] = ([i for i in ins if i is not None], out)
    tensors = sorted({t for ins, out in io.values() for t in [*ins, out]})
    probes = ActivationProbe(fp32, tensors), ActivationProbe(int8, tensors)
    sq_diff = dict.fromkeys(tensors, 0.0)
    sq_ref = dict.fromkeys(tensors, 0.0)
    for batch in first_batches(calib, images):
        feed = {calib.input_name: batch}
        ref, got = (p.run(feed) for p in probes)
        for t in tensors:
            r = ref[t].astype(np.float64)
            sq_diff[t] += float(np.sum((got[t].astype(np.float64) - r) ** 2))
            sq_ref[t] += float(np.sum(r**2))

    def rel(t: str) -> float:
        return float(np.sqrt(sq_diff[t] / sq_ref[t])) if sq_ref[t] > 0 else float(np.sqrt(sq_diff[t]))

    ranked = [
        LayerSensitivity(name, nodes[name].op_type, max((rel(t) for t in ins), default=0.0), rel(out))
        for name, (ins, out) in io.items()
    ]
    return sorted(ranked, key=lambda s: s.score, reverse=True)


def _exclusion_sizes(total: int, max_steps: int) -> list[int]:
    """1, 2, 4, ... layers, ending with all of them: the budget search grows geometrically."""
    sizes, k = [], 1
    while k < total and len(sizes) < max_steps - 1:
        sizes.append(k)
        k *= 2
    return [*sizes, total] if total else sizes


def _write_budget_model(path: Path, out: Path, budget: dict[str, Any]) -> None:
    """The chosen step's model, its precision metadata extended with the budget search."""
    model = onnx.load(str(path))
    entry = json.loads(next(p.value for p in model.metadata_props if p.key == META_PRECISION))
    write_metadata(model, {META_PRECISION: {**entry, "budget": budget}})
    save_onnx(out, model)


def quantize_with_budget(
    model: OnnxModel | str | os.PathLike[str],
    calib_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    evaluate: Callable[[Path], float],
    eval_data: str,
    eval_images: int,
    max_miou_drop: float = 1.0,
    method: str = "entropy",
    count: int | None = None,
    seed: int = 0,
    sensitivity_images: int = 4,
    max_steps: int = 8,
    nodes_to_exclude: list[str] | None = None,
    recalibrate: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    target: Int8Target | str = Int8Target.TENSORRT,
    cpu: str | None = None,
) -> tuple[Path, BudgetRecord]:
    """INT8 whose mIoU stays within `max_miou_drop` points of FP32.

    `evaluate` scores one ONNX file: its path -> mIoU in percent on labeled data (the caller builds it, e.g.
    from an ONNX Runtime runner and `verify`; the FP32 mIoU is `evaluate(source path)`). `eval_data` and
    `eval_images` describe that data for the record. If full INT8 misses the budget, quantized layers are
    ranked by `layer_sensitivity` on a few calibration images and the worst 1, 2, 4, ... are kept FP32
    (re-quantizing each time) until the budget holds. Raises CheckFailedError (nothing written) when no
    step meets it. `target` / `cpu`: as for `quantize_int8`.
    """
    if max_miou_drop < 0:
        raise BadInputError(f"max mIoU drop must be >= 0 points, got {max_miou_drop}")
    source = fp32_source(model)

    def score(path: Path) -> float:
        miou = evaluate(path)
        return float("nan") if miou is None else float(miou)

    fp32_miou = score(source.path)
    base = list(nodes_to_exclude or [])
    common = dict(method=method, count=count, seed=seed, recalibrate=recalibrate, cache_dir=cache_dir, split=split,
                  target=target, cpu=cpu)  # fmt: skip
    steps: list[BudgetStep] = []
    ranking: list[LayerSensitivity] = []
    with tempfile.TemporaryDirectory(prefix="danet-int8-budget-") as tmp:

        def attempt(excluded: list[str]) -> tuple[Path, Int8Record, BudgetStep]:
            path = Path(tmp) / f"step{len(steps)}.onnx"
            patterns = base + exact_names(excluded)
            path, record = quantize_int8(source, calib_path, path, nodes_to_exclude=patterns, **common)
            miou = score(path)
            drop = fp32_miou - miou
            passed = bool(drop <= max_miou_drop)
            step = BudgetStep(list(excluded), round(miou, 4), round(drop, 4), passed, record.cache_hit)
            log.info("int8 budget: %d layer(s) FP32 -> mIoU %.2f (drop %.2f)", len(excluded), miou, drop)
            steps.append(step)
            return path, record, step

        path, record, step = attempt([])
        if not step.passed:
            calib = calibration_set(calib_path, source, count, seed, split, min_recommended=None)
            ranking = layer_sensitivity(
                source.proto, onnx.load(str(path)), record.qdq.quantized_layers, calib, sensitivity_images
            )
            for k in _exclusion_sizes(len(ranking), max_steps):
                path, record, step = attempt([s.node for s in ranking[:k]])
                if step.passed:
                    break
        if not step.passed:
            best = min(steps, key=lambda s: s.drop)
            raise CheckFailedError(
                f"{out_path}: no INT8 mix met the mIoU budget of {max_miou_drop:g} points (best: drop {best.drop:.2f} "
                f"with {len(best.excluded)} layer(s) FP32, FP32 mIoU {fp32_miou:.2f}); file not written"
            )
        out = Path(out_path)
        _write_budget_model(path, out, {
            "max_miou_drop": max_miou_drop, "fp32_miou": round(fp32_miou, 4), "eval_data": eval_data,
            "eval_images": eval_images, "steps": [asdict(s) for s in steps],
        })  # fmt: skip
    record.onnx_path = str(out)
    record.onnx_sha256 = sha256_file(out)
    return out, BudgetRecord(
        int8=record,
        fp32_miou=round(fp32_miou, 4),
        max_miou_drop=max_miou_drop,
        eval_data=eval_data,
        eval_images=eval_images,
        steps=steps,
        sensitivity=ranking,
    )
