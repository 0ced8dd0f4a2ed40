"""danet-deploy command line: parses, calls the stages, prints. No pipeline logic lives here."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

from .errors import EXIT_BAD_INPUT, DeployError
from .graph.pam import DEFAULT_BLOCK

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="From a trained DANet checkpoint to verified ONNX (and TensorRT) inference models.",
)
# Off a terminal (CI logs, pipes) Rich would wrap tables at 80 columns; logs can be wider.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
EXIT_INTERNAL = 4

F = TypeVar("F", bound=Callable[..., Any])


def guarded(fn: F) -> F:
    """One line and a documented exit code for every expected failure; no tracebacks for bad input."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DeployError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("DANET_DEPLOY_DEBUG"):
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            hint = "set DANET_DEPLOY_DEBUG=1 for a traceback"
            err.print(
                f"[red]internal error:[/] {type(exc).__name__}: {first} ({hint})", highlight=False, soft_wrap=True
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def spinner(text: str) -> Iterator[None]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True) as progress:
        progress.add_task(text, total=None)
        yield


def image_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, transient=True,
    )  # fmt: skip


def _size(text: str | None) -> tuple[int, int] | None:
    from .config import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise DeployError(f"--input-size: {exc}", EXIT_BAD_INPUT) from None


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise DeployError(f"{option}: expected comma-separated integers, got {text!r}", EXIT_BAD_INPUT) from None
    if not values or any(v < 1 for v in values):
        raise DeployError(f"{option}: expected positive integers, got {text!r}", EXIT_BAD_INPUT)
    return values


