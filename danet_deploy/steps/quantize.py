"""Quantize: FP32 ONNX -> FP16 or INT8 ONNX (for TensorRT or ONNX Runtime), optionally mIoU-guarded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danet_deploy.artifact import OnnxModel, Precision
from danet_deploy.errors import BadInputError
from danet_deploy.files import (
    PathLike,
    check_output,
)
from danet_deploy.options import Int8Options, PrecisionOptions
from danet_deploy.progress import SILENT, Progress

if TYPE_CHECKING:
    from danet_deploy.precision.fp16 import Fp16Record
    from danet_deploy.precision.int8 import Int8Record
    from danet_deploy.precision.int8_budget import BudgetRecord


@dataclass
class QuantizeResult:
    """What `quantize` wrote: the model's path and precision, the stage's record and, with an mIoU budget, the
    budget search's steps."""

    precision: Precision
    path: Path
    record: Fp16Record | Int8Record
    budget: BudgetRecord | None = None


def quantize(
    model: PathLike | OnnxModel,
    output: PathLike,
    options: PrecisionOptions,
    progress: Progress = SILENT,
) -> QuantizeResult:
    """FP32 ONNX -> FP16 (`Fp16Options`: overflow-protected) or INT8 (`Int8Options`: Q/DQ for TensorRT or ONNX
    Runtime's integer kernels, optionally within an mIoU budget), measured against FP32. The one precision step,
    used by `quantize` and by `build-engine` when its plan needs an FP16 or Q/DQ network first.

    Options are checked and the output's place validated before the model is read; a memory plan is shown and
    one that does not fit stops here (BadInputError) unless `options.force`.
    """
    options.check()
    int8 = options if isinstance(options, Int8Options) else None
    budget = int8.budget if int8 is not None else None
    precision = Precision.INT8 if int8 is not None else Precision.FP16
    source_path = model.path if isinstance(model, OnnxModel) else Path(model)
    calib = options.calib if isinstance(options.calib, (str, os.PathLike)) else None  # an iterable is no file
    out = check_output(output, [source_path, calib, budget.data if budget else None])
    from danet_deploy.precision.int8 import Int8Target
    from danet_deploy.precision.int8_ort import cpu_profile

    target = Int8Target.parse(int8.target) if int8 is not None else Int8Target.TENSORRT
    if int8 is not None and int8.cpu is not None:
        cpu_profile(int8.cpu)
    from danet_deploy.precision.node_patterns import check_patterns_match, compile_patterns

    compile_patterns(list(options.exclude))
    source = model if isinstance(model, OnnxModel) else OnnxModel.load(model)  # read once, after the checks
    check_patterns_match(source.proto, list(options.exclude), source.path)
    from danet_deploy.memory_plan import onnx_facts, quantize_plan

    size = source.input_size
    facts = onnx_facts(
        source.proto, source.input_spec.shape(source.input_spec.batch or 1, size), source.config.num_classes
    )
    method = int8.method if int8 is not None else "max"
    plan = quantize_plan(facts, size, precision.value, target.value, method, budget=budget is not None)
    plan.show_and_check(progress, options.force)
    if not isinstance(options, Int8Options):
        from danet_deploy.precision import convert_fp16

        what = "FP16: measuring magnitudes (images)" if options.calib is not None else "FP16: converting"
        with progress.task(what, total=0 if options.calib is not None else None) as update:
            on_image = _counted(update, "FP16: converting (AutoCast) and checking against FP32")
            _, record = convert_fp16(source, out, options, on_image=on_image)
        return QuantizeResult(precision, out, record)
    if budget is None:
        from danet_deploy.precision import quantize_int8

        who = "for ONNX Runtime" if target is Int8Target.ONNXRUNTIME else "Q/DQ for TensorRT (ModelOpt)"
        with progress.task(f"INT8 {who}: calibrating ({options.method}, images)", total=0) as update:
            on_image = _counted(update, f"INT8 {who}: placing Q/DQ and checking against FP32")
            _, int8_record = quantize_int8(source, out, options, on_image=on_image)
        return QuantizeResult(precision, out, int8_record)
    from danet_deploy.precision import quantize_with_budget

    evaluate, images = miou_evaluator(
        budget.data, source.config, budget.split, budget.ignore_unknown_labels, budget.allow_unlabeled, progress
    )
    if calib is not None and Path(budget.data).resolve() == Path(calib).resolve() and options.split == budget.split:
        progress.note("warning: calibrating and evaluating on the same images gives an optimistic mIoU")
    what = "INT8 within an mIoU budget: calibrating (images), measuring, keeping sensitive layers FP32"
    with progress.task(what, total=0) as update:
        _, budget_record = quantize_with_budget(
            source, out, options, evaluate=evaluate, eval_images=images, on_image=_counted(update, what)
        )
    return QuantizeResult(precision, out, budget_record.int8, budget_record)


def _counted(update: Any, after: str) -> Any:
    """An `on_image(done, total)` callback that advances a progress task and names the step that follows."""
    seen = [0]

    def on_image(done: int, total: int) -> None:
        update(done - seen[0], total=total, description=after if done >= total else None)
        seen[0] = done

    return on_image


def checked_dataset(
    dataset: Any,
    config: Any,
    ignore_unknown_labels: bool = False,
    allow_unlabeled: bool = False,
    progress: Progress = SILENT,
) -> Any:
    """`dataset` with every image decoded and every mask checked against the model config's classes, before any
    inference (see `Dataset.checked`)."""
    from danet_deploy.data.datasets import LabelRules

    rules = LabelRules(config.num_classes, config.ignore_index, ignore_unknown_labels)
    with progress.task(f"checking {len(dataset)} images and their labels", total=len(dataset)) as advance:
        return dataset.checked(rules, allow_unlabeled, on_file=advance)


def miou_evaluator(
    data: PathLike,
    config: Any,
    split: str = "val",
    ignore_unknown_labels: bool = False,
    allow_unlabeled: bool = False,
    progress: Progress = SILENT,
) -> tuple[Any, int]:
    """(ONNX path -> mIoU in percent on the labeled `data`, number of images): scored like `verify`."""
    from danet_deploy.data.datasets import open_dataset
    from danet_deploy.evaluate.verify import verify as run_verify
    from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner

    dataset = checked_dataset(open_dataset(data, split), config, ignore_unknown_labels, allow_unlabeled, progress)
    if not dataset.labeled:
        raise BadInputError(f"{data}: the mIoU budget needs labeled images (no label files found)")
    for note in dataset.label_check.notes():
        progress.note(f"note: {note}")

    def evaluate(path: Path) -> float:
        runner = OnnxRuntimeRunner(path, bounded=True)
        miou = (
            run_verify(
                dataset,
                [runner],
                runner.config,
                ignore_unknown_labels=ignore_unknown_labels,
                allow_unlabeled=allow_unlabeled,
            )
            .backends[0]
            .miou
        )
        return float("nan") if miou is None else float(miou)

    return evaluate, len(dataset)
