"""FP32 ONNX -> FP16 ONNX (FP32 inputs/outputs) for strongly typed TensorRT builds, with overflow protection.

DANet's CAM energy E = X X^T sums products over all N positions and can pass the FP16 maximum (65504);
`rowmax(E) - E` then turns inf - inf into NaN. The protected conversion (default) keeps in FP32:
- by rule, every CAM site (energy MatMul, its ReduceMax/Expand/Sub or Neg, the Softmax and the MatMul after),
  whatever the data says;
- by measurement, every node with an input or output whose max |value| on calibration images exceeds
  `data_max` (default half the FP16 range, so a tensor needs 2x headroom over what calibration saw).
`plain=True` casts everything (AutoCast with no exclusions and no range check; like AutoCast always does, it
still keeps a node FP32 whose weights lie beyond the FP16 range) to show what protection buys.

The conversion itself is ModelOpt AutoCast (`convert_to_mixed_precision`). Magnitudes are measured here,
one batch at a time, and handed over as a custom node rule: AutoCast's own reference run keeps every
intermediate tensor of every calibration batch in memory at once, and the same pass feeds the range report.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from danet_deploy.artifact import OnnxModel, onnxruntime_session
from danet_deploy.bounded_ort.query_blocks import Evaluation, bounded_session
from danet_deploy.errors import BadInputError, CheckFailedError
from danet_deploy.files import atomic_path, sha256_file, temporary_folder
from danet_deploy.graph.editor import GraphEditor
from danet_deploy.graph.sites import find_light_sites, find_sites
from danet_deploy.library_noise import quiet_modelopt
from danet_deploy.options import Fp16Options
from danet_deploy.precision.calibration_cache import key_tool_versions
from danet_deploy.precision.calibration_data import CalibrationInfo, CalibrationSet, calibration_set
from danet_deploy.precision.calibration_images import calibration_folder
from danet_deploy.precision.node_patterns import exact_names
from danet_deploy.precision.probes import Agreement, MagnitudeProbe, compare_models, tensor_types
from danet_deploy.precision.source import finish_model, fp32_source
from danet_deploy.signals import interrupts_held

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
NEAR_FRACTION = 0.5  # above this fraction of the FP16 maximum a tensor is reported as near overflow
DEFAULT_DATA_MAX = FP16_MAX * NEAR_FRACTION
DEFAULT_RANGE_COUNT = 32  # magnitudes need a representative sample, not a distribution


@dataclass
class TensorRange:
    tensor: str
    producer: str  # node name in the FP32 model
    op_type: str
    absmax: float  # max |value| over the calibration images (inf when FP32 itself overflowed)
    tier: str  # "overflow" (> 65504) or "near" (> NEAR_FRACTION x 65504)
    kept_fp32: bool | None  # whether the producer computes in FP32 in the output model; None if not found


@dataclass
class RangeReport:
    """Tensors of the FP32 model whose magnitudes on calibration images threaten FP16."""

    images: int
    fp16_max: float
    near_threshold: float
    tensors: list[TensorRange]

    @property
    def overflow(self) -> list[TensorRange]:
        return [t for t in self.tensors if t.tier == "overflow"]

    @property
    def unprotected(self) -> list[TensorRange]:
        """Tensors beyond the FP16 range whose producer computes in FP16 in the output model."""
        return [t for t in self.overflow if t.kept_fp32 is False]


@dataclass
class Fp16Record:
    onnx_path: str
    onnx_sha256: str
    source_sha256: str
    mode: str  # "protected" or "plain"
    data_max: float | None
    cam_nodes: list[str]  # CAM site nodes kept FP32 by rule (protected mode)
    fp32_nodes: list[str]  # every original node still computing in FP32
    fp16_nodes: int
    range_report: RangeReport | None
    calibration: CalibrationInfo | None
    agreement: Agreement | None  # vs FP32 on the first calibration images
    seconds: float
    warnings: list[str] = field(default_factory=list)


# measurement ----------------------------------------------------------------------------------------------


def tensor_absmax(
    model: onnx.ModelProto, calib: CalibrationSet, on_image: Callable[[int, int], None] | None = None
) -> dict[str, float]:
    """max |value| of every intermediate float tensor over the calibration batches: one image at a time, each
    tensor reduced inside ONNX Runtime (`MagnitudeProbe`), so memory stays that of one inference.
    `on_image(done, total)` after each batch."""
    if on_image is not None:  # the total before the probe model is built
        on_image(0, len(calib))
    probe = MagnitudeProbe(model)
    amax: dict[str, float] = {}
    done = 0
    for batch in calib.batches():
        for name, peak in probe.run({calib.input_name: batch}).items():
            amax[name] = max(amax.get(name, 0.0), peak)
        done += batch.shape[0]
        if on_image is not None:
            on_image(done, len(calib))
    return amax


def cam_protected_nodes(model: onnx.ModelProto) -> list[str]:
    """Node names of every CAM site, plus the Expand that broadcasts the rowmax (it carries energy values), and
    of every GroupNorm site (its variance sums squares over all positions)."""
    ed = GraphEditor(model)
    by_name = {n.name: n for n in model.graph.node}
    names: list[str] = [name for site in find_light_sites(model) if site.kind == "group-norm" for name in site.nodes]
    for site in find_sites(model):
        if site.kind != "cam":
            continue
        names += site.nodes
        for name in site.nodes:
            node = by_name[name]
            if node.op_type == "Sub":
                expand = ed.producer(node.input[0])
                if expand is not None and expand.op_type == "Expand":
                    names.append(expand.name)
    return list(dict.fromkeys(names))


def protected_fp16(model: onnx.ModelProto, source: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Every float node of `model` in FP16 (FP32 I/O) except the CAM chain and GroupNorm (`cam_protected_nodes`
    of `source`, default `model`). Used on a Q/DQ model for strongly typed TensorRT, where the layers outside Q/DQ
    run in their ONNX type: AutoCast keeps Q/DQ in place and casts around the FP32 nodes."""
    return _autocast(model, exact_names(cam_protected_nodes(source or model)), None)


