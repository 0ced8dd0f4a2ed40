"""danet-deploy command line: each command parses its flags into the step's typed options, calls one `api` step
and prints its result.

Only light modules are imported here (the option types, parsers, errors): the steps load torch, ONNX and ONNX
Runtime when a command runs, so `--help` and `--version` answer at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import inspect as pyinspect
import logging
import math
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

from danet_deploy.config import check_class_names, parse_dims, parse_shape, parse_size
from danet_deploy.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    CheckFailedError,
    DeployError,
    OptionError,
    user_error,
)
from danet_deploy.files import check_output, removed_on_failure, write_json
from danet_deploy.options import (
    BenchmarkOptions,
    BudgetOptions,
    ExportOptions,
    Fp16Options,
    InspectOptions,
    Int8Options,
    ModelOverrides,
    SimplifyOptions,
)
from danet_deploy.progress import PeriodicLines
from danet_deploy.progress import Progress as LibraryProgress
from danet_deploy.signals import ignore_termination, install_termination_handlers, interruption
from danet_deploy.version import __version__

if TYPE_CHECKING:
    from danet_deploy import api

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: full option names and wrapped help text at 80 columns (Rich's panels truncate names).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="From a trained DANet checkpoint to verified ONNX (and TensorRT) inference models.",
)
# Off a terminal (CI logs, pipes) Rich would wrap tables at 80 columns; logs can be wider.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

F = TypeVar("F", bound=Callable[..., Any])

# Option fields whose flag is not `--` + the field name with dashes (see OptionError).
FLAG_OF_FIELD = {
    "layer4_dilations": "--dilations",
    "thresholds": "--threshold",
    "workspace_mib": "--workspace",
    "image": "--image",
    "data": "--data",
}


def one_line(text: str) -> str:
    """A message as exactly one printable line: control characters (newlines from file names or metadata among
    them) shown escaped, so no fake lines can be injected into the output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def flag_message(exc: DeployError) -> str:
    """The error's message, an option error's field shown as the flag that set it."""
    if isinstance(exc, OptionError):
        return exc.as_flag(FLAG_OF_FIELD.get(exc.field, "--" + exc.field.replace("_", "-")))
    return str(exc)


class Verbosity(enum.IntEnum):
    QUIET = 0  # results and errors only
    NORMAL = 1  # + notes and progress
    VERBOSE = 2  # + the libraries' log lines (INFO) and tracebacks of internal errors


_sigint_seen = False  # set by the SIGINT handler: a library may turn the KeyboardInterrupt into its own error


def _on_sigint(signum: int, frame: Any) -> None:
    global _sigint_seen
    _sigint_seen = True
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt


def _interrupted(exc: BaseException | None) -> bool:
    """Ctrl-C, also when a library wrapped it (torch.onnx raises TorchExportError from it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return _sigint_seen


def _verbosity_parameters() -> list[pyinspect.Parameter]:
    kind = pyinspect.Parameter.KEYWORD_ONLY
    verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Also show the libraries' log lines.")]
    quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Only results and errors (no notes, no progress).")]
    return [
        pyinspect.Parameter("verbose", kind, default=False, annotation=verbose),
        pyinspect.Parameter("quiet", kind, default=False, annotation=quiet),
    ]


def guarded(fn: F) -> F:
    """Every command: -v/-q, one line and a documented exit code for every expected failure (no tracebacks for bad
    input), Ctrl-C as one line and exit 130, and none of the files it made left behind when it fails."""

    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: bool = False, quiet: bool = False, **kwargs: Any) -> Any:
        if verbose and quiet:
            raise _usage_error("choose one of -v/--verbose and -q/--quiet")
        PROGRESS.verbosity = Verbosity.VERBOSE if verbose else Verbosity.QUIET if quiet else Verbosity.NORMAL
        if verbose:
            logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
        try:
            from danet_deploy.memory_plan import return_large_allocations  # loads torch: Ctrl-C is handled here

            return_large_allocations()
            # A failed or interrupted command leaves none of the files it made; a failed check keeps its reports.
            with removed_on_failure(keep=(CheckFailedError,)):
                result = fn(*args, **kwargs)
                if signal.getsignal(signal.SIGINT) is _on_sigint:
                    # Done and written: a Ctrl-C during the interpreter's teardown must not report a failure.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    ignore_termination()
            return result
        except DeployError as exc:
            if _sigint_seen:
                raise _exit_interrupted() from None
            err.print(f"[red]error:[/] {escape(one_line(flag_message(exc)))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise _exit_interrupted() from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _interrupted(exc):
                raise _exit_interrupted() from None
            if (error := user_error(exc)) is not None:  # a full disk, a symbolic link loop: the file's problem
                err.print(f"[red]error:[/] {escape(one_line(str(error)))}", highlight=False, soft_wrap=True)
                raise typer.Exit(error.exit_code) from None
            if verbose or os.environ.get("DANET_DEPLOY_DEBUG"):
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            hint = "run with -v or DANET_DEPLOY_DEBUG=1 for a traceback"
            message = one_line(f"{type(exc).__name__}: {first} ({hint})")
            err.print(f"[red]internal error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    # Typer reads the parameters from the signature: the command's own plus -v/-q, which only the wrapper takes.
    signature = pyinspect.signature(fn, eval_str=True)
    params = [p for p in signature.parameters.values() if p.kind is not pyinspect.Parameter.VAR_KEYWORD]
    setattr(wrapper, "__signature__", signature.replace(parameters=[*params, *_verbosity_parameters()]))  # noqa: B010
    delattr(wrapper, "__wrapped__")  # Typer would read the command's own signature through it
    return wrapper  # type: ignore[return-value]


def _exit_interrupted() -> typer.Exit:
    message, code = interruption()  # Ctrl-C: 130; SIGTERM, SIGHUP: 143, 129
    err.print(f"[red]{escape(message)}[/]", highlight=False)
    return typer.Exit(code)


def _usage_error(message: str) -> DeployError:
    return DeployError(message, EXIT_BAD_INPUT)


class RichProgress(LibraryProgress):
    """The library's progress as Rich: in a terminal a bar with ETA for counted tasks, a spinner otherwise; in logs
    (stderr not a terminal) plain periodic lines; notes on stderr. Quiet: neither notes nor progress."""

    verbosity = Verbosity.NORMAL

    def note(self, message: str) -> None:
        if self.verbosity >= Verbosity.NORMAL:
            err.print(escape(message), highlight=False, soft_wrap=True)

    def show(self, message: str) -> None:
        out.print(message, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        if self.verbosity < Verbosity.NORMAL:
            yield lambda *args, **kwargs: None
            return
        if not err.is_terminal:
            lines = PeriodicLines(description, total, self.note, heartbeat=True)
            try:
                yield lines.update
            except BaseException:
                lines.stop()
                raise
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
            err.print(f"warning: {escape(one_line(str(message)))}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def _lines(lines: list[str]) -> None:
    for line in lines:
        out.print(escape(line), highlight=False, soft_wrap=True)


def _jsonable(value: Any) -> Any:
    """A result record as JSON data: dataclasses as objects, paths and enums as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _write_record(json_path: Path | None, record: Any, inputs: list[Path | None]) -> None:
    if json_path is not None:
        write_json(check_output(json_path, inputs), _jsonable(record))
        out.print(f"record: {escape(str(json_path))}", highlight=False)


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    return parse_dims(text, None, option, "comma-separated positive integers like 4,8,16") if text else None