def _floats3(text: str | None, option: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise DeployError(f"{option}: expected three comma-separated numbers, got {text!r}", EXIT_BAD_INPUT)
    return values  # type: ignore[return-value]


def _class_names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DeployError(f"--class-names: no names in {text!r}", EXIT_BAD_INPUT)
    return tuple(names)


TargetOpt = Annotated[
    str | None, typer.Option(help="Deployment target: trt8.6, trt10.3, trt10.14, trt11, ort (sets the PAM form).")
]
AttentionOpt = Annotated[
    str | None, typer.Option(help="PAM form: naive, mha, onnx-attention, blocked (default: chosen from --target).")
]
BlockOpt = Annotated[int, typer.Option(min=1, help="Query block size of the blocked PAM form.")]
GroupNormOpt = Annotated[
    str | None,
    typer.Option(help="GroupNorm form (Shuffle Attention): group-normalization, decomposed (default: from --target)."),
]
FoldShuffleOpt = Annotated[
    bool,
    typer.Option(
        "--fold-shuffle/--keep-shuffle", help="Fold channel shuffles into the next Conv, or keep one reshape/transpose."
    ),
]
LayoutOpt = Annotated[str | None, typer.Option(help="Checkpoint layout: ours, official, mmseg (default: detected).")]
DilationsOpt = Annotated[
    str | None,
    typer.Option(help="layer4 dilations, e.g. 4,8,16 (official released model) or 2,4,4 (MMSeg, 2020-code default)."),
]
AlignOpt = Annotated[
    bool | None,
    typer.Option("--align-corners/--no-align-corners", help="Final upsampling (default: official True, MMSeg False)."),
]
ClassNamesOpt = Annotated[str | None, typer.Option(help="Class names: a file with one per line, or a,b,c.")]
MeanOpt = Annotated[str | None, typer.Option(help="Normalization mean of RGB in [0,1], e.g. 0.485,0.456,0.406.")]
StdOpt = Annotated[str | None, typer.Option(help="Normalization std of RGB in [0,1], e.g. 0.229,0.224,0.225.")]


def _load(ckpt: Path, layout: str | None, **overrides: Any) -> Any:
    from .checkpoints import load_checkpoint

    with spinner(f"loading {ckpt}"):
        loaded = load_checkpoint(ckpt, layout, **overrides)
    c = loaded.config
    err.print(
        f"checkpoint {ckpt.name}: {loaded.layout.value} layout, {c.arch}, stem {c.stem_channels}, "
        f"layer4 dilations {c.layer4_dilations}, {c.num_classes} classes, align_corners={c.align_corners}",
        highlight=False,
    )
    for note in loaded.notes:
        err.print(f"  note: {note}", highlight=False)
    return loaded


@app.command()
@guarded
def export(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint (.pth): ours, official DANet or MMSegmentation.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ONNX file to write.")] = Path("model.onnx"),
    input_size: Annotated[str | None, typer.Option(help="HxW, e.g. 512x1024 (default: model config).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of a static export.")] = 1,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="Dynamic batch, height and width.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset; >= 18 uses the dynamo exporter, < 18 the legacy one.")] = 18,
    argmax: Annotated[bool, typer.Option(help="Add an int32 'labels' output (N x H x W).")] = False,
    uint8_input: Annotated[
        bool, typer.Option(help="Bake preprocessing: input 'image' is uint8 N x H x W x 3 RGB (0-255).")
    ] = False,
    image: Annotated[Path | None, typer.Option(help="Real image for the parity check (default: bundled).")] = None,
    atol: Annotated[float, typer.Option(help="Parity tolerance: atol + rtol * max|logit|.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Parity tolerance, relative part.")] = 1e-4,
    layout: LayoutOpt = None,
    dilations: DilationsOpt = None,
    align_corners: AlignOpt = None,
    class_names: ClassNamesOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    simplify: Annotated[bool, typer.Option("--simplify", help="Run the graph passes (see `simplify`).")] = False,
    target: TargetOpt = None,
    attention: AttentionOpt = None,
    block: BlockOpt = DEFAULT_BLOCK,
    group_norm: GroupNormOpt = None,
    fold_shuffle: FoldShuffleOpt = True,
) -> None:
    """Export a checkpoint to ONNX, then check it with onnx.checker and ONNX Runtime vs PyTorch."""
    from .data.bundled import sample_image
    from .data.datasets import read_image
    from .export import ExportOptions, export_onnx
    from .report.text import export_summary

    size = _size(input_size)
    loaded = _load(
        ckpt, layout, layer4_dilations=_ints(dilations, "--dilations"), align_corners=align_corners,
        class_names=_class_names(class_names), mean=_floats3(mean, "--mean"), std=_floats3(std, "--std"),
        input_size=size,
    )  # fmt: skip
    options = ExportOptions(
        input_size=size, batch=batch, dynamic=dynamic, opset=opset, argmax=argmax, uint8_input=uint8_input,
        atol=atol, rtol=rtol,
    )  # fmt: skip
    parity_image = read_image(image) if image else sample_image()
    if (target or attention or group_norm) and not simplify:
        raise DeployError("--target/--attention/--group-norm take effect with --simplify", EXIT_BAD_INPUT)
    with contextlib.ExitStack() as stack:
        raw = output
        if simplify:  # export beside, simplify onto `output`: a failed pass leaves nothing at `output`
            raw = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=output.parent or None))) / "raw.onnx"
        with spinner(f"exporting {loaded.config.arch} ({options.exporter} exporter, opset {opset}), checking parity"):
            record = export_onnx(loaded.model, loaded.config, raw, options, parity_image, loaded.provenance())
        for line in export_summary(record):
            out.print(line.replace(str(raw), str(output)), highlight=False)
        if simplify:
            _simplify(raw, output, target=target, attention=attention, block=block, atol=atol, rtol=rtol,
                      group_norm=group_norm, fold_shuffle=fold_shuffle)  # fmt: skip


def _simplify(model: Path, output: Path, **passes: Any) -> None:
    """`passes`: simplify_file's keyword arguments (target, attention, group_norm, ...)."""
    from .graph.simplify import simplify_file
    from .report.text import simplify_lines

    with spinner("simplifying the graph, checking every pass with ONNX Runtime"):
        report, info = simplify_file(
            model, output, **passes,
            on_pass=lambda p: err.print(f"  pass {p.name}: max abs diff {p.max_abs_diff:.2e}", highlight=False),
        )  # fmt: skip
    for line in simplify_lines(report):
        out.print(line, highlight=False)
    out.print(f"wrote {output} ({info['size_bytes'] / 2**20:.1f} MiB)", highlight=False)


