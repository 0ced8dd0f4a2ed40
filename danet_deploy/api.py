"""The user-level steps as functions: what each `danet-deploy` command does, callable from Python.

```python
from danet_deploy import api
exported = api.export("danet.pth", "danet.onnx")
api.quantize("danet.onnx", "danet.int8.onnx", "int8", api.QuantizeOptions(calib="calibration/images"))
result = api.verify("cityscapes/", checkpoint="danet.pth", onnx=["danet.onnx", "danet.int8.onnx"])
print(result.report.passed)
```

Each function checks its outputs before the work starts (`files.check_output`: never an input, a writable
folder), runs the stages and returns a typed record; the CLI only parses options, calls one of these and
prints the record. Long steps report through a `Progress` (silent unless the caller passes one).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import check_number
from .errors import EXIT_BAD_INPUT, BadInputError, CheckFailedError, DeployError
from .export.artifact import OnnxModel, Precision
from .export.torch_export import ExportOptions, ExportRecord
from .files import all_or_nothing, check_output, check_outputs, removed_on_failure, scratch_dir, write_json
from .graph.pam import DEFAULT_BLOCK
from .progress import SILENT, Progress

PathLike = str | os.PathLike[str]


# --- export and simplify ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimplifyOptions:
    """The graph passes: `target` picks the PAM and GroupNorm forms unless `attention` / `group_norm` say."""

    target: str | None = None
    attention: str | None = None
    block: int = DEFAULT_BLOCK
    heads: int | None = None
    atol: float = 1e-4
    rtol: float = 1e-4
    group_norm: str | None = None
    fold_shuffle: bool = True
    force: bool = False  # go on when the memory plan's peak exceeds the available memory

    def check(self) -> None:
        """Exit 2 for a value no simplify can use, before any work (also before `export --simplify` exports)."""
        from .graph.group_norm import GROUP_NORM_FORMS
        from .graph.simplify import ATTENTION_FORMS, get_target

        if self.target is not None:
            get_target(self.target)
        for option, value, choices in (("--attention", self.attention, ATTENTION_FORMS),
                                       ("--group-norm", self.group_norm, GROUP_NORM_FORMS)):  # fmt: skip
            if value is not None and value not in choices:
                raise BadInputError(f"{option} {value!r}: choose from {', '.join(choices)}")
        check_number("--atol", self.atol)
        check_number("--rtol", self.rtol)
        if self.block < 1 or (self.heads is not None and self.heads < 1):
            raise BadInputError("--block and --heads must be at least 1")


@dataclass
class SimplifyResult:
    report: Any  # graph.simplify.SimplifyReport
    path: Path
    size_bytes: int
    sha256: str


@dataclass
class ExportResult:
    record: ExportRecord  # the export as written (before simplify, when simplified)
    checkpoint: str
    output: Path
    simplified: SimplifyResult | None = None


def load_checkpoint(checkpoint: PathLike, layout: str | None = None, progress: Progress = SILENT, **overrides: Any):
    """The checkpoint as a model + config (layout detected unless given); says what it found."""
    from .checkpoints import load_checkpoint as load

    with progress.task(f"loading {checkpoint}"):
        loaded = load(checkpoint, layout, **overrides)
    c = loaded.config
    progress.note(
        f"checkpoint {Path(checkpoint).name}: {loaded.layout.value} layout, {c.arch}, stem {c.stem_channels}, "
        f"layer4 dilations {c.layer4_dilations}, {c.num_classes} classes, align_corners={c.align_corners}"
    )
    for note in loaded.notes:
        progress.note(f"  note: {note}")
    return loaded


def export(
    checkpoint: PathLike,
    output: PathLike,
    options: ExportOptions = ExportOptions(),
    *,
    layout: str | None = None,
    overrides: dict[str, Any] | None = None,
    image: PathLike | None = None,
    simplify: SimplifyOptions | None = None,
    force: bool = False,
    option_files: Sequence[PathLike] = (),
    progress: Progress = SILENT,
) -> ExportResult:
    """Checkpoint -> ONNX checked against PyTorch; with `simplify`, the graph passes run onto `output`.
    An export whose estimated memory exceeds what is available is refused first unless `force`.
    `option_files`: files the overrides were read from (class names), never written over."""
    from .data.bundled import sample_image
    from .data.images import read_image
    from .export.torch_export import export_onnx

    out = check_output(output, [checkpoint, image, *option_files])
    options.check()
    if simplify is not None:
        simplify.check()  # a bad pass option fails before the export, not after it
    size = options.input_size
    loaded = load_checkpoint(checkpoint, layout, progress, **{**(overrides or {}), "input_size": size})
    from .memory import export_plan

    state = [*loaded.model.parameters(), *loaded.model.buffers()]
    plan = export_plan(sum(t.numel() * t.element_size() for t in state), options.batch, options.size(loaded.config),
                       loaded.config.position_attention == "pam", loaded.config.num_classes)  # fmt: skip
    _show_plan(plan, force, progress)
    parity_image = read_image(Path(image)) if image else sample_image()
    with contextlib.ExitStack() as stack:
        raw = out
        if simplify is not None:  # export beside, simplify onto `output`: a failed pass leaves nothing there
            raw = stack.enter_context(scratch_dir(out)) / "raw.onnx"
        what = f"exporting {loaded.config.arch} ({options.exporter} exporter, opset {options.opset}), checking parity"
        with progress.task(what):
            record = export_onnx(loaded.model, loaded.config, raw, options, parity_image, loaded.provenance(),
                                 check_session=_check_session)  # fmt: skip
        record.onnx_path = str(out)
        result = ExportResult(record, str(checkpoint), out)
        del loaded  # the PyTorch weights are not needed by the graph passes
        if simplify is not None:
            result.simplified = simplify_model_file(raw, out, simplify, progress)
    return result


def _show_plan(plan: Any, force: bool, progress: Progress) -> None:
    """Print the memory plan (before long work) and stop with exit 2 when it does not fit, unless `force`."""
    for line in plan.lines():
        progress.note(line)
    plan.check(force)


def _check_session(path: Path, input_shape: list[int]) -> tuple[Any, str]:
    """The export parity check's ONNX Runtime session: large attention evaluated in query blocks (exact)."""
    from .graph.bounded import bounded_session

    session, evaluation = bounded_session(path, input_shape)
    return session, evaluation.describe()