def _range_rule(amax: dict[str, float], data_max: float) -> Any:
    """An AutoCast rule: keep a node FP32 when any of its inputs or outputs measured above `data_max`."""
    with interrupts_held():
        from modelopt.onnx.autocast.nodeclassifier import NodeRuleBase

    class MeasuredRangeRule(NodeRuleBase):
        def _check_inner(self, node: onnx.NodeProto) -> bool:
            return node.op_type != "Constant" and any(amax.get(t, 0.0) > data_max for t in [*node.input, *node.output])

    return MeasuredRangeRule()


def node_precisions(model: onnx.ModelProto) -> dict[str, int]:
    """Element type each node computes in: that of its first float output (Cast nodes excluded)."""
    types = tensor_types(model)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    result = {}
    for node in model.graph.node:
        if node.op_type == "Cast":
            continue
        kinds = [types[o] for o in node.output if types.get(o) in floats]
        if kinds:
            result[node.name] = kinds[0]
    return result


def range_report(
    amax: dict[str, float], source: onnx.ModelProto, converted: onnx.ModelProto, images: int
) -> RangeReport:
    producers = {o: n for n in source.graph.node for o in n.output}
    precision = node_precisions(converted)
    near = FP16_MAX * NEAR_FRACTION
    rows = []
    for tensor, peak in sorted(amax.items(), key=lambda kv: -kv[1]):
        if peak <= near:
            break
        node = producers[tensor]
        kind = precision.get(node.name)
        rows.append(
            TensorRange(
                tensor=tensor,
                producer=node.name,
                op_type=node.op_type,
                absmax=peak,
                tier="overflow" if peak > FP16_MAX else "near",
                kept_fp32=None if kind is None else kind == onnx.TensorProto.FLOAT,
            )
        )
    return RangeReport(images=images, fp16_max=FP16_MAX, near_threshold=near, tensors=rows)


# faithful FP16 on the CPU -------------------------------------------------------------------------------