@app.command()
@guarded
def simplify(
    model: Annotated[Path, typer.Argument(help="ONNX model (from `danet-deploy export`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ONNX file to write.")],
    target: TargetOpt = None,
    attention: AttentionOpt = None,
    block: BlockOpt = DEFAULT_BLOCK,
    heads: Annotated[
        int | None, typer.Option(min=1, help="PAM value heads for mha/onnx-attention (default C/64).")
    ] = None,
    atol: Annotated[float, typer.Option(help="Per-pass tolerance: atol + rtol * max|logit|.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Per-pass tolerance, relative part.")] = 1e-4,
    group_norm: GroupNormOpt = None,
    fold_shuffle: FoldShuffleOpt = True,
) -> None:
    """Simplify the attention graph for a target; every pass is checked against the previous graph."""
    _simplify(model, output, target=target, attention=attention, block=block, heads=heads, atol=atol, rtol=rtol,
              group_norm=group_norm, fold_shuffle=fold_shuffle)  # fmt: skip


@app.command()
@guarded
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    target: Annotated[str, typer.Option(help="trt8.6, trt10.3, trt10.14, trt11 or ort.")] = "trt10.3",
    input_size: Annotated[str | None, typer.Option(help="HxW to lint at (required for dynamic models).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the findings as JSON.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when the lint finds errors for the target.")] = False,
) -> None:
    """Op histogram, attention sites and their form, model config, TensorRT readiness lint, memory estimate."""
    import dataclasses

    import onnx as onnx_lib

    from .errors import CheckFailedError
    from .export import read_metadata
    from .files import write_json
    from .graph.lint import lint
    from .report.text import inspect_tables

    if not model.is_file():
        raise DeployError(f"{model}: no such ONNX file", EXIT_BAD_INPUT)
    try:
        proto = onnx_lib.load(str(model))
    except Exception:
        raise DeployError(f"{model}: not a readable ONNX model", EXIT_BAD_INPUT) from None
    size = _size(input_size)
    try:
        with spinner("linting"):
            report = lint(proto, target, size)
    except ValueError as exc:
        raise DeployError(f"{model}: {exc}", EXIT_BAD_INPUT) from None
    meta = read_metadata(proto)
    for item in inspect_tables(str(model), meta, report):
        out.print(item)
    if json_path:
        write_json(json_path, {"model": str(model), "metadata": meta, **dataclasses.asdict(report)})
    if strict and report.errors:
        raise CheckFailedError(f"{model}: {len(report.errors)} TensorRT readiness error(s) for {report.target}")