def simplify_model_file(
    model: PathLike, output: PathLike, options: SimplifyOptions = SimplifyOptions(), progress: Progress = SILENT
) -> SimplifyResult:
    """The attention graph rewritten for a target; every pass is checked against the graph before it. A memory plan
    is shown first; one that does not fit stops here (exit 2) unless `options.force`."""
    from .graph.pam import value_heads
    from .graph.simplify import choose_attention, get_target, simplify_file
    from .memory import onnx_file_facts, simplify_plan

    out = check_output(output, [model])
    options.check()
    facts, size = onnx_file_facts(model)
    form = options.attention or (choose_attention(get_target(options.target), True)[0] if options.target else "naive")
    heads = (options.heads or value_heads(512)) if form in ("mha", "onnx-attention") else 1
    _show_plan(simplify_plan(facts, size, heads), options.force, progress)

    def on_pass(p: Any) -> None:
        how = "" if p.evaluated == "as written" else f" (evaluated: {p.evaluated})"
        progress.note(f"  pass {p.name}: max abs diff {p.max_abs_diff:.2e}, {p.seconds:.0f} s{how}")

    with progress.task("simplify: checking every pass with ONNX Runtime (model runs)", total=0) as update:

        def on_check(done: int, total: int, what: str) -> None:
            update(1 if done else 0, description=f"simplify: {what}", total=total)

        report, info = simplify_file(
            model, out, target=options.target, attention=options.attention, block=options.block,
            heads=options.heads, atol=options.atol, rtol=options.rtol, group_norm=options.group_norm,
            fold_shuffle=options.fold_shuffle, on_pass=on_pass, on_check=on_check,
        )  # fmt: skip
    return SimplifyResult(report, out, info["size_bytes"], info["onnx_sha256"])


