"""danet-deploy command line: each command parses its options, calls one `api` function and prints its record."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

from danet_deploy import api
from danet_deploy.artifact import Precision
from danet_deploy.config import check_class_names, parse_dims, parse_shape, parse_size
from danet_deploy.engine.plan import BuildOptions
from danet_deploy.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    INTERRUPTED,
    CheckFailedError,
    DeployError,
)
from danet_deploy.export.torch_export import ExportOptions
from danet_deploy.files import check_output, removed_on_failure, write_json
from danet_deploy.graph.pam import DEFAULT_BLOCK
from danet_deploy.memory_plan import return_large_allocations
from danet_deploy.progress import PeriodicLines
from danet_deploy.progress import Progress as LibraryProgress
from danet_deploy.report.text import (
    benchmark_table,
    engine_audit_line,
    engine_inspect_lines,
    export_summary,
    fp16_lines,
    inspect_tables,
    int8_lines,
    per_class_table,
    plan_lines,
    simplify_lines,
    verify_table,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="From a trained DANet checkpoint to verified ONNX (and TensorRT) inference models.",
)
# Off a terminal (CI logs, pipes) Rich would wrap tables at 80 columns; logs can be wider.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


F = TypeVar("F", bound=Callable[..., Any])


_sigint_seen = False  # set by the SIGINT handler: a library may turn the KeyboardInterrupt into its own error


def _on_sigint(signum: int, frame: Any) -> None:
    global _sigint_seen
    _sigint_seen = True
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, also when a library wrapped it (torch.onnx raises TorchExportError from it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return _sigint_seen


def guarded(fn: F) -> F:
    """One line and a documented exit code for every expected failure; no tracebacks for bad input."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            # A failed or interrupted command leaves none of the files it made; a failed check keeps its reports.
            with removed_on_failure(keep=(CheckFailedError,)):
                result = fn(*args, **kwargs)
                if signal.getsignal(signal.SIGINT) is _on_sigint:
                    # Done and written: a Ctrl-C during the interpreter's teardown must not report a failure.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
            return result
        except DeployError as exc:
            if _sigint_seen:
                raise _exit_interrupted() from None
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise _exit_interrupted() from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _interrupted(exc):
                raise _exit_interrupted() from None
            if os.environ.get("DANET_DEPLOY_DEBUG"):
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            hint = "set DANET_DEPLOY_DEBUG=1 for a traceback"
            err.print(
                f"[red]internal error:[/] {type(exc).__name__}: {first} ({hint})", highlight=False, soft_wrap=True
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def _exit_interrupted() -> typer.Exit:
    err.print(f"[red]{escape(INTERRUPTED)}[/]", highlight=False)
    return typer.Exit(EXIT_INTERRUPTED)


class RichProgress(LibraryProgress):
    """The library's progress as Rich: in a terminal a bar with ETA for counted tasks, a spinner otherwise; in logs
    (stderr not a terminal) plain periodic lines; notes on stderr."""

    def note(self, message: str) -> None:
        err.print(escape(message), highlight=False, soft_wrap=True)

    def show(self, message: str) -> None:
        out.print(message, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        if not err.is_terminal:
            lines = PeriodicLines(description, total, self.note)
            yield lines.update
            lines.finish()
            return
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:  # counted (0: the step sets the total once it knows it)
            columns += [BarColumn(), MofNCompleteColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task(escape(description), total=total)

            def update(advance: int = 1, description: str | None = None, total: int | None = None) -> None:
                progress.update(
                    task, advance=advance, description=escape(description) if description else None, total=total
                )

            yield update


PROGRESS = RichProgress()


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Our warnings (e.g. few calibration images) as one 'warning:' line each, when raised; others dropped."""

    def show(message: Any, category: type[Warning], filename: str, *_: Any, **__: Any) -> None:
        if issubclass(category, UserWarning) and "danet_deploy" in (filename or ""):
            err.print(f"warning: {escape(str(message))}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def _lines(lines: list[str]) -> None:
    for line in lines:
        out.print(escape(line), highlight=False, soft_wrap=True)


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    return parse_dims(text, None, option, "comma-separated positive integers like 4,8,16") if text else None


def _floats3(text: str | None, option: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise DeployError(f"{option}: expected three comma-separated numbers, got {text!r}", EXIT_BAD_INPUT)
    if option == "--std" and min(values) <= 0:
        raise DeployError(f"--std {text}: every standard deviation must be > 0", EXIT_BAD_INPUT)
    return values  # type: ignore[return-value]


def _class_names(text: str | None) -> tuple[tuple[str, ...] | None, Path | None]:
    """--class-names as (names, the file they came from): a file with one name per line, or a,b,c."""
    if text is None:
        return None, None
    path = Path(text)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DeployError(
                f"--class-names {path}: not a readable UTF-8 text file ({type(exc).__name__})", EXIT_BAD_INPUT
            ) from None
    elif "," not in text:  # one name is no segmentation model: a mistyped file name
        raise DeployError(
            f"--class-names {text}: no such file (give a file with one name per line, or a,b,c)", EXIT_BAD_INPUT
        )
    else:
        path, names = None, [n.strip() for n in text.split(",") if n.strip()]
    try:
        check_class_names(tuple(names))
    except ValueError as exc:
        raise DeployError(f"--class-names {text}: {exc}", EXIT_BAD_INPUT) from None
    if not names:
        raise DeployError(f"--class-names: no names in {text!r}", EXIT_BAD_INPUT)
    return tuple(names), path


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
IgnoreUnknownLabelsOpt = Annotated[
    bool, typer.Option(help="Count mask values that are neither a class id nor 255 as ignored (default: an error).")
]
AllowUnlabeledOpt = Annotated[
    bool, typer.Option(help="Evaluate the labeled images of a partly labeled set (default: an error).")
]
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
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Go on when the memory plan's estimated peak exceeds the available memory.")
]


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
    force: ForceOpt = False,
) -> None:
    """Export a checkpoint to ONNX, then check it with onnx.checker and ONNX Runtime vs PyTorch."""
    if (target or attention or group_norm) and not simplify:
        raise DeployError("--target/--attention/--group-norm take effect with --simplify", EXIT_BAD_INPUT)
    size = parse_size(input_size) if input_size else None
    options = ExportOptions(
        input_size=size,
        batch=batch,
        dynamic=dynamic,
        opset=opset,
        argmax=argmax,
        uint8_input=uint8_input,
        atol=atol,
        rtol=rtol,
    )
    names, names_file = _class_names(class_names)
    overrides = {
        "layer4_dilations": _ints(dilations, "--dilations"),
        "align_corners": align_corners,
        "class_names": names,
        "mean": _floats3(mean, "--mean"),
        "std": _floats3(std, "--std"),
    }
    passes = api.SimplifyOptions(
        target=target,
        attention=attention,
        block=block,
        atol=atol,
        rtol=rtol,
        group_norm=group_norm,
        fold_shuffle=fold_shuffle,
        force=force,
    )
    result = api.export(
        ckpt,
        output,
        options,
        layout=layout,
        overrides=overrides,
        image=image,
        simplify=passes if simplify else None,
        force=force,
        option_files=[names_file] if names_file else [],
        progress=PROGRESS,
    )
    _lines(export_summary(result.record))
    if result.simplified:
        _print_simplified(result.simplified)


def _print_simplified(result: api.SimplifyResult) -> None:
    _lines([*simplify_lines(result.report), f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB)"])


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
    force: ForceOpt = False,
) -> None:
    """Simplify the attention graph for a target; every pass is checked against the previous graph."""
    passes = api.SimplifyOptions(
        target=target,
        attention=attention,
        block=block,
        heads=heads,
        atol=atol,
        rtol=rtol,
        group_norm=group_norm,
        fold_shuffle=fold_shuffle,
        force=force,
    )
    _print_simplified(api.simplify_model_file(model, output, passes, PROGRESS))


@app.command()
@guarded
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model, or a TensorRT engine (.engine/.plan/.trt) with sidecar.")],
    target: Annotated[str, typer.Option(help="trt8.6, trt10.3, trt10.14, trt11 or ort.")] = "trt10.3",
    input_size: Annotated[str | None, typer.Option(help="HxW to lint at (required for dynamic models).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the findings as JSON.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when the lint finds errors for the target.")] = False,
) -> None:
    """Op histogram, attention sites and their form, model config, TensorRT readiness lint, memory estimate. For an
    engine: its sidecar's facts and layers per precision (read from the engine too where TensorRT is present)."""
    size = parse_size(input_size) if input_size else None
    result = api.inspect(model, target, size, json_path, PROGRESS)
    if isinstance(result, api.EngineInspectResult):
        _lines(engine_inspect_lines(str(model), result.sidecar, result.live, result.notes))
        if strict and result.live is not None and result.live.failures:
            raise CheckFailedError(f"{model}: {'; '.join(result.live.failures)}")
        return
    for item in inspect_tables(str(model), result.metadata, result.lint, result.precision, result.kernels):
        out.print(item)
    if strict and result.lint.errors:
        raise CheckFailedError(
            f"{model}: {len(result.lint.errors)} TensorRT readiness error(s) for {result.lint.target}"
        )


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
    target: Annotated[
        str,
        typer.Option(help="INT8 for tensorrt (Q/DQ for TensorRT engines) or ort (ONNX Runtime CPU integer kernels)."),
    ] = "tensorrt",
    cpu: Annotated[
        str | None,
        typer.Option(help="With --target ort: CPU to quantize for, auto (this one), x86-vnni, x86 or arm64."),
    ] = None,
    ignore_unknown_labels: IgnoreUnknownLabelsOpt = False,
    allow_unlabeled: AllowUnlabeledOpt = False,
    force: ForceOpt = False,
) -> None:
    """FP16 or INT8 ONNX from an FP32 ONNX, measured against it on calibration images. INT8 is a Q/DQ model for
    TensorRT by default, or with --target ort one that ONNX Runtime's CPU provider runs with integer kernels."""
    options = api.QuantizeOptions(
        calib=calib,
        plain=plain,
        method=method,
        count=count,
        seed=seed,
        split=split,
        max_miou_drop=max_miou_drop,
        data=data,
        exclude=tuple(exclude or ()),
        recalibrate=recalibrate,
        cache_dir=cache_dir,
        target=target,
        cpu=cpu,
        ignore_unknown_labels=ignore_unknown_labels,
        allow_unlabeled=allow_unlabeled,
        force=force,
    )
    with warnings_as_lines():
        result = api.quantize(model, output, Precision.FP16 if fp16 else Precision.INT8, options, PROGRESS)
    _lines(fp16_lines(result.record) if fp16 else int8_lines(result.record, result.budget))


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
    network_onnx: Annotated[
        Path | None, typer.Option(help="Keep the prepared FP16/Q/DQ network ONNX here (a new file; default: scratch).")
    ] = None,
) -> None:
    """Build a TensorRT engine (and model.engine.json) through Polygraphy; --dry-run shows the plan."""
    if fp16 and int8:
        raise DeployError("choose one of --fp16 and --int8", EXIT_BAD_INPUT)
    shapes = {
        name: parse_shape(text, f"--{name.replace('_', '-')}") if text else None
        for name, text in (("min_shape", min_shape), ("opt_shape", opt_shape), ("max_shape", max_shape))
    }
    precision = Precision.INT8 if int8 else Precision.FP16 if fp16 else Precision.FP32
    options = BuildOptions(
        precision=precision,
        min_shape=shapes["min_shape"],
        opt_shape=shapes["opt_shape"],
        max_shape=shapes["max_shape"],
        workspace_mib=workspace,
        timing_cache=str(timing_cache) if timing_cache else None,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        version_compatible=version_compatible,
        hardware_compat=hardware_compat,
        builder_opt_level=builder_opt_level,
        calib=str(calib) if calib else None,
        network_onnx=str(network_onnx) if network_onnx else None,
    )
    if dry_run:
        result = api.plan_engine(model, options, tensorrt_version, dry_run=True)
        for note in result.notes:
            err.print(f"note: {note}", highlight=False)
        _lines(plan_lines(result.plan))
        if plan_json:
            write_json(check_output(plan_json, [model]), result.plan.to_dict())
        return
    result = api.build_engine(model, output, options, tensorrt_version, PROGRESS)
    _lines(plan_lines(result.plan))
    s = result.sidecar
    built = f"{s.build_seconds:.0f} s, {s.gpu_name}, TensorRT {s.tensorrt_version}"
    _lines([f"wrote {output} and {output}.json ({built})", engine_audit_line(str(output), s)])


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
    ignore_unknown_labels: IgnoreUnknownLabelsOpt = False,
    allow_unlabeled: AllowUnlabeledOpt = False,
    force: ForceOpt = False,
) -> None:
    """Evaluate backends (PyTorch, ONNX Runtime, TensorRT) on the same images: mIoU, per-class IoU, parity, NaN/Inf.

    Exit code 0 when every backend is within tolerance of the reference, 1 when not, 2 on bad input.
    """
    try:
        scale_values = tuple(float(v) for v in scales.split(",")) if scales else (1.0,)
    except ValueError:
        raise DeployError(f"--scales: expected numbers like 0.75,1,1.25, got {scales!r}", EXIT_BAD_INPUT) from None
    options = api.VerifyOptions(
        split=split,
        limit=limit,
        thresholds=tuple(threshold or ()),
        thresholds_file=thresholds_file,
        crop=crop,
        stride=stride,
        flip=flip,
        scales=scale_values,
        threads=threads,
        layout=layout,
        pytorch_fp16=pytorch_fp16,
        ignore_unknown_labels=ignore_unknown_labels,
        allow_unlabeled=allow_unlabeled,
        force=force,
    )
    result = api.verify(
        data,
        ckpt,
        onnx or [],
        engine or [],
        options,
        json_path=json_path,
        report_dir=report_dir,
        benchmark_json=benchmark_json,
        progress=PROGRESS,
    )
    _print_verify(result)
    api.check_verify_passed(result)
    out.print("[green]passed[/]")