def _floats3(text: str | None, option: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise _usage_error(f"{option}: expected three comma-separated numbers, got {text!r}")
    return values[0], values[1], values[2]


def _class_names(text: str | None) -> tuple[tuple[str, ...] | None, Path | None]:
    """--class-names as (names, the file they came from): a file with one name per line, or a,b,c."""
    if text is None:
        return None, None
    path: Path | None = Path(text)
    if path is not None and path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise _usage_error(f"--class-names {path}: not a readable UTF-8 text file ({type(exc).__name__})") from None
    elif "," not in text:  # one name is no segmentation model: a mistyped file name
        raise _usage_error(f"--class-names {text}: no such file (give a file with one name per line, or a,b,c)")
    else:
        path, names = None, [n.strip() for n in text.split(",") if n.strip()]
    try:
        check_class_names(tuple(names))
    except ValueError as exc:
        raise _usage_error(f"--class-names {text}: {exc}") from None
    if not names:
        raise _usage_error(f"--class-names: no names in {text!r}")
    return tuple(names), path


def _default_output(output: Path | None, source: Path, tag: str | None, suffix: str) -> Path:
    """-o, else the input's name with `tag` (see `artifact.output_beside`), said on stderr."""
    if output is not None:
        return output
    from danet_deploy.artifact import output_beside

    chosen = output_beside(source, tag, suffix)
    PROGRESS.note(f"output: {chosen} (named after the input; -o chooses another)")
    return chosen


JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the result record as JSON.")]
OutputOpt = Annotated[
    Path | None, typer.Option("-o", "--output", help="File to write (default: named after the input, beside it).")
]
TargetOpt = Annotated[
    str | None, typer.Option(help="Deployment target: trt8.6, trt10.3, trt10.14, trt11, ort (sets the PAM form).")
]
AttentionOpt = Annotated[
    str | None, typer.Option(help="PAM form: naive, mha, onnx-attention, blocked (default: chosen from --target).")
]
BlockOpt = Annotated[int, typer.Option(min=1, metavar="N", help="Query block size of the blocked PAM form.")]
GroupNormOpt = Annotated[
    str | None,
    typer.Option(help="GroupNorm form (Shuffle Attention): group-normalization, decomposed (default: from --target)."),
]
KeepShuffleOpt = Annotated[
    bool, typer.Option("--keep-shuffle", help="Keep channel shuffles as one reshape/transpose (default: folded).")
]
LayoutOpt = Annotated[str | None, typer.Option(help="Checkpoint layout: ours, official, mmseg (default: detected).")]
IgnoreUnknownLabelsOpt = Annotated[
    bool,
    typer.Option(
        "--ignore-unknown-labels",
        help="Count mask values that are neither a class id nor 255 as ignored (not an error).",
    ),
]
AllowUnlabeledOpt = Annotated[
    bool, typer.Option("--allow-unlabeled", help="Evaluate the labeled images of a partly labeled set.")
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


def _print_version(value: bool) -> None:
    if value:
        out.print(f"danet-deploy {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _app_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """From a trained DANet checkpoint to verified ONNX (and TensorRT) inference models."""


@app.command()
@guarded
def export(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint (.pth): ours, official DANet or MMSegmentation.")],
    output: OutputOpt = None,
    input_size: Annotated[
        str | None, typer.Option(metavar="HxW", help="e.g. 512x1024 (default: model config).")
    ] = None,
    batch: Annotated[
        int, typer.Option(min=1, metavar="N", help="Batch size of a static export.")
    ] = ExportOptions.batch,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="Dynamic batch, height and width.")] = False,
    opset: Annotated[
        int, typer.Option(metavar="N", help="ONNX opset; >= 18 uses the dynamo exporter, < 18 the legacy one.")
    ] = ExportOptions.opset,
    argmax: Annotated[bool, typer.Option("--argmax", help="Add an int32 'labels' output (N x H x W).")] = False,
    uint8_input: Annotated[
        bool, typer.Option("--uint8-input", help="Bake preprocessing: input 'image' is uint8 N x H x W x 3 RGB.")
    ] = False,
    rgb255_input: Annotated[
        bool,
        typer.Option(
            "--rgb255-input", help="Input float N x 3 x H x W RGB 0-255, normalized inside (DeepStream's exact form)."
        ),
    ] = False,
    image: Annotated[Path | None, typer.Option(help="Real image for the parity check (default: bundled).")] = None,
    atol: Annotated[float, typer.Option(help="Parity tolerance: atol + rtol * max|logit|.")] = ExportOptions.atol,
    rtol: Annotated[float, typer.Option(help="Parity tolerance, relative part.")] = ExportOptions.rtol,
    layout: LayoutOpt = None,
    dilations: DilationsOpt = None,
    align_corners: AlignOpt = None,
    class_names: ClassNamesOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    simplify: Annotated[bool, typer.Option("--simplify", help="Run the graph passes (see `simplify`).")] = False,
    target: TargetOpt = None,
    attention: AttentionOpt = None,
    block: BlockOpt = SimplifyOptions.block,
    group_norm: GroupNormOpt = None,
    keep_shuffle: KeepShuffleOpt = False,
    force: ForceOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Export a checkpoint to ONNX, then check it with onnx.checker and ONNX Runtime vs PyTorch."""
    from danet_deploy import api
    from danet_deploy.report.text import export_summary

    if (target or attention or group_norm) and not simplify:
        raise _usage_error("--target/--attention/--group-norm take effect with --simplify")
    names, names_file = _class_names(class_names)
    overrides = ModelOverrides(
        layer4_dilations=_ints(dilations, "--dilations"),  # type: ignore[arg-type]
        align_corners=align_corners,
        class_names=names,
        mean=_floats3(mean, "--mean"),
        std=_floats3(std, "--std"),
        class_names_file=names_file,
    )
    options = ExportOptions(
        input_size=parse_size(input_size) if input_size else None,
        batch=batch,
        dynamic=dynamic,
        opset=opset,
        argmax=argmax,
        uint8_input=uint8_input,
        rgb255_input=rgb255_input,
        atol=atol,
        rtol=rtol,
        image=image,
        layout=layout,
        model=overrides,
        force=force,
    )
    passes = SimplifyOptions(
        target=target,
        attention=attention,
        block=block,
        atol=atol,
        rtol=rtol,
        group_norm=group_norm,
        fold_shuffle=not keep_shuffle,
        force=force,
    )
    output = _default_output(output, ckpt, None, ".onnx")
    result = api.export(ckpt, output, options, passes if simplify else None, PROGRESS)
    _lines(export_summary(result.record))
    if result.simplified:
        _print_simplified(result.simplified)
    _write_record(json_path, result, [ckpt, output, image, names_file])


def _print_simplified(result: api.SimplifyResult) -> None:
    from danet_deploy.report.text import simplify_lines

    _lines([*simplify_lines(result.report), f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB)"])


@app.command()
@guarded
def simplify(
    model: Annotated[Path, typer.Argument(help="ONNX model (from `danet-deploy export`).")],
    output: OutputOpt = None,
    target: TargetOpt = None,
    attention: AttentionOpt = None,
    block: BlockOpt = SimplifyOptions.block,
    heads: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="PAM value heads for mha/onnx-attention (default C/64).")
    ] = None,
    atol: Annotated[float, typer.Option(help="Per-pass tolerance: atol + rtol * max|logit|.")] = SimplifyOptions.atol,
    rtol: Annotated[float, typer.Option(help="Per-pass tolerance, relative part.")] = SimplifyOptions.rtol,
    group_norm: GroupNormOpt = None,
    keep_shuffle: KeepShuffleOpt = False,
    force: ForceOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Simplify the attention graph for a target; every pass is checked against the previous graph."""
    from danet_deploy import api

    passes = SimplifyOptions(
        target=target,
        attention=attention,
        block=block,
        heads=heads,
        atol=atol,
        rtol=rtol,
        group_norm=group_norm,
        fold_shuffle=not keep_shuffle,
        force=force,
    )
    output = _default_output(output, model, target or "simplified", ".onnx")
    result = api.simplify_model_file(model, output, passes, PROGRESS)
    _print_simplified(result)
    _write_record(json_path, result, [model, output])


@app.command()
@guarded
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model, or a TensorRT engine (.engine/.plan/.trt) with sidecar.")],
    target: Annotated[str, typer.Option(help="trt8.6, trt10.3, trt10.14, trt11 or ort.")] = InspectOptions.target,
    input_size: Annotated[str | None, typer.Option(metavar="HxW", help="Size to lint at (dynamic models).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the findings as JSON.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when the lint finds errors for the target.")] = False,
) -> None:
    """Op histogram, attention sites and their form, model config, TensorRT readiness lint, memory estimate. For an
    engine: its sidecar's facts and layers per precision (read from the engine too where TensorRT is present)."""
    from danet_deploy import api
    from danet_deploy.report.text import engine_inspect_lines, inspect_tables

    options = InspectOptions(target=target, input_size=parse_size(input_size) if input_size else None)
    result = api.inspect(model, options, json_path, PROGRESS)
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


def _only_with(flag: str, given: dict[str, object]) -> None:
    """Flags that apply to one precision only: given with the other one, they would be silently ignored."""
    extra = [name for name, value in given.items() if value not in (None, False, ())]
    if extra:
        raise _usage_error(f"{', '.join(extra)} apply to {flag} only")


@app.command()
@guarded
def quantize(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model (from `danet-deploy export`).")],
    output: OutputOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 ONNX (FP32 I/O, overflow-prone parts kept FP32).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 Q/DQ ONNX calibrated on --calib.")] = False,
    calib: Annotated[
        Path | None, typer.Option(help="Calibration images (folder or Cityscapes root); required for --int8.")
    ] = None,
    plain: Annotated[bool, typer.Option("--plain", help="With --fp16: plain cast, no protection.")] = False,
    method: Annotated[str | None, typer.Option(help="INT8 calibration: entropy (default), max, percentile.")] = None,
    count: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Calibration images to use (default: INT8 500, FP16 32).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the calibration sample.")] = Int8Options.seed,
    split: Annotated[str, typer.Option(help="Cityscapes split for calibration.")] = Int8Options.split,
    max_miou_drop: Annotated[
        float | None,
        typer.Option(help="INT8: keep the most sensitive layers FP32 until the mIoU drop fits (needs --data)."),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Labeled data for --max-miou-drop.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Node name or regex to keep FP32; repeatable.")] = None,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="INT8: ignore the calibration cache.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Calibration cache (default ~/.cache/danet-deploy).")] = None,
    target: Annotated[
        str | None,
        typer.Option(help="INT8 for tensorrt (default: Q/DQ for TensorRT) or ort (ONNX Runtime CPU integer kernels)."),
    ] = None,
    cpu: Annotated[
        str | None,
        typer.Option(help="With --target ort: CPU to quantize for, auto (this one), x86-vnni, x86 or arm64."),
    ] = None,
    ignore_unknown_labels: IgnoreUnknownLabelsOpt = False,
    allow_unlabeled: AllowUnlabeledOpt = False,
    force: ForceOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """FP16 (--fp16) or INT8 (--int8 --calib DIR) ONNX from an FP32 ONNX, measured against it on calibration images.
    INT8 is a Q/DQ model for TensorRT by default, or with --target ort one that ONNX Runtime's CPU provider runs with
    integer kernels."""
    from danet_deploy import api
    from danet_deploy.report.text import fp16_lines, int8_lines

    if fp16 == int8:
        raise _usage_error("choose one of --fp16 and --int8 (with --calib DIR)")
    options: Fp16Options | Int8Options
    if fp16:
        int8_only = {"--method": method, "--max-miou-drop": max_miou_drop, "--data": data, "--target": target}
        _only_with("--int8", {**int8_only, "--recalibrate": recalibrate, "--cache-dir": cache_dir, "--cpu": cpu})
        options = Fp16Options(
            calib=calib, plain=plain, count=count, seed=seed, split=split, exclude=tuple(exclude or ()), force=force
        )
        tag = "fp16"
    else:
        _only_with("--fp16", {"--plain": plain})
        if calib is None:
            raise _usage_error("--int8 needs --calib DIR (calibration images)")
        if (max_miou_drop is None) != (data is None):
            raise _usage_error("--max-miou-drop and --data go together (the budget is measured on labeled data)")
        budget = None
        if max_miou_drop is not None and data is not None:
            budget = BudgetOptions(
                max_miou_drop=max_miou_drop,
                data=data,
                ignore_unknown_labels=ignore_unknown_labels,
                allow_unlabeled=allow_unlabeled,
            )
        options = Int8Options(
            calib=calib,
            target=target or Int8Options.target,
            method=method or Int8Options.method,
            count=count,
            seed=seed,
            split=split,
            exclude=tuple(exclude or ()),
            cpu=cpu,
            recalibrate=recalibrate,
            cache_dir=cache_dir,
            budget=budget,
            force=force,
        )
        tag = "int8.ort" if options.target_name == "onnxruntime" else "int8"
    output = _default_output(output, model, tag, ".onnx")
    with warnings_as_lines():
        result = api.quantize(model, output, options, PROGRESS)
    if isinstance(options, Fp16Options):
        _lines(fp16_lines(result.record))
    else:
        _lines(int8_lines(result.record, result.budget))
    _write_record(json_path, result, [model, output, calib, data])


@app.command("build-engine")
@guarded
def build_engine(
    model: Annotated[Path, typer.Argument(help="ONNX model (FP32 from `export`, or an FP16 / Q/DQ ONNX).")],
    output: OutputOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine (path chosen for the TensorRT version).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from a Q/DQ ONNX (made from --calib).")] = False,
    calib: Annotated[Path | None, typer.Option(help="Calibration images for --int8 (see calibration/).")] = None,
    min_shape: Annotated[str | None, typer.Option(help="Profile min, e.g. 1x3x512x1024 (default: model).")] = None,
    opt_shape: Annotated[str | None, typer.Option(help="Profile opt (default: min).")] = None,
    max_shape: Annotated[str | None, typer.Option(help="Profile max (default: opt).")] = None,
    workspace: Annotated[int | None, typer.Option(min=1, help="Workspace limit in MiB.")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache to load and update.")] = None,
    dla_core: Annotated[int | None, typer.Option(min=0, help="Build for this DLA core (Jetson Orin).")] = None,
    gpu_fallback: Annotated[
        bool, typer.Option("--gpu-fallback", help="With --dla-core: let unsupported layers run on the GPU.")
    ] = False,
    version_compatible: Annotated[
        bool, typer.Option("--version-compatible", help="Engine runs on later TensorRT of the same major.")
    ] = False,
    hardware_compat: Annotated[str | None, typer.Option(help="ampere+ or same-cc: engine runs on other GPUs.")] = None,
    builder_opt_level: Annotated[int | None, typer.Option(help="Builder optimization level 0-5.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the build plan; needs no TensorRT.")] = False,
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
    """Build a TensorRT engine (and its .json sidecar) through Polygraphy; --dry-run shows the plan."""
    from danet_deploy import api
    from danet_deploy.artifact import Precision
    from danet_deploy.engine.plan import BuildOptions
    from danet_deploy.report.text import engine_audit_line, plan_lines

    if fp16 and int8:
        raise _usage_error("choose one of --fp16 and --int8")
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
    output = _default_output(output, model, None if precision is Precision.FP32 else precision.value, ".engine")
    result = api.build_engine(model, output, options, tensorrt_version, PROGRESS)
    _lines(plan_lines(result.plan))
    s = result.sidecar
    assert s is not None  # build_engine returns the built engine's sidecar
    built = f"{s.build_seconds:.0f} s, {s.gpu_name}, TensorRT {s.tensorrt_version}"
    _lines([f"wrote {output} and {output}.json ({built})", engine_audit_line(str(output), s)])


@app.command()
@guarded
def verify(
    data: Annotated[Path, typer.Option(help="Cityscapes root, images/ + masks/ folders, or an image folder.")],
    ckpt: Annotated[Path | None, typer.Option(help="PyTorch checkpoint: the reference backend.")] = None,
    onnx: Annotated[list[Path] | None, typer.Option(help="ONNX model(s) run with ONNX Runtime; repeatable.")] = None,
    engine: Annotated[list[Path] | None, typer.Option(help="TensorRT engine(s) with sidecar; repeatable.")] = None,
    pytorch_fp16: Annotated[
        bool, typer.Option("--pytorch-fp16", help="Also run the checkpoint in FP16 on a CUDA GPU.")
    ] = False,
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
    flip: Annotated[bool, typer.Option("--flip", help="Average with the horizontally flipped image.")] = False,
    scales: Annotated[str | None, typer.Option(help="Multi-scale, e.g. 0.75,1,1.25 (logits averaged).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = None,
    layout: LayoutOpt = None,
    benchmark_json: Annotated[
        Path | None, typer.Option(help="Benchmark results (`benchmark --json`) to chart in the report.")
    ] = None,
    ignore_unknown_labels: IgnoreUnknownLabelsOpt = False,
    allow_unlabeled: AllowUnlabeledOpt = False,
    force: ForceOpt = False,
    locate: Annotated[
        bool,
        typer.Option(
            "--locate",
            help="Compare each FP16/INT8 backend's layers with the FP32 ONNX's and print where the error jumps "
            "(done anyway for a failed one).",
        ),
    ] = False,
) -> None:
    """Evaluate backends (PyTorch, ONNX Runtime, TensorRT) on the same images: mIoU, per-class IoU, parity, NaN/Inf.

    The FP32 logit tolerance is derived from the reference's own FP32 rounding (a float64 run on the first image);
    the thresholds in force and where each came from are printed and written in every report.
    Exit code 0 when every backend is within tolerance of the reference, 1 when not, 2 on bad input.
    """
    from danet_deploy import api

    try:
        scale_values = tuple(float(v) for v in scales.split(",")) if scales else (1.0,)
    except ValueError:
        raise _usage_error(f"--scales: expected numbers like 0.75,1,1.25, got {scales!r}") from None
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
        locate=locate,
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
    from danet_deploy.report.text import (
        engine_audit_line,
        failure_lines,
        locate_lines,
        per_class_table,
        threshold_table,
        verify_table,
    )

    out.print(verify_table(result.report))
    _lines(failure_lines(result.report))
    _lines([engine_audit_line(name, sidecar) for name, sidecar in result.engines])
    for b in result.report.backends:
        if b.evaluated not in ("as written", "as trained"):
            out.print(escape(f"{b.name} evaluated with {b.evaluated}"), highlight=False, soft_wrap=True)
    if result.report.labeled:
        out.print(per_class_table(result.report))
    out.print(threshold_table(result.report))
    _lines(locate_lines(result.report))
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
    warmup: Annotated[
        int, typer.Option(min=0, metavar="N", help="Warm-up runs per backend.")
    ] = BenchmarkOptions.warmup,
    iterations: Annotated[
        int, typer.Option(min=1, metavar="N", help="Timed runs per backend.")
    ] = BenchmarkOptions.iterations,
    threads: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="CPU threads (PyTorch, ONNX Runtime).")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    force: ForceOpt = False,
) -> None:
    """Latency per backend: median/p90/p99, throughput, end-to-end vs compute, peak memory, each in its own process."""
    from danet_deploy import api

    options = BenchmarkOptions(image=image, warmup=warmup, iterations=iterations, threads=threads, force=force)
    result = api.benchmark(ckpt, onnx or [], engine or [], options, json_path=json_path, progress=PROGRESS)
    _print_benchmark(result)


def _print_benchmark(result: api.BenchmarkResult) -> None:
    from danet_deploy.report.text import benchmark_table

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
    calib_images: Annotated[int, typer.Option(min=8, metavar="N", help="Synthetic calibration images.")] = 100,
    variant: Annotated[
        str, typer.Option(help="Bundled model: danet (PAM + CAM) or shuffle (Shuffle Attention + CAM).")
    ] = "danet",
) -> None:
    """The whole pipeline on the bundled model and data: export, simplify, FP16, INT8, benchmark, verify, report."""
    from danet_deploy import api

    with warnings_as_lines():
        result = api.demo(workdir, variant, calib_images, PROGRESS)
    _print_benchmark(result.benchmark)
    _print_verify(result.verify)
    api.check_verify_passed(result.verify)
    out.print("[green]passed[/]")


# --- using the deployed model: predict, deploy (issue 24) -------------------------------------------------------


@app.command()
@guarded
def predict(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.pth), ONNX (FP32/FP16/INT8) or TensorRT engine.")],
    sources: Annotated[list[str], typer.Argument(help="Images, folders, globs ('imgs/*.jpg') and videos.")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Folder for the label maps and overlays.")],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write class fractions and times per image / frame.")
    ] = None,
    mode: Annotated[str, typer.Option(help="whole (the image at once) or slide (model-size windows).")] = "whole",
    crop: Annotated[
        int | None, typer.Option(help="--mode slide, dynamic models: window side (static: the model's size).")
    ] = None,
    stride: Annotated[int | None, typer.Option(help="--mode slide: window step (default: 2/3 of the window).")] = None,
    labels: Annotated[bool, typer.Option("--labels", help="Videos: also write each frame's label map.")] = False,
    alpha: Annotated[float, typer.Option(help="Overlay: weight of the class colours (0-1).")] = 0.5,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (PyTorch, ONNX Runtime).")] = None,
    layout: LayoutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Segment images and videos: OUTDIR/<name>.png (class ids, palette PNG), <name>.overlay.jpg, <clip>.overlay.mp4."""
    from danet_deploy import api

    segmenter = api.SegmenterOptions(
        mode=mode, crop=crop, stride=stride, alpha=alpha, threads=threads, layout=layout, force=force
    )
    options = api.PredictOptions(segmenter=segmenter, video_labels=labels)
    result = api.predict(model, sources, outdir, options, json_path=json_path, progress=PROGRESS)
    count = result.predictions
    rate = count / result.seconds if result.seconds else 0.0
    out.print(
        escape(
            f"{count} prediction(s) from {len(result.items)} source(s) in {result.seconds:.1f} s ({rate:.2f}/s) "
            f"with {result.model['backend']} ({result.model['precision']}); outputs in {outdir}"
        ),
        highlight=False,
        soft_wrap=True,
    )
    if result.json_path:
        out.print(f"results: {escape(str(result.json_path))}", highlight=False)


deploy_app = typer.Typer(no_args_is_help=True, help="Package a model for a serving runtime: Triton, DeepStream.")
app.add_typer(deploy_app, name="deploy")


def _print_deployed(result: Any) -> None:
    _lines([f"wrote {path}" for path in result.files])
    for note in result.notes:
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)


@deploy_app.command("triton")
@guarded
def deploy_triton(
    model: Annotated[Path, typer.Argument(help="ONNX model or TensorRT engine (with its sidecar).")],
    repo: Annotated[Path, typer.Option("-o", "--output", help="Triton model repository folder.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the file name).")] = None,
    version: Annotated[int, typer.Option(help="Model version folder.")] = 1,
    argmax: Annotated[
        bool | None, typer.Option("--argmax/--no-argmax", help="Serve the 'labels' output (default: when present).")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Batch limit for dynamic batching (default: engine profile, else 8).")
    ] = None,
    instances: Annotated[int, typer.Option(help="Model instances per device.")] = 1,
    device: Annotated[str, typer.Option(help="gpu or cpu (ONNX only).")] = "gpu",
) -> None:
    """A Triton model repository: REPO/<name>/config.pbtxt, REPO/<name>/<version>/model.onnx|model.plan, labels."""
    from danet_deploy import api

    options = api.TritonOptions(
        name=name, version=version, argmax=argmax, max_batch_size=max_batch_size, instances=instances, device=device
    )
    _print_deployed(api.deploy_triton(model, repo, options))


@deploy_app.command("deepstream")
@guarded
def deploy_deepstream(
    model: Annotated[Path, typer.Argument(help="ONNX model or TensorRT engine (with its sidecar).")],
    outdir: Annotated[Path, typer.Option("-o", "--output", help="Folder for the model, config and pipeline.")],
    threshold: Annotated[float, typer.Option(help="nvinfer segmentation-threshold.")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Frames per inference (a static batch wins).")] = 1,
    gpu_id: Annotated[int, typer.Option(help="GPU nvinfer runs on.")] = 0,
) -> None:
    """A DeepStream Gst-nvinfer config for semantic segmentation and a gst-launch-1.0 pipeline."""
    from danet_deploy import api

    options = api.DeepStreamOptions(threshold=threshold, batch_size=batch_size, gpu_id=gpu_id)
    _print_deployed(api.deploy_deepstream(model, outdir, options))


def _check_arguments(argv: list[str]) -> None:
    """What Click accepts silently but a user did not mean: a single-value option given twice (Click keeps the
    last) and `-` as a file (it would be a file named '-': no option here reads standard input or writes standard
    output)."""
    if "-" in argv:
        raise _usage_error("'-' (standard input/output) is not supported; give a file")
    # Click is vendored by newer Typer: its objects are read through their public interface only.
    commands = getattr(typer.main.get_command(app), "commands", {})
    if not argv or argv[0] not in commands:
        return
    single: dict[str, str] = {}
    for param in commands[argv[0]].params:
        if getattr(param, "param_type_name", "") == "option" and not (
            param.multiple or getattr(param, "is_flag", False) or getattr(param, "count", False)
        ):
            single.update({name: param.opts[-1] for name in param.opts})
    seen: set[str] = set()
    for arg in argv[1:]:
        if arg == "--":
            break
        name = single.get(arg.split("=", 1)[0])
        if name in seen:
            raise _usage_error(f"{argv[0]}: {name} given more than once")
        if name is not None:
            seen.add(name)


def main() -> None:
    """The `danet-deploy` entry point: usage errors as one line (exit 2), Ctrl-C as exit 130 in every stage."""
    signal.signal(signal.SIGINT, _on_sigint)
    install_termination_handlers()
    try:
        _check_arguments(sys.argv[1:])
        code = app(standalone_mode=False)
    except DeployError as exc:
        err.print(f"[red]error:[/] {escape(one_line(str(exc)))} (see --help)", highlight=False, soft_wrap=True)
        code = exc.exit_code
    except (typer.Exit, typer.Abort) as exc:
        code = exc.exit_code if isinstance(exc, typer.Exit) else _exit_interrupted().exit_code
    except KeyboardInterrupt:
        code = _exit_interrupted().exit_code
    except Exception as exc:
        # Click's usage errors (vendored by newer Typer, so matched by their interface): one line, not a box.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # the help text
        else:
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            message = one_line(where + exc.format_message())
            err.print(f"[red]error:[/] {escape(message)} (see --help)", highlight=False, soft_wrap=True)
        code = EXIT_BAD_INPUT
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