@app.command()
@guarded
def quantize(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model (from `danet-deploy export`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ONNX file to write.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 ONNX (FP32 I/O, overflow-prone parts kept FP32).")] = False,
    plain: Annotated[bool, typer.Option(help="With --fp16: plain cast, no protection (for comparison).")] = False,
    calib: Annotated[Path | None, typer.Option(help="Calibration images (folder or Cityscapes root).")] = None,
    method: Annotated[str, typer.Option(help="INT8 calibration: entropy, max or percentile.")] = "entropy",
    count: Annotated[int | None, typer.Option(min=1, help="Calibration images to use (default: up to 500).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the calibration sample.")] = 0,
    split: Annotated[str, typer.Option(help="Cityscapes split for calibration.")] = "train",
    max_miou_drop: Annotated[
        float | None,
        typer.Option(help="INT8: keep the most sensitive layers FP32 until the mIoU drop fits (needs --data)."),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Labeled data for --max-miou-drop.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Node name or regex to keep FP32; repeatable.")] = None,
    recalibrate: Annotated[bool, typer.Option(help="Ignore the calibration cache.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Calibration cache (default ~/.cache/danet-deploy).")] = None,
) -> None:
    """FP16 or INT8 (Q/DQ, TensorRT-ready) ONNX from an FP32 ONNX, measured against it on calibration images."""
    import warnings

    from .report.text import fp16_lines, int8_lines

    if plain and not fp16:
        raise DeployError("--plain goes with --fp16", EXIT_BAD_INPUT)
    if not fp16 and calib is None:
        raise DeployError("INT8 needs --calib DIR (calibration images); use --fp16 for an FP16 model", EXIT_BAD_INPUT)
    if max_miou_drop is not None and (fp16 or data is None):
        raise DeployError("--max-miou-drop is for INT8 and needs --data (labeled images)", EXIT_BAD_INPUT)
    with warnings.catch_warnings(record=True) as caught, spinner("quantizing and checking against FP32"):
        warnings.simplefilter("always")
        if fp16:
            from .precision import convert_fp16

            _, record = convert_fp16(model, output, calib_path=calib, plain=plain, count=count, seed=seed,
                                     split=split, nodes_to_exclude=exclude)  # fmt: skip
            lines = fp16_lines(record)
        elif max_miou_drop is not None:
            from .precision import quantize_with_budget

            _, budget = quantize_with_budget(model, calib, data, output, max_miou_drop=max_miou_drop, method=method,
                                             count=count, seed=seed, nodes_to_exclude=exclude, recalibrate=recalibrate,
                                             cache_dir=cache_dir, split=split)  # fmt: skip
            lines = int8_lines(budget.int8, budget)
        else:
            from .precision import quantize_int8

            _, record8 = quantize_int8(model, calib, output, method=method, count=count, seed=seed,
                                       nodes_to_exclude=exclude, recalibrate=recalibrate, cache_dir=cache_dir,
                                       split=split)  # fmt: skip
            lines = int8_lines(record8)
    for warning in caught:
        if issubclass(warning.category, UserWarning) and "danet_deploy" in (warning.filename or ""):
            err.print(f"warning: {escape(str(warning.message))}", highlight=False, soft_wrap=True)
    for line in lines:
        out.print(escape(line), highlight=False, soft_wrap=True)


@app.command("build-engine")
@guarded
def build_engine(
    model: Annotated[Path, typer.Argument(help="ONNX model (FP32 from `export`, or an FP16 / Q/DQ ONNX).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Engine file to write.")] = Path("model.engine"),
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine (path chosen for the TensorRT version).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from a Q/DQ ONNX (made from --calib).")] = False,
    calib: Annotated[Path | None, typer.Option(help="Calibration images for --int8 (see calibration/).")] = None,
    min_shape: Annotated[str | None, typer.Option(help="Profile min, e.g. 1x3x512x1024 (default: model).")] = None,
    opt_shape: Annotated[str | None, typer.Option(help="Profile opt (default: min).")] = None,
    max_shape: Annotated[str | None, typer.Option(help="Profile max (default: opt).")] = None,
    workspace: Annotated[int | None, typer.Option(min=1, help="Workspace limit in MiB.")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache to load and update.")] = None,
    dla_core: Annotated[int | None, typer.Option(min=0, help="Build for this DLA core (Jetson Orin).")] = None,
    gpu_fallback: Annotated[bool, typer.Option(help="With --dla-core: let unsupported layers run on the GPU.")] = False,
    version_compatible: Annotated[bool, typer.Option(help="Engine runs on later TensorRT of the same major.")] = False,
    hardware_compat: Annotated[str | None, typer.Option(help="ampere+ or same-cc: engine runs on other GPUs.")] = None,
    builder_opt_level: Annotated[int | None, typer.Option(help="Builder optimization level 0-5.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the build plan; needs no TensorRT.")] = False,
    plan_json: Annotated[
        Path | None, typer.Option("--plan-json", help="With --dry-run: write the plan as JSON.")
    ] = None,
    tensorrt_version: Annotated[
        str | None, typer.Option(help="Plan for this TensorRT version (default: installed, else 11.4).")
    ] = None,
) -> None:
    """Build a TensorRT engine (and model.engine.json) through Polygraphy; --dry-run shows the plan."""
    from .engine.build import build_engine as run_build
    from .engine.build import running_system
    from .engine.plan import DEFAULT_PLAN_VERSION, BuildOptions, parse_shape, plan_build
    from .files import write_json
    from .report.text import plan_lines

    if fp16 and int8:
        raise DeployError("choose one of --fp16 and --int8", EXIT_BAD_INPUT)
    options = BuildOptions(
        precision="int8" if int8 else "fp16" if fp16 else "fp32",
        min_shape=parse_shape(min_shape, "--min-shape") if min_shape else None,
        opt_shape=parse_shape(opt_shape, "--opt-shape") if opt_shape else None,
        max_shape=parse_shape(max_shape, "--max-shape") if max_shape else None,
        workspace_mib=workspace, timing_cache=str(timing_cache) if timing_cache else None, dla_core=dla_core,
        gpu_fallback=gpu_fallback, version_compatible=version_compatible, hardware_compat=hardware_compat,
        builder_opt_level=builder_opt_level, calib=str(calib) if calib else None,
    )  # fmt: skip
    version = tensorrt_version
    if version is None and not dry_run:
        version = running_system().tensorrt_version  # fails here, before anything is written, without TensorRT
    elif version is None:
        try:
            version = running_system().tensorrt_version
        except DeployError:
            version = DEFAULT_PLAN_VERSION
            err.print(f"note: TensorRT not available here; planning for TensorRT {version} (--tensorrt-version)")
    plan = plan_build(model, options, version)
    for line in plan_lines(plan):
        out.print(line, highlight=False, soft_wrap=True)
    if dry_run:
        if plan_json:
            write_json(plan_json, plan.to_dict())
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True) as progress:
        task = progress.add_task("building (TensorRT)", total=None)
        sidecar = run_build(plan, output, lambda phase, step, total: progress.update(task, description=phase))
    out.print(f"wrote {output} and {output}.json ({sidecar.build_seconds:.0f} s, {sidecar.gpu_name}, "
              f"TensorRT {sidecar.tensorrt_version})", highlight=False)  # fmt: skip


@app.command()
@guarded
def verify(
    data: Annotated[Path, typer.Option(help="Cityscapes root, images/ + masks/ folders, or an image folder.")],
    ckpt: Annotated[Path | None, typer.Option(help="PyTorch checkpoint: the reference backend.")] = None,
    onnx: Annotated[list[Path] | None, typer.Option(help="ONNX model(s) run with ONNX Runtime; repeatable.")] = None,
    engine: Annotated[list[Path] | None, typer.Option(help="TensorRT engine(s) with sidecar; repeatable.")] = None,
    pytorch_fp16: Annotated[bool, typer.Option(help="Also run the checkpoint in FP16 on a CUDA GPU.")] = False,
    split: Annotated[str, typer.Option(help="Cityscapes split.")] = "val",
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N images.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report", help="Write report.html (charts, worst images) and report.md here.")
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="Override a pass threshold, e.g. fp16.min_pixel_agreement=0.998 (repeatable)."),
    ] = None,
    thresholds_file: Annotated[
        Path | None, typer.Option(help='JSON thresholds per precision, e.g. {"int8": {"max_miou_drop": 0.5}}.')
    ] = None,
    crop: Annotated[int | None, typer.Option(min=8, help="Sliding-window crop (e.g. 768), with --stride.")] = None,
    stride: Annotated[int | None, typer.Option(min=1, help="Sliding-window stride (e.g. 512).")] = None,
    flip: Annotated[bool, typer.Option(help="Average with the horizontally flipped image.")] = False,
    scales: Annotated[str | None, typer.Option(help="Multi-scale, e.g. 0.75,1,1.25 (logits averaged).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = None,
    layout: LayoutOpt = None,
    benchmark_json: Annotated[
        Path | None, typer.Option(help="Benchmark results (`benchmark --json`) to chart in the report.")
    ] = None,
) -> None:
    """Evaluate backends (PyTorch, ONNX Runtime, TensorRT) on the same images: mIoU, per-class IoU, parity, NaN/Inf.

    Exit code 0 when every backend is within tolerance of the reference, 1 when not, 2 on bad input.
    """
    from .data.datasets import open_dataset
    from .errors import CheckFailedError
    from .evaluate.protocols import Protocol
    from .evaluate.verify import thresholds_with
    from .evaluate.verify import verify as run_verify
    from .export import read_metadata
    from .files import write_json
    from .report.text import per_class_table, verify_table
    from .runners.onnxruntime import OnnxRuntimeRunner
    from .runners.pytorch import PyTorchRunner

    onnx = onnx or []
    if ckpt is None and not onnx and not engine:
        raise DeployError("verify needs --ckpt and/or --onnx / --engine", EXIT_BAD_INPUT)
    runners: list[Any] = [OnnxRuntimeRunner(p, name=f"onnxruntime:{p.name}", threads=threads) for p in onnx]
    if engine:
        from .runners.tensorrt import TensorRTRunner

        for path in engine:
            trt_runner = TensorRTRunner(path)
            for warning in trt_runner.warnings:
                err.print(f"warning: {warning}", highlight=False)
            runners.append(trt_runner)
    config = runners[0].config if runners else None
    if ckpt is not None:
        # The ONNX metadata says how the model was built (dilations, align_corners, classes); reuse it.
        overrides: dict[str, Any] = {}
        if config is not None:
            overrides = {"layer4_dilations": config.layer4_dilations, "align_corners": config.align_corners,
                         "class_names": config.class_names, "mean": config.mean, "std": config.std}  # fmt: skip
        loaded = _load(ckpt, layout, **overrides)
        config = loaded.config
        for path in onnx:
            exported_from = read_metadata(path).get("provenance", {}).get("checkpoint_sha256")
            if exported_from and exported_from != loaded.sha256:
                err.print(f"warning: {path} was exported from another checkpoint (sha256 {exported_from[:12]}...)",
                          highlight=False)  # fmt: skip
        runners.insert(0, PyTorchRunner(loaded.model, config))
        if pytorch_fp16:
            runners.insert(1, PyTorchRunner(loaded.model, config, name="pytorch-fp16", half=True))
    elif pytorch_fp16:
        raise DeployError("--pytorch-fp16 needs --ckpt", EXIT_BAD_INPUT)
    dataset = open_dataset(data, split).head(limit)
    if not dataset.labeled:
        err.print(f"note: {data} has images without labels; mIoU is not computed", highlight=False)
    thresholds = thresholds_with(threshold or [], str(thresholds_file) if thresholds_file else None)
    benchmark_results = None
    if benchmark_json:
        import json

        try:
            benchmark_results = json.loads(benchmark_json.read_text())
        except (OSError, ValueError):
            raise DeployError(f"{benchmark_json}: not a readable benchmark JSON", EXIT_BAD_INPUT) from None
    try:
        scale_values = tuple(float(v) for v in scales.split(",")) if scales else (1.0,)
    except ValueError:
        raise DeployError(f"--scales: expected numbers like 0.75,1,1.25, got {scales!r}", EXIT_BAD_INPUT) from None
    protocol = Protocol(crop=crop, stride=stride, flip=flip, scales=scale_values)
    with image_progress() as progress:
        task = progress.add_task(f"verify ({len(runners)} backends)", total=len(dataset))
        report = run_verify(
            dataset, runners, config, thresholds, on_image=lambda i: progress.advance(task), protocol=protocol
        )
    out.print(verify_table(report))
    if report.labeled:
        out.print(per_class_table(report))
    if json_path:
        write_json(json_path, report.to_dict())
        out.print(f"report: {json_path}", highlight=False)
    if report_dir:
        from .report.html_report import collect_examples, write_html, write_markdown

        with spinner("writing the HTML report (re-running the worst images)"):
            examples = collect_examples(dataset, runners, report, config, protocol)
            html_path = write_html(report, examples, config, report_dir / "report.html", benchmark=benchmark_results)
            write_markdown(report, report_dir / "report.md", html_path.name)
        out.print(f"report: {html_path}", highlight=False)
    if not report.passed:
        failed = [f"{b.name}: {', '.join(b.failures)}" for b in report.backends if not b.passed]
        raise CheckFailedError("parity check failed: " + "; ".join(failed))
    out.print("[green]passed[/]")


@app.command()
@guarded
def benchmark(
    ckpt: Annotated[Path | None, typer.Option(help="PyTorch checkpoint backend.")] = None,
    onnx: Annotated[list[Path] | None, typer.Option(help="ONNX Runtime backend(s); repeatable.")] = None,
    engine: Annotated[list[Path] | None, typer.Option(help="TensorRT engine backend(s); repeatable.")] = None,
    image: Annotated[Path | None, typer.Option(help="Input image (default: a bundled scene).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up runs per backend.")] = 3,
    iterations: Annotated[int, typer.Option(min=1, help="Timed runs per backend.")] = 20,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (PyTorch, ONNX Runtime).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
) -> None:
    """Latency per backend: median/p90/p99, throughput, end-to-end vs compute, peak memory, each in its own process."""
    from .data.bundled import sample_image
    from .data.datasets import read_image
    from .evaluate.benchmark import BackendSpec
    from .evaluate.benchmark import benchmark as run_benchmark
    from .files import write_json
    from .report.text import benchmark_table

    specs = [BackendSpec("pytorch", str(ckpt), "pytorch")] if ckpt else []
    specs += [BackendSpec("onnxruntime", str(p), f"onnxruntime:{p.name}") for p in onnx or []]
    specs += [BackendSpec("tensorrt", str(p), f"tensorrt:{p.name}") for p in engine or []]
    if not specs:
        raise DeployError("benchmark needs --ckpt, --onnx and/or --engine", EXIT_BAD_INPUT)
    for spec in specs:
        if not Path(spec.path).is_file():
            raise DeployError(f"{spec.path}: no such file", EXIT_BAD_INPUT)
    picture = read_image(image) if image else sample_image()
    with spinner(f"benchmarking {len(specs)} backend(s): {warmup} warm-up + {iterations} timed runs each"):
        results = run_benchmark(specs, picture, warmup, iterations, threads)
    failed = [r for r in results["backends"] if "error" in r]
    ok = [r for r in results["backends"] if "error" not in r]
    if ok:
        out.print(benchmark_table(ok, results["device"]))
    if json_path:
        write_json(json_path, results)
        out.print(f"results: {json_path}", highlight=False)
    if failed:
        raise DeployError("; ".join(r["error"] for r in failed), failed[0]["exit_code"])


@app.command()
@guarded
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its models and report.")] = Path(
        "danet-deploy-demo"
    ),
    calib_images: Annotated[int, typer.Option(min=8, help="Synthetic calibration images for INT8/FP16.")] = 100,
    variant: Annotated[
        str, typer.Option(help="Bundled model: danet (PAM + CAM) or shuffle (Shuffle Attention + CAM).")
    ] = "danet",
) -> None:
    """The whole pipeline on the bundled model and data: export, simplify, FP16, INT8, benchmark, verify, report."""
    from .data.bundled import DEMO_CHECKPOINTS, DEMO_DATA
    from .data.synthetic import write_calibration_images

    if variant not in DEMO_CHECKPOINTS:
        raise DeployError(f"--variant {variant!r}: choose from {', '.join(DEMO_CHECKPOINTS)}", EXIT_BAD_INPUT)
    checkpoint = DEMO_CHECKPOINTS[variant]

    onnx_path, simplified = workdir / "demo.onnx", workdir / "demo.ort.onnx"
    fp16_path, int8_path = workdir / "demo.fp16.onnx", workdir / "demo.int8.onnx"
    calib = workdir / "calibration"
    out.print(f"[bold]1/6 export[/] {checkpoint.name} -> {onnx_path}")
    export(checkpoint, output=onnx_path)
    out.print(f"[bold]2/6 simplify[/] for ONNX Runtime -> {simplified}")
    _simplify(onnx_path, simplified, target="ort")
    with spinner(f"writing {calib_images} synthetic calibration scenes (the calibration/ split of the generator)"):
        write_calibration_images(calib, calib_images)
    out.print(f"[bold]3/6 FP16[/] -> {fp16_path}")
    quantize(onnx_path, fp16_path, fp16=True, calib=calib, count=min(calib_images, 32))
    out.print(f"[bold]4/6 INT8[/] -> {int8_path}")
    quantize(onnx_path, int8_path, calib=calib, count=calib_images, cache_dir=workdir / "cache")
    models = [onnx_path, simplified, fp16_path, int8_path]
    out.print("[bold]5/6 benchmark[/] PyTorch and every ONNX model on ONNX Runtime CPU")
    benchmark(ckpt=checkpoint, onnx=models, warmup=2, iterations=5, json_path=workdir / "benchmark.json")
    out.print(f"[bold]6/6 verify[/] every backend against PyTorch on {DEMO_DATA}")
    verify(data=DEMO_DATA, ckpt=checkpoint, onnx=models, json_path=workdir / "report.json",
           report_dir=workdir, benchmark_json=workdir / "benchmark.json")  # fmt: skip


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