def fp16_rounding_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which ONNX Runtime's CPU provider really stores every FP16 intermediate in FP16.

    The CPU provider has few FP16 kernels: it runs such nodes in FP32 and drops the Cast pairs between
    consecutive ones, so intermediates are never rounded and overflows (inf) vanish: a plain FP16 DANet
    looks fine on the CPU and gives NaN in TensorRT. An Identity after each FP16 output (Identity has an
    FP16 kernel) forces the round trip. It rounds at every node boundary, slightly more often than
    TensorRT, which fuses e.g. Conv+BN+ReLU into one kernel. Run it with graph optimizations off
    (`onnxruntime_session(..., optimize=False)`), which would otherwise remove the Identities.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    types = tensor_types(copy)
    graph_outputs = {o.name for o in copy.graph.output}
    nodes: list[onnx.NodeProto] = []
    for node in copy.graph.node:
        nodes.append(node)
        if node.op_type in ("Cast", "Constant"):
            continue
        for i, name in enumerate(node.output):
            if name and name not in graph_outputs and types.get(name) == onnx.TensorProto.FLOAT16:
                node.output[i] = f"{name}__unrounded"
                nodes.append(onnx.helper.make_node("Identity", [node.output[i]], [name], name=f"{node.name}__fp16_{i}"))
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def fp16_check_session(
    model: OnnxModel | onnx.ModelProto | str | os.PathLike[str], bounded: bool = True
) -> tuple[Any, Evaluation | None]:
    """An ONNX Runtime CPU session that computes an FP16 model with FP16 rounding (see `fp16_rounding_model`), and
    how it evaluates the model: attention too large to hold as written runs in query blocks (`bounded_ort.query_blocks`;
    the rounding Identities move into the blocks with the attention ops). `bounded` False: as written."""
    if isinstance(model, OnnxModel):
        model = model.proto
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if not bounded:
        return onnxruntime_session(fp16_rounding_model(model), optimize=False), None
    return bounded_session(fp16_rounding_model(model), optimize=False, owned=True)


def fp16_session(model: OnnxModel | onnx.ModelProto | str | os.PathLike[str], bounded: bool = True) -> Any:
    """The session of `fp16_check_session` alone."""
    return fp16_check_session(model, bounded)[0]


# conversion -----------------------------------------------------------------------------------------------


def _autocast(model: onnx.ModelProto, patterns: list[str], rule: Any) -> onnx.ModelProto:
    """ModelOpt AutoCast with FP32 I/O; `data_max=inf` skips its own reference run (ranges come from `rule`)."""
    with interrupts_held():
        from modelopt.onnx.autocast import convert_to_mixed_precision

    with temporary_folder("fp16") as tmp:
        src = Path(tmp) / "model.onnx"
        onnx.save(model, str(src))
        with quiet_modelopt():
            return convert_to_mixed_precision(
                onnx_path=str(src),
                low_precision_type="fp16",
                keep_io_types=True,
                nodes_to_exclude=patterns,
                data_max=np.inf,
                custom_rule=rule,
                providers=["cpu"],
            )


def _smoke_test(model: onnx.ModelProto, where: Path) -> int:
    """Without calibration images: run once on a zero (mean-colour) input; returns the NaN/Inf count."""
    inp = model.graph.input[0]
    dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    dtype = np.uint8 if inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8 else np.float32
    try:
        session = fp16_session(model)
        out = session.run([session.get_outputs()[0].name], {inp.name: np.zeros(dims, dtype)})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CheckFailedError(
            f"{where}: ONNX Runtime cannot run the FP16 model ({str(exc).splitlines()[0]})"
        ) from None
    return int(out.size - np.isfinite(out).sum())


def _precision_split(source: onnx.ModelProto, converted: onnx.ModelProto) -> tuple[list[str], int]:
    """Original nodes still computing in FP32 (names) and how many compute in FP16."""
    precision = node_precisions(converted)
    originals = {n.name for n in source.graph.node}
    fp32 = [n for n, t in precision.items() if n in originals and t == onnx.TensorProto.FLOAT]
    fp16 = sum(n in originals and t == onnx.TensorProto.FLOAT16 for n, t in precision.items())
    return fp32, fp16


def _notes(report: RangeReport | None, nonfinite: int) -> list[str]:
    notes = []
    if report and report.unprotected:
        names = ", ".join(t.tensor for t in report.unprotected[:3])
        notes.append(f"{len(report.unprotected)} tensor(s) exceed the FP16 range and are computed in FP16: {names}")
    if nonfinite:
        notes.append(f"plain FP16 gives {nonfinite} NaN/Inf logits")
    return notes