# --- precision -----------------------------------------------------------------------------------------


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
    from .precision.int8 import Int8Target
    from .precision.int8_ort import cpu_profile

    target = Int8Target.parse(options.target)
    if precision is not Precision.INT8 and (target is not Int8Target.TENSORRT or options.cpu is not None):
        raise BadInputError("--target and --cpu choose how INT8 is quantized; FP16 has no target")
    if options.cpu is not None:
        if target is not Int8Target.ONNXRUNTIME:
            raise BadInputError("--cpu applies to the ONNX Runtime target (--target ort)")
        cpu_profile(options.cpu)  # an unknown name fails before the model is read
    from .precision.stage import check_patterns_match, compile_patterns

    compile_patterns(list(options.exclude))
    source = model if isinstance(model, OnnxModel) else OnnxModel.load(model)  # read once, after the checks
    check_patterns_match(source.proto, list(options.exclude), source.path)
    exclude = list(options.exclude) or None
    from .memory import onnx_facts, quantize_plan

    size = source.input_size
    facts = onnx_facts(source.proto, source.input_spec.shape(source.input_spec.batch or 1, size),
                       source.config.num_classes)  # fmt: skip
    _show_plan(quantize_plan(facts, size, precision.value, target.value, options.method,
                             budget=options.max_miou_drop is not None), options.force, progress)  # fmt: skip
    if precision is Precision.FP16:
        from .precision import convert_fp16

        what = "FP16: measuring magnitudes (images)" if options.calib else "FP16: converting"
        with progress.task(what, total=0 if options.calib else None) as update:
            _, record = convert_fp16(source, out, calib_path=options.calib, plain=options.plain, count=options.count,
                                     seed=options.seed, split=options.split, nodes_to_exclude=exclude,
                                     on_image=_counted(update, "FP16: converting (AutoCast) and checking against "
                                                       "FP32"))  # fmt: skip
        return QuantizeResult(precision, out, record)
    common = dict(method=options.method, count=options.count, seed=options.seed, nodes_to_exclude=exclude,
                  recalibrate=options.recalibrate, cache_dir=options.cache_dir, split=options.split, target=target,
                  cpu=options.cpu)  # fmt: skip
    if options.max_miou_drop is None:
        from .precision import quantize_int8

        who = "for ONNX Runtime" if target is Int8Target.ONNXRUNTIME else "Q/DQ for TensorRT (ModelOpt)"
        with progress.task(f"INT8 {who}: calibrating ({options.method}, images)", total=0) as update:
            on_image = _counted(update, f"INT8 {who}: placing Q/DQ and checking against FP32")
            _, record = quantize_int8(source, options.calib, out, on_image=on_image, **common)
        return QuantizeResult(precision, out, record)
    from .precision import quantize_with_budget

    evaluate, images = miou_evaluator(options.data, source.config, "val", options.ignore_unknown_labels,
                                      options.allow_unlabeled, progress)  # fmt: skip
    if Path(options.data).resolve() == Path(options.calib).resolve() and options.split == "val":
        progress.note("warning: calibrating and evaluating on the same images gives an optimistic mIoU")
    with progress.task("INT8 within an mIoU budget: calibrating, measuring, keeping sensitive layers FP32"):
        _, budget = quantize_with_budget(source, options.calib, out, evaluate=evaluate, eval_data=str(options.data),
                                         eval_images=images, max_miou_drop=options.max_miou_drop, **common)  # fmt: skip
    return QuantizeResult(precision, out, budget.int8, budget)


def _counted(update: Any, after: str) -> Any:
    """An `on_image(done, total)` callback that advances a progress task and names the step that follows."""
    seen = [0]

    def on_image(done: int, total: int) -> None:
        update(done - seen[0], total=total, description=after if done >= total else None)
        seen[0] = done

    return on_image


def checked_dataset(
    dataset: Any, config: Any, ignore_unknown_labels: bool = False, allow_unlabeled: bool = False,
    progress: Progress = SILENT,
) -> Any:  # fmt: skip
    """`dataset` with every image decoded and every mask checked against the model config's classes, before any
    inference (see `Dataset.checked`)."""
    from .data.datasets import LabelRules

    rules = LabelRules(config.num_classes, config.ignore_index, ignore_unknown_labels)
    with progress.task(f"checking {len(dataset)} images and their labels", total=len(dataset)) as advance:
        return dataset.checked(rules, allow_unlabeled, on_file=advance)


def miou_evaluator(
    data: PathLike, config: Any, split: str = "val", ignore_unknown_labels: bool = False,
    allow_unlabeled: bool = False, progress: Progress = SILENT,
) -> tuple[Any, int]:  # fmt: skip
    """(ONNX path -> mIoU in percent on the labeled `data`, number of images): scored like `verify`."""
    from .data.datasets import open_dataset
    from .evaluate.verify import verify as run_verify
    from .runners.onnxruntime import OnnxRuntimeRunner

    dataset = checked_dataset(open_dataset(data, split), config, ignore_unknown_labels, allow_unlabeled, progress)
    if not dataset.labeled:
        raise BadInputError(f"{data}: the mIoU budget needs labeled images (no label files found)")
    for note in dataset.label_check.notes():
        progress.note(f"note: {note}")

    def evaluate(path: Path) -> float:
        runner = OnnxRuntimeRunner(path, bounded=True)
        miou = run_verify(dataset, [runner], runner.config, ignore_unknown_labels=ignore_unknown_labels,
                          allow_unlabeled=allow_unlabeled).backends[0].miou  # fmt: skip
        return float("nan") if miou is None else float(miou)

    return evaluate, len(dataset)


# --- engines -------------------------------------------------------------------------------------------


@dataclass
class EngineResult:
    plan: Any  # engine.plan.BuildPlan
    notes: list[str] = field(default_factory=list)
    sidecar: Any = None  # engine.sidecar.EngineSidecar once built
    output: Path | None = None
    system: Any = None  # engine.system.RunningSystem where TensorRT and a GPU were found


