"""mIoU-guarded INT8: when the INT8 model loses more than the budget, rank layers by sensitivity and keep the worst
in higher precision until the budget holds (either target)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from danet_deploy.artifact import META_PRECISION, OnnxModel, write_metadata
from danet_deploy.errors import CheckFailedError, OptionError
from danet_deploy.files import save_onnx, sha256_file, temporary_folder
from danet_deploy.options import BudgetOptions, Int8Options
from danet_deploy.precision.calibration_data import CalibrationSet, calibration_set
from danet_deploy.precision.calibration_images import calibration_folder
from danet_deploy.precision.int8 import Int8Record, quantize_int8
from danet_deploy.precision.node_patterns import exact_names
from danet_deploy.precision.probes import (
    ActivationProbe,
    first_batches,
)
from danet_deploy.precision.source import fp32_source

log = logging.getLogger(__name__)


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
    sizes: list[int] = []
    k = 1
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
    out_path: str | os.PathLike[str],
    options: Int8Options,
    *,
    evaluate: Callable[[Path], float],
    eval_images: int,
    on_image: Callable[[int, int], None] | None = None,
) -> tuple[Path, BudgetRecord]:
    """INT8 (`options`) whose mIoU stays within `options.budget.max_miou_drop` points of FP32. `on_image(done,
    total)` as each step's calibration processes its images (it starts again at 0 for every step).

    `evaluate` scores one ONNX file: its path -> mIoU in percent on labeled data (the caller builds it, e.g.
    from an ONNX Runtime runner and `verify`; the FP32 mIoU is `evaluate(source path)`). `options.budget.data`
    and `eval_images` describe that data for the record. If full INT8 misses the budget, quantized layers are
    ranked by `layer_sensitivity` on a few calibration images and the worst 1, 2, 4, ... are kept FP32
    (re-quantizing each time) until the budget holds. Raises CheckFailedError (nothing written) when no
    step meets it. The INT8 settings (target, cpu, method, cache) are those of `quantize_int8`.
    """
    options.check()
    if options.budget is None:
        raise OptionError("budget", None, "an mIoU budget is needed (BudgetOptions)")
    with calibration_folder(options.calib, out_path) as calib_folder:
        assert calib_folder is not None  # Int8Options.calib is required
        return _with_budget(
            model, out_path, replace(options, calib=calib_folder), options.budget, evaluate, eval_images, on_image
        )


def _with_budget(
    model: OnnxModel | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: Int8Options,
    budget: BudgetOptions,
    evaluate: Callable[[Path], float],
    eval_images: int,
    on_image: Callable[[int, int], None] | None = None,
) -> tuple[Path, BudgetRecord]:
    calib_path = Path(str(options.calib))
    max_miou_drop, eval_data = budget.max_miou_drop, str(budget.data)
    sensitivity_images, max_steps = budget.sensitivity_images, budget.max_steps
    count, seed, split = options.count, options.seed, options.split
    nodes_to_exclude = list(options.exclude)
    source = fp32_source(model)

    def score(path: Path) -> float:
        miou = evaluate(path)
        return float("nan") if miou is None else float(miou)

    fp32_miou = score(source.path)
    base = list(nodes_to_exclude or [])
    steps: list[BudgetStep] = []
    ranking: list[LayerSensitivity] = []
    with temporary_folder("int8-budget") as tmp:

        def attempt(excluded: list[str]) -> tuple[Path, Int8Record, BudgetStep]:
            path = Path(tmp) / f"step{len(steps)}.onnx"
            patterns = base + exact_names(excluded)
            step_options = replace(options, exclude=tuple(patterns), budget=None)
            path, record = quantize_int8(source, path, step_options, on_image=on_image)
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
        _write_budget_model(
            path,
            out,
            {
                "max_miou_drop": max_miou_drop,
                "fp32_miou": round(fp32_miou, 4),
                "eval_data": eval_data,
                "eval_images": eval_images,
                "steps": [asdict(s) for s in steps],
            },
        )
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
