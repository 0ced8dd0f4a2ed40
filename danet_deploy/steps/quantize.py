"""Quantize: FP32 ONNX -> FP16 or INT8 ONNX (for TensorRT or ONNX Runtime), optionally mIoU-guarded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danet_deploy.artifact import OnnxModel, Precision
from danet_deploy.config import check_number
from danet_deploy.errors import BadInputError
from danet_deploy.files import (
    PathLike,
    check_output,
)
from danet_deploy.progress import SILENT, Progress


@dataclass(frozen=True)
class QuantizeOptions:
    """Calibration and precision settings shared by `quantize` and `build-engine`."""

    calib: PathLike | None = None  # calibration images (required for INT8; optional range check for FP16)
    plain: bool = False  # FP16: plain cast, no protection
    method: str = "entropy"
    count: int | None = None
    seed: int = 0
    split: str = "train"
    max_miou_drop: float | None = None  # INT8: keep sensitive layers FP32 until the drop on `data` fits
    data: PathLike | None = None
    exclude: tuple[str, ...] = ()
    recalibrate: bool = False
    cache_dir: PathLike | None = None
    target: str = "tensorrt"  # INT8: "tensorrt" / "trt" or "onnxruntime" / "ort"
    cpu: str | None = None  # INT8 for ONNX Runtime: CPU profile (None / "auto": this machine's)
    ignore_unknown_labels: bool = False  # --data: mask values that are not class ids count as ignored
    allow_unlabeled: bool = False  # --data: evaluate the labeled images of a partly labeled set
    force: bool = False  # go on when the memory plan's peak exceeds the available memory
    unquantized: str = "fp32"  # INT8 for TensorRT: type of the layers outside Q/DQ ("fp16" for strongly typed builds)
    every_tensor: bool = False  # INT8 for TensorRT: Q/DQ on every tensor (scales for implicit INT8: DLA, TensorRT 8.6)


@dataclass
class QuantizeResult:
    precision: Precision
    path: Path
    record: Any  # Fp16Record | Int8Record
    budget: Any = None  # BudgetRecord with --max-miou-drop


def quantize(
    model: PathLike | OnnxModel,
    output: PathLike,
    precision: Precision | str,
    options: QuantizeOptions = QuantizeOptions(),
    progress: Progress = SILENT,
) -> QuantizeResult:
    """FP32 ONNX -> FP16 (overflow-protected) or INT8 Q/DQ ONNX, measured against FP32. The one precision step,
    used by `quantize` and by `build-engine` when its plan needs an FP16 or Q/DQ network first."""
    precision = Precision(precision)
    source_path = model.path if isinstance(model, OnnxModel) else Path(model)
    out = check_output(output, [source_path, options.calib, options.data])
    if precision is Precision.FP32:
        raise BadInputError("quantize makes fp16 or int8 models; the export is the fp32 one")
    if options.plain and precision is not Precision.FP16:
        raise BadInputError("--plain goes with --fp16")
    if precision is Precision.INT8 and options.calib is None:
        raise BadInputError("INT8 needs --calib DIR (calibration images); use --fp16 for an FP16 model")
    if options.max_miou_drop is not None and (precision is not Precision.INT8 or options.data is None):
        raise BadInputError("--max-miou-drop is for INT8 and needs --data (labeled images)")
    if options.max_miou_drop is not None:
        check_number("--max-miou-drop", options.max_miou_drop, high=100.0)
    if options.seed < 0:
        raise BadInputError(f"--seed {options.seed}: must be >= 0")
    from danet_deploy.precision.int8 import Int8Target
    from danet_deploy.precision.int8_ort import cpu_profile

    target = Int8Target.parse(options.target)
    if precision is not Precision.INT8 and (target is not Int8Target.TENSORRT or options.cpu is not None):
        raise BadInputError("--target and --cpu choose how INT8 is quantized; FP16 has no target")
    if options.cpu is not None:
        if target is not Int8Target.ONNXRUNTIME:
            raise BadInputError("--cpu applies to the ONNX Runtime target (--target ort)")
        cpu_profile(options.cpu)  # an unknown name fails before the model is read
    from danet_deploy.precision.node_patterns import check_patterns_match, compile_patterns

    compile_patterns(list(options.exclude))
    source = model if isinstance(model, OnnxModel) else OnnxModel.load(model)  # read once, after the checks
    check_patterns_match(source.proto, list(options.exclude), source.path)
    exclude = list(options.exclude) or None
    from danet_deploy.memory_plan import onnx_facts, quantize_plan

    size = source.input_size
    facts = onnx_facts(
        source.proto, source.input_spec.shape(source.input_spec.batch or 1, size), source.config.num_classes
    )
    quantize_plan(
        facts, size, precision.value, target.value, options.method, budget=options.max_miou_drop is not None
    ).show_and_check(progress, options.force)
    if precision is Precision.FP16:
        from danet_deploy.precision import convert_fp16

        what = "FP16: measuring magnitudes (images)" if options.calib else "FP16: converting"
        with progress.task(what, total=0 if options.calib else None) as update:
            _, record = convert_fp16(
                source,
                out,
                calib_path=options.calib,
                plain=options.plain,
                count=options.count,
                seed=options.seed,
                split=options.split,
                nodes_to_exclude=exclude,
                on_image=_counted(update, "FP16: converting (AutoCast) and checking against FP32"),
            )
        return QuantizeResult(precision, out, record)
    common = dict(
        method=options.method,
        count=options.count,
        seed=options.seed,
        nodes_to_exclude=exclude,
        recalibrate=options.recalibrate,
        cache_dir=options.cache_dir,
        split=options.split,
        target=target,
        cpu=options.cpu,
    )
    if options.max_miou_drop is None:
        from danet_deploy.precision import quantize_int8

        who = "for ONNX Runtime" if target is Int8Target.ONNXRUNTIME else "Q/DQ for TensorRT (ModelOpt)"
        with progress.task(f"INT8 {who}: calibrating ({options.method}, images)", total=0) as update:
            on_image = _counted(update, f"INT8 {who}: placing Q/DQ and checking against FP32")
            _, record = quantize_int8(
                source,
                options.calib,
                out,
                on_image=on_image,
                unquantized=options.unquantized,
                every_tensor=options.every_tensor,
                **common,
            )
        return QuantizeResult(precision, out, record)
    from danet_deploy.precision import quantize_with_budget

    evaluate, images = miou_evaluator(
        options.data, source.config, "val", options.ignore_unknown_labels, options.allow_unlabeled, progress
    )
    if Path(options.data).resolve() == Path(options.calib).resolve() and options.split == "val":
        progress.note("warning: calibrating and evaluating on the same images gives an optimistic mIoU")
    with progress.task("INT8 within an mIoU budget: calibrating, measuring, keeping sensitive layers FP32"):
        _, budget = quantize_with_budget(
            source,
            options.calib,
            out,
            evaluate=evaluate,
            eval_data=str(options.data),
            eval_images=images,
            max_miou_drop=options.max_miou_drop,
            **common,
        )
    return QuantizeResult(precision, out, budget.int8, budget)


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