def plan_engine(
    model: PathLike | OnnxModel, options: Any, tensorrt_version: str | None = None, dry_run: bool = False
) -> EngineResult:
    """The build plan for the installed TensorRT (or `tensorrt_version`); a dry run without TensorRT plans for the
    TensorRT this Jetson's JetPack installs, else the default version, and says so; a real build needs TensorRT
    and a GPU here."""
    from .engine.plan import DEFAULT_PLAN_VERSION, plan_build
    from .engine.system import read_platform, require_tensorrt, running_system

    notes = []
    system = None
    version = tensorrt_version
    try:
        system = running_system()
    except DeployError as missing:
        if not dry_run:
            raise  # a real build fails here, before anything is written, without TensorRT or a GPU
        if version is None:
            try:  # TensorRT installed, no GPU: plan for the installed version
                version = str(require_tensorrt().__version__)
                notes.append(f"planning for the installed TensorRT {version} ({missing})")
            except DeployError:
                platform = read_platform()
                version = platform.jetpack_tensorrt or DEFAULT_PLAN_VERSION
                source = "--tensorrt-version"
                if platform.jetpack_tensorrt:
                    source = f"what JetPack {platform.jetpack} installs"
                notes.append(f"TensorRT not available here; planning for TensorRT {version} ({source})")
    if version is None and system is not None:
        version = system.tensorrt_version
    return EngineResult(plan_build(model, options, version), notes, system=system)


def prepare_network(plan: Any, progress: Progress = SILENT) -> QuantizeResult | None:
    """Produce the ONNX TensorRT parses when the plan needs an FP16 or Q/DQ model first (the `quantize` step)."""
    if not plan.prepare:
        return None
    # With calibration images, FP16 magnitudes measured on them decide what stays FP32 too (not only the CAM rule).
    options = QuantizeOptions(calib=plan.options.get("calib"))
    return quantize(plan.source_onnx, plan.network_onnx, plan.precision, options, progress)


def build_engine(
    model: PathLike, output: PathLike, options: Any, tensorrt_version: str | None = None, progress: Progress = SILENT
) -> EngineResult:
    """Plan, make the network ONNX the plan needs, build the engine, audit its precision and write it with its
    sidecar. Options the platform cannot honour (DLA on a GPU without one, hardware compatibility on Jetson) fail
    before the network ONNX is made."""
    from .engine.build import build_engine as build
    from .engine.build import check_platform
    from .engine.sidecar import sidecar_path

    out, _ = check_outputs([output, sidecar_path(output)], [model])
    result = plan_engine(model, options, tensorrt_version)
    check_platform(result.plan, result.system.platform)
    prepare_network(result.plan, progress)
    with progress.task("building (TensorRT)") as update:
        result.sidecar = build(result.plan, out, lambda phase, step, total: update(0, description=phase),
                               system=result.system)  # fmt: skip
    result.output = out
    return result


# --- verify and benchmark ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyOptions:
    split: str = "val"
    limit: int | None = None
    thresholds: tuple[str, ...] = ()  # PRECISION.FIELD=VALUE overrides
    thresholds_file: PathLike | None = None
    crop: int | None = None
    stride: int | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    threads: int | None = None
    layout: str | None = None
    pytorch_fp16: bool = False
    ignore_unknown_labels: bool = False  # opt-in: mask values that are not class ids count as ignored
    allow_unlabeled: bool = False  # opt-in: a partly labeled set is evaluated on its labeled images
    force: bool = False  # go on when the memory plan's peak exceeds the available memory


@dataclass
class VerifyResult:
    report: Any  # evaluate.verify.VerifyReport
    warnings: list[str]
    json_path: Path | None = None
    html_path: Path | None = None
    engines: list[tuple[str, Any]] = field(default_factory=list)  # (backend name, EngineSidecar) per engine


def _with_sidecars(engines: Sequence[PathLike]) -> list[PathLike]:
    """Engines and their sidecars: both are inputs a command must never write over."""
    from .engine.sidecar import sidecar_path

    return [*engines, *(sidecar_path(e) for e in engines)]


def _engine_runners(engines: Sequence[PathLike]) -> list[Any]:
    """TensorRT runners: a missing engine or sidecar is exit 2 first, then no TensorRT / GPU is exit 3, both before
    any data is read or any process started."""
    if not engines:
        return []
    from .engine.system import running_system
    from .runners.tensorrt import TensorRTRunner

    runners = [TensorRTRunner(path) for path in engines]
    running_system()
    return runners