def _print_verify(result: api.VerifyResult) -> None:
    out.print(verify_table(result.report))
    _lines([engine_audit_line(name, sidecar) for name, sidecar in result.engines])
    for b in result.report.backends:
        if b.evaluated not in ("as written", "as trained"):
            out.print(escape(f"{b.name} evaluated with {b.evaluated}"), highlight=False, soft_wrap=True)
    if result.report.labeled:
        out.print(per_class_table(result.report))
    for note in result.report.notes:
        out.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    for path in (result.json_path, result.html_path):
        if path is not None:
            out.print(f"report: {escape(str(path))}", highlight=False)


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
    force: ForceOpt = False,
) -> None:
    """Latency per backend: median/p90/p99, throughput, end-to-end vs compute, peak memory, each in its own process."""
    result = api.benchmark(
        ckpt,
        onnx or [],
        engine or [],
        image=image,
        warmup=warmup,
        iterations=iterations,
        threads=threads,
        json_path=json_path,
        force=force,
        progress=PROGRESS,
    )
    _print_benchmark(result)


def _print_benchmark(result: api.BenchmarkResult) -> None:
    if result.ok:
        out.print(benchmark_table(result.ok, result.results["device"]))
    if result.json_path:
        out.print(f"results: {escape(str(result.json_path))}", highlight=False)
    if result.failed:
        raise DeployError("; ".join(r["error"] for r in result.failed), result.failed[0]["exit_code"])


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
    with warnings_as_lines():
        result = api.demo(workdir, variant, calib_images, PROGRESS)
    _print_benchmark(result.benchmark)
    _print_verify(result.verify)
    api.check_verify_passed(result.verify)
    out.print("[green]passed[/]")


def main() -> None:
    """The `danet-deploy` entry point: usage errors as one line (exit 2), Ctrl-C as exit 130 in every stage."""
    signal.signal(signal.SIGINT, _on_sigint)
    return_large_allocations()
    try:
        code = app(standalone_mode=False)
    except (typer.Exit, typer.Abort) as exc:
        code = exc.exit_code if isinstance(exc, typer.Exit) else _exit_interrupted().exit_code
    except KeyboardInterrupt:
        code = _exit_interrupted().exit_code
    except Exception as exc:
        # Click's usage errors (vendored by newer Typer, so matched by their interface): one line, not a box.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # the help text
        else:
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            err.print(
                f"[red]error:[/] {escape(where + exc.format_message())} (see --help)", highlight=False, soft_wrap=True
            )
        code = EXIT_BAD_INPUT
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