def convert_fp16(
    model: OnnxModel | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: Fp16Options = Fp16Options(),
    data_max: float = DEFAULT_DATA_MAX,
    check_images: int = 4,
    on_image: Callable[[int, int], None] | None = None,
) -> tuple[Path, Fp16Record]:
    """Write an FP16 ONNX with FP32 I/O from `model` (the FP32 OnnxModel, or its path). Protected by default
    (see the module doc); `options.plain` casts everything.

    `options.calib`: images to measure magnitudes on (a folder or Cityscapes root, or any iterable of images);
    `options.count` None takes up to 32. Without them only the CAM rule protects and there is no range report.
    `options.exclude`: extra node names or regular expressions (`re.match`) kept FP32. `data_max`: the largest
    magnitude left in FP16 (the range rule's margin below 65504). Logits are compared with FP16 rounding emulated
    (`fp16_session`) on `check_images` images. A protected model that gives NaN/Inf raises CheckFailedError and
    writes nothing; a plain one only warns. `on_image(done, total)` as magnitudes are measured. Every model run is
    bounded in memory (`MagnitudeProbe`, `bounded_ort.query_blocks`).
    """
    options.check()
    with calibration_folder(options.calib, out_path) as calib_path:
        return _convert_fp16(model, out_path, options, calib_path, data_max, check_images, on_image)


def _convert_fp16(
    model: OnnxModel | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: Fp16Options,
    calib_path: Path | None,
    data_max: float,
    check_images: int,
    on_image: Callable[[int, int], None] | None,
) -> tuple[Path, Fp16Record]:
    plain, count, seed, split = options.plain, options.count, options.seed, options.split
    nodes_to_exclude = list(options.exclude)
    started = time.perf_counter()
    if not 0 < data_max <= FP16_MAX:
        raise BadInputError(f"data_max must be in (0, {FP16_MAX:g}], got {data_max}")
    source = fp32_source(model)
    out = Path(out_path)
    calib = None
    if calib_path is not None:
        calib = calibration_set(
            calib_path, source, count, seed, split, min_recommended=None, default_count=DEFAULT_RANGE_COUNT
        )
    amax = tensor_absmax(source.proto, calib, on_image) if calib else None
    cam = [] if plain else cam_protected_nodes(source.proto)
    patterns = [] if plain else exact_names(cam) + list(nodes_to_exclude or [])
    rule = _range_rule(amax, data_max) if amax is not None and not plain else None
    converted = _autocast(source.proto, patterns, rule)

    fp32_nodes, fp16_count = _precision_split(source.proto, converted)
    report = range_report(amax, source.proto, converted, len(calib)) if amax is not None and calib else None
    # Judged with FP16 rounding emulated: ONNX Runtime's CPU provider would otherwise hide overflows.
    agreement = None
    if calib:
        agreement = compare_models(bounded_session(source)[0], fp16_session(converted), calib, check_images)
    nonfinite = agreement.nonfinite if agreement else _smoke_test(converted, out)
    if nonfinite and not plain:
        raise CheckFailedError(f"{out}: protected FP16 model gives {nonfinite} NaN/Inf logits; file not written")
    notes = _notes(report, nonfinite)
    for note in notes:
        log.warning("fp16: %s", note)
    notes = (calib.warnings if calib else []) + notes

    entry: dict[str, Any] = {
        "precision": "fp16",
        "mode": "plain" if plain else "protected",
        "io": "fp32",
        "data_max": None if plain else data_max,
        "cam_nodes": cam,
        "nodes_to_exclude": [] if plain else list(nodes_to_exclude or []),
        "fp32_nodes": fp32_nodes,
        "fp16_nodes": fp16_count,
        "calibration": asdict(calib.info()) if calib else None,
        "range_report": _report_summary(report),
        "agreement_vs_fp32": asdict(agreement) if agreement else None,
        "source_sha256": source.sha256,
        "tool_versions": key_tool_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    finish_model(converted, source, entry)
    with atomic_path(out) as tmp:
        onnx.save(converted, str(tmp))
        onnxruntime_session(tmp)  # the file as written must load
    return out, Fp16Record(
        onnx_path=str(out),
        onnx_sha256=sha256_file(out),
        source_sha256=source.sha256,
        mode="plain" if plain else "protected",
        data_max=None if plain else data_max,
        cam_nodes=cam,
        fp32_nodes=fp32_nodes,
        fp16_nodes=fp16_count,
        range_report=report,
        calibration=calib.info() if calib else None,
        agreement=agreement,
        seconds=round(time.perf_counter() - started, 2),
        warnings=notes,
    )


def _report_summary(report: RangeReport | None) -> dict[str, Any] | None:
    """The range report for the ONNX metadata (finite numbers only: JSON has no inf)."""
    if report is None:
        return None
    rows = [{**asdict(t), "absmax": t.absmax if np.isfinite(t.absmax) else "inf"} for t in report.tensors]
    return {
        "images": report.images,
        "fp16_max": report.fp16_max,
        "near_threshold": report.near_threshold,
        "tensors": rows,
    }