def _runners(
    checkpoint: PathLike | None, onnx: Sequence[PathLike], engines: Sequence[PathLike], options: VerifyOptions,
    progress: Progress, warnings: list[str],
) -> tuple[list[Any], Any]:  # fmt: skip
    """Backends from paths, the PyTorch reference first; returns (runners, model config)."""
    from .runners.onnxruntime import OnnxRuntimeRunner
    from .runners.pytorch import PyTorchRunner

    runners: list[Any] = [OnnxRuntimeRunner(p, name=f"onnxruntime:{Path(p).name}", threads=options.threads,
                                            bounded=True) for p in onnx]  # fmt: skip
    runners += _engine_runners(engines)
    config = runners[0].config if runners else None
    if checkpoint is not None:
        # The ONNX metadata says how the model was built (dilations, align_corners, classes); reuse it.
        overrides: dict[str, Any] = {}
        if config is not None:
            overrides = {"layer4_dilations": config.layer4_dilations, "align_corners": config.align_corners,
                         "class_names": config.class_names, "mean": config.mean, "std": config.std}  # fmt: skip
        loaded = load_checkpoint(checkpoint, options.layout, progress, **overrides)
        config = loaded.config
        for runner in runners:
            sha = getattr(runner, "metadata", {}).get("provenance", {}).get("checkpoint_sha256")
            if sha and sha != loaded.sha256:
                warnings.append(f"{runner.path} was exported from another checkpoint (sha256 {sha[:12]}...)")
        runners.insert(0, PyTorchRunner.from_model(loaded.model, config))
        if options.pytorch_fp16:
            runners.insert(1, PyTorchRunner.from_model(loaded.model, config, name="pytorch-fp16", half=True))
    elif options.pytorch_fp16:
        raise BadInputError("--pytorch-fp16 needs --ckpt")
    return runners, config


def verify(
    data: PathLike,
    checkpoint: PathLike | None = None,
    onnx: Sequence[PathLike] = (),
    engines: Sequence[PathLike] = (),
    options: VerifyOptions = VerifyOptions(),
    *,
    json_path: PathLike | None = None,
    report_dir: PathLike | None = None,
    benchmark_json: PathLike | None = None,
    progress: Progress = SILENT,
) -> VerifyResult:
    """Every backend on the same images under one protocol, judged against the first (PyTorch when given)."""
    from .data.datasets import open_dataset
    from .evaluate.protocols import EvalProtocol
    from .evaluate.verify import thresholds_with
    from .evaluate.verify import verify as run_verify
    from .runners.base import activated

    inputs = [data, checkpoint, *onnx, *_with_sidecars(engines), benchmark_json, options.thresholds_file]
    reports = [Path(report_dir) / name for name in ("report.html", "report.md")] if report_dir is not None else []
    check_outputs([json_path, *reports], inputs)
    if checkpoint is None and not onnx and not engines:
        raise BadInputError("verify needs --ckpt and/or --onnx / --engine")
    thresholds = thresholds_with(list(options.thresholds),
                                 str(options.thresholds_file) if options.thresholds_file else None)  # fmt: skip
    benchmark_results = _read_benchmark_json(benchmark_json) if benchmark_json else None
    protocol = EvalProtocol(crop=options.crop, stride=options.stride, flip=options.flip, scales=options.scales)
    warnings: list[str] = []
    runners, config = _runners(checkpoint, onnx, engines, options, progress, warnings)  # files read, nothing run
    dataset = open_dataset(data, options.split).head(options.limit)
    _show_plan(_backends_plan("verify", checkpoint, onnx, protocol.largest_run(dataset.largest_image())),
               options.force, progress)  # fmt: skip
    dataset = checked_dataset(dataset, config, options.ignore_unknown_labels, options.allow_unlabeled, progress)
    if not dataset.labeled:
        warnings.append(f"{data} has no label files; parity only, mIoU is not computed")
    result = VerifyResult(None, warnings, engines=[(r.name, r.sidecar) for r in runners if r.kind == "tensorrt"])
    with activated(runners):
        # TensorRT runners compare their engine's sidecar with this system when they activate.
        warnings += [w for r in runners for w in getattr(r, "warnings", [])]
        for warning in warnings:
            progress.note(f"warning: {warning}")
        with progress.task(f"verify ({len(runners)} backends)", total=len(dataset)) as advance:
            result.report = run_verify(dataset, runners, config, thresholds, on_image=lambda i: advance(),
                                       protocol=protocol, ignore_unknown_labels=options.ignore_unknown_labels,
                                       allow_unlabeled=options.allow_unlabeled)  # fmt: skip
        with all_or_nothing():  # the JSON, HTML and Markdown appear together or not at all
            if json_path is not None:
                result.json_path = write_json(json_path, result.report.to_dict())
            if report_dir is not None:
                from .report.html_report import collect_examples, write_html, write_markdown

                with progress.task("writing the HTML report (re-running the worst images)"):
                    examples = collect_examples(dataset, runners, result.report, config, protocol)
                    html = write_html(result.report, examples, config, Path(report_dir) / "report.html",
                                      benchmark=benchmark_results)  # fmt: skip
                    write_markdown(result.report, Path(report_dir) / "report.md", html.name)
                result.html_path = html
    return result


def _backends_plan(
    command: str, checkpoint: PathLike | None, onnx: Sequence[PathLike], run_size: tuple[int, int] | None
) -> Any:  # fmt: skip
    """The memory plan of verify or benchmark for these backends: at a static ONNX model's size, else at
    `run_size`, the largest size the images will run at (dynamic models and the checkpoint run at the image's)."""
    from .memory import benchmark_plan, onnx_file_facts, verify_plan

    static = [OnnxModel.load(p, external_data=False).input_spec.static_size for p in onnx if Path(p).is_file()]
    size = next((s for s in static if s), None) or run_size
    facts = [onnx_file_facts(path, size) for path in onnx if Path(path).is_file()]
    size = size or (facts[0][1] if facts else (512, 1024))
    torch_weights = Path(checkpoint).stat().st_size if checkpoint is not None and Path(checkpoint).is_file() else None
    if command == "verify":
        return verify_plan(torch_weights, [f for f, _ in facts], size)
    return benchmark_plan(torch_weights, [(f"onnxruntime:{Path(p).name}", f) for p, (f, _) in zip(onnx, facts)],
                          size)  # fmt: skip


def _read_benchmark_json(path: PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise BadInputError(f"{path}: not a readable benchmark JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("backends"), list):
        raise BadInputError(f"{path}: not a benchmark JSON (no 'backends' list)")
    for i, row in enumerate(data["backends"]):  # what the report's latency chart reads, checked before the run
        timed = isinstance(row, dict) and "error" not in row
        if not isinstance(row, dict) or (timed and not (isinstance(row.get("name"), str) and all(
                isinstance(row.get(k), (int, float)) and math.isfinite(row[k]) and row[k] >= 0
                for k in ("median_ms", "p90_ms", "p99_ms")))):  # fmt: skip
            raise BadInputError(f"{path}: backend {i} is not a benchmark row (name, median_ms, p90_ms, p99_ms)")
    return data


@dataclass
class BenchmarkResult:
    results: dict[str, Any]  # {"backends": [...], "versions": ..., "device": ...}
    json_path: Path | None = None

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.results["backends"] if "error" not in r]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results["backends"] if "error" in r]


def benchmark(
    checkpoint: PathLike | None = None,
    onnx: Sequence[PathLike] = (),
    engines: Sequence[PathLike] = (),
    *,
    image: PathLike | None = None,
    warmup: int = 3,
    iterations: int = 20,
    threads: int | None = None,
    json_path: PathLike | None = None,
    force: bool = False,
    progress: Progress = SILENT,
) -> BenchmarkResult:
    """Latency of each backend in its own process on one real image; failures are rows with an error. A memory
    plan (each backend runs its model as written) is shown first; one that does not fit stops (exit 2) unless
    `force`."""
    from .data.bundled import sample_image
    from .data.images import read_image
    from .evaluate.benchmark import benchmark as run_benchmark
    from .runners.onnxruntime import OnnxRuntimeRunner
    from .runners.pytorch import PyTorchRunner

    paths = [p for p in (checkpoint, *onnx, *engines) if p is not None]
    if json_path is not None:
        check_output(json_path, [*paths, *_with_sidecars(engines), image])
    if not paths:
        raise BadInputError("benchmark needs --ckpt, --onnx and/or --engine")
    for path in paths:
        if not Path(path).is_file():
            raise BadInputError(f"{path}: no such file")
    picture = read_image(Path(image)) if image else sample_image()
    _show_plan(_backends_plan("benchmark", checkpoint, onnx, picture.shape[:2]), force, progress)
    runners: list[Any] = [PyTorchRunner(checkpoint, threads=threads)] if checkpoint is not None else []
    runners += [OnnxRuntimeRunner(p, name=f"onnxruntime:{Path(p).name}", threads=threads) for p in onnx]
    runners += _engine_runners(engines)
    what = f"benchmarking {len(runners)} backend(s): {warmup} warm-up + {iterations} timed runs each"
    with progress.task(what):
        result = BenchmarkResult(run_benchmark(runners, picture, warmup, iterations))
    if json_path is not None:
        result.json_path = write_json(json_path, result.results)
    return result


# --- demo ----------------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    workdir: Path
    export: ExportResult
    simplified: SimplifyResult
    fp16: QuantizeResult
    int8: QuantizeResult  # Q/DQ for TensorRT
    int8_ort: QuantizeResult  # for ONNX Runtime's CPU integer kernels
    benchmark: BenchmarkResult
    verify: VerifyResult


@contextlib.contextmanager
def _step(progress: Progress, header: str) -> Iterator[None]:
    progress.show(header)
    yield


def demo(
    workdir: PathLike = "danet-deploy-demo", variant: str = "danet", calib_images: int = 100,
    progress: Progress = SILENT,
) -> DemoResult:  # fmt: skip
    """The whole pipeline on a bundled model and data: export, simplify, FP16, INT8 (for TensorRT and for ONNX
    Runtime's CPU kernels), benchmark, verify, report."""
    from .data.bundled import DEMO_CHECKPOINTS, DEMO_DATA
    from .data.synthetic import write_calibration_images
    from .report.text import export_summary, fp16_lines, int8_lines, simplify_lines

    if variant not in DEMO_CHECKPOINTS:
        raise DeployError(f"--variant {variant!r}: choose from {', '.join(DEMO_CHECKPOINTS)}", EXIT_BAD_INPUT)
    checkpoint, work = DEMO_CHECKPOINTS[variant], Path(workdir)
    onnx_path, simplified = work / "demo.onnx", work / "demo.ort.onnx"
    fp16_path, int8_path, calib = work / "demo.fp16.onnx", work / "demo.int8.onnx", work / "calibration"
    int8_ort_path = work / "demo.int8.ort.onnx"
    with removed_on_failure():  # an interrupted or failed demo leaves none of its outputs
        with _step(progress, f"[bold]1/6 export[/] {checkpoint.name} -> {onnx_path}"):
            exported = export(checkpoint, onnx_path, progress=progress)
            for line in export_summary(exported.record):
                progress.show(line)
        with _step(progress, f"[bold]2/6 simplify[/] for ONNX Runtime -> {simplified}"):
            simple = simplify_model_file(onnx_path, simplified, SimplifyOptions(target="ort"), progress)
            for line in [*simplify_lines(simple.report), f"wrote {simple.path} ({simple.size_bytes / 2**20:.1f} MiB)"]:
                progress.show(line)
        with progress.task(
            f"writing {calib_images} synthetic calibration scenes (the calibration/ split of the generator)"
        ):
            write_calibration_images(calib, calib_images)
        with _step(progress, f"[bold]3/6 FP16[/] -> {fp16_path}"):
            fp16_options = QuantizeOptions(calib=calib, count=min(calib_images, 32))
            fp16 = quantize(onnx_path, fp16_path, Precision.FP16, fp16_options, progress)
            for line in fp16_lines(fp16.record):
                progress.show(line)
        with _step(
            progress, f"[bold]4/6 INT8[/] Q/DQ for TensorRT -> {int8_path}, for ONNX Runtime -> {int8_ort_path}"
        ):
            options = QuantizeOptions(calib=calib, count=calib_images, cache_dir=work / "cache")
            int8 = quantize(onnx_path, int8_path, Precision.INT8, options, progress)
            int8_ort = quantize(onnx_path, int8_ort_path, Precision.INT8, replace(options, target="ort"), progress)
            for line in [*int8_lines(int8.record), *int8_lines(int8_ort.record)]:
                progress.show(line)
        models = [onnx_path, simplified, fp16_path, int8_path, int8_ort_path]
        with _step(progress, "[bold]5/6 benchmark[/] PyTorch and every ONNX model on ONNX Runtime CPU"):
            bench = benchmark(checkpoint, models, warmup=2, iterations=5, json_path=work / "benchmark.json",
                              progress=progress)  # fmt: skip
        with _step(progress, f"[bold]6/6 verify[/] every backend against PyTorch on {DEMO_DATA}"):
            verified = verify(DEMO_DATA, checkpoint, models, json_path=work / "report.json", report_dir=work,
                              benchmark_json=work / "benchmark.json", progress=progress)  # fmt: skip
    return DemoResult(work, exported, simple, fp16, int8, int8_ort, bench, verified)


def check_verify_passed(result: VerifyResult) -> None:
    """Raise CheckFailedError (exit 1) naming each failed backend."""
    if not result.report.passed:
        failed = [f"{b.name}: {', '.join(b.failures)}" for b in result.report.backends if not b.passed]
        raise CheckFailedError("parity check failed: " + "; ".join(failed))


# --- inspect -------------------------------------------------------------------------------------------


@dataclass
class InspectResult:
    path: Path
    metadata: dict[str, Any]
    lint: Any  # graph.lint.LintReport
    precision: str = "fp32"  # with the INT8 target, e.g. "int8 (ONNX Runtime)"
    kernels: list[Any] = field(default_factory=list)  # INT8: precision.int8_ort.KernelChoice per Conv/MatMul/Gemm
    json_path: Path | None = None


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class EngineInspectResult:
    path: Path
    sidecar: Any  # engine.sidecar.EngineSidecar: how and where it was built, the precision audit of the build
    live: Any = None  # engine.audit.EngineAudit read from the engine now (TensorRT here and the engine compatible)
    notes: list[str] = field(default_factory=list)  # why the engine itself was not read, or what differs
    json_path: Path | None = None


def inspect_engine(
    engine: PathLike, json_path: PathLike | None = None, progress: Progress = SILENT
) -> EngineInspectResult:
    """The sidecar's facts (TensorRT, GPU, platform, precision path, profile, options, layers per precision at
    build time) and, where TensorRT and a compatible GPU are present, the engine's own layer information."""
    import dataclasses

    from .engine.audit import audit_engine, parse_layer_information
    from .engine.build import engine_layer_information
    from .engine.sidecar import check_compatible, read_sidecar
    from .engine.system import running_system

    if json_path is not None:
        check_output(json_path, _with_sidecars([engine]))
    path = Path(engine)
    if not path.is_file():
        raise BadInputError(f"{path}: no such engine file")
    sidecar = read_sidecar(path)
    result = EngineInspectResult(path, sidecar)
    engine_bytes: bytes | None = None
    try:
        engine_bytes = sidecar.engine_bytes(path)
    except BadInputError as exc:  # a file its sidecar does not describe is not deserialized
        result.notes.append(str(exc))
    try:
        result.notes += check_compatible(sidecar, running_system(), path)
    except DeployError as exc:
        result.notes.append(f"layer information from the sidecar only: {exc}")
        engine_bytes = None
    if engine_bytes is not None:
        with progress.task("reading the engine's layer information (TensorRT)"):
            try:
                layers = parse_layer_information(engine_layer_information(engine_bytes))
            except Exception as exc:  # TensorRT / Polygraphy refuse a damaged plan with their own errors
                first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                raise BadInputError(f"{path}: TensorRT cannot read the engine ({first})") from None
        result.live = audit_engine(layers, sidecar.precision, sidecar.pinned_fp32_layers)
    if json_path is not None:
        data = {"engine": str(path), "sidecar": dataclasses.asdict(sidecar),
                "live_layers": result.live.to_dict() if result.live else None, "notes": result.notes}  # fmt: skip
        result.json_path = write_json(json_path, data)
    return result


def inspect(
    model: PathLike, target: str = "trt10.3", input_size: tuple[int, int] | None = None,
    json_path: PathLike | None = None, progress: Progress = SILENT,
) -> InspectResult | EngineInspectResult:  # fmt: skip
    """Model config and provenance, precision, op histogram, attention sites, TensorRT readiness lint, memory
    estimate; for INT8 models which Conv/MatMul nodes ONNX Runtime's CPU provider runs as integer kernels. A
    TensorRT engine (.engine, .plan, .trt) is inspected by `inspect_engine`."""
    import dataclasses

    from .export.artifact import precision_label
    from .graph.lint import lint

    if Path(model).suffix.lower() in ENGINE_SUFFIXES:
        return inspect_engine(model, json_path, progress)
    if json_path is not None:
        check_output(json_path, [model])
    onnx_model = OnnxModel.load(model)
    if onnx_model.has_config:
        onnx_model.config  # noqa: B018 -- validates it (class names, palette): a bad one is exit 2, not shown
    try:
        with progress.task("linting"):
            report = lint(onnx_model.proto, target, input_size)
    except ValueError as exc:
        raise BadInputError(f"{model}: {exc}") from None
    label = precision_label(onnx_model.precision, onnx_model.quantized_for)
    result = InspectResult(onnx_model.path, onnx_model.metadata, report, label)
    if onnx_model.precision is Precision.INT8:
        from .precision.int8_ort import kernel_choices

        with progress.task("asking ONNX Runtime which kernels it runs"):
            try:
                result.kernels = kernel_choices(onnx_model.proto)
            except BadInputError as exc:
                raise BadInputError(f"{model}: {exc}") from None
    if json_path is not None:
        data = {"model": str(model), "metadata": onnx_model.metadata, "precision": label,
                "onnxruntime_kernels": [{**dataclasses.asdict(k), "integer": k.integer} for k in result.kernels],
                **dataclasses.asdict(report)}  # fmt: skip
        result.json_path = write_json(json_path, data)
    return result
