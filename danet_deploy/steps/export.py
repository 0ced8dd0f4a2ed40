"""Export (checkpoint -> ONNX, checked against PyTorch) and simplify (attention graph rewrites, each checked)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danet_deploy.files import (
    PathLike,
    check_output,
    scratch_dir,
)
from danet_deploy.onnx_export.torch_export import ExportRecord, export_size
from danet_deploy.options import ExportOptions, SimplifyOptions
from danet_deploy.progress import SILENT, Progress

if TYPE_CHECKING:
    from danet_deploy.checkpoints import LoadedCheckpoint
    from danet_deploy.simplify import SimplifyReport


@dataclass
class SimplifyResult:
    """The simplified model: every pass and its check (`report`), the file, its size and sha256."""

    report: SimplifyReport  # every pass, its check and how the check evaluated the graph
    path: Path
    size_bytes: int
    sha256: str


@dataclass
class ExportResult:
    """The exported ONNX (`record`: parity, sizes, provenance) and, with simplify, the simplified model."""

    record: ExportRecord  # the export as written (before simplify, when simplified)
    checkpoint: str
    output: Path
    simplified: SimplifyResult | None = None


def load_checkpoint(
    checkpoint: PathLike, layout: str | None = None, progress: Progress = SILENT, **overrides: Any
) -> LoadedCheckpoint:
    """The checkpoint as a model + config (layout detected unless given); says what it found."""
    from danet_deploy.checkpoints import load_checkpoint as load

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
    simplify: SimplifyOptions | None = None,
    progress: Progress = SILENT,
) -> ExportResult:
    """Checkpoint -> ONNX checked against PyTorch (`ExportOptions`); with `simplify`, the graph passes run onto
    `output`. An export whose estimated memory exceeds what is available is refused first unless `options.force`.

    Raises BadInputError (an OptionError for option values) before any work for bad input, CheckFailedError when
    the parity check fails; nothing is written then.
    """
    from danet_deploy.data.bundled import sample_image
    from danet_deploy.data.images import read_image
    from danet_deploy.onnx_export.torch_export import export_onnx

    out = check_output(output, [checkpoint, options.image, options.model.class_names_file])
    options.check()
    if simplify is not None:
        simplify.check()  # a bad pass option fails before the export, not after it
    size = options.input_size
    loaded = load_checkpoint(checkpoint, options.layout, progress, **options.model.given(), input_size=size)
    from danet_deploy.memory_plan import export_plan

    state = [*loaded.model.parameters(), *loaded.model.buffers()]
    plan = export_plan(
        sum(t.numel() * t.element_size() for t in state),
        options.batch,
        export_size(options, loaded.config),
        loaded.config.position_attention == "pam",
        loaded.config.num_classes,
    )
    plan.show_and_check(progress, options.force)
    parity_image = read_image(Path(options.image)) if options.image else sample_image()
    with contextlib.ExitStack() as stack:
        raw = out
        if simplify is not None:  # export beside, simplify onto `output`: a failed pass leaves nothing there
            raw = stack.enter_context(scratch_dir(out)) / "raw.onnx"
        what = f"exporting {loaded.config.arch} ({options.exporter} exporter, opset {options.opset}), checking parity"
        with progress.task(what):
            record = export_onnx(
                loaded.model,
                loaded.config,
                raw,
                options,
                parity_image,
                loaded.provenance(),
                check_session=parity_session,
            )
        record.onnx_path = str(out)
        result = ExportResult(record, str(checkpoint), out)
        del loaded  # the PyTorch weights are not needed by the graph passes
        if simplify is not None:
            result.simplified = simplify_model_file(raw, out, simplify, progress)
    return result


def parity_session(path: Path, input_shape: list[int]) -> tuple[Any, str]:
    """The export parity check's ONNX Runtime session: large attention evaluated in query blocks (exact)."""
    from danet_deploy.bounded_ort.query_blocks import bounded_session

    session, evaluation = bounded_session(path, input_shape)
    return session, evaluation.describe()


def simplify_model_file(
    model: PathLike, output: PathLike, options: SimplifyOptions = SimplifyOptions(), progress: Progress = SILENT
) -> SimplifyResult:
    """The attention graph rewritten for a target; every pass is checked against the graph before it. A memory plan
    is shown first; one that does not fit stops here (exit 2) unless `options.force`."""
    from danet_deploy.graph.pam import value_heads
    from danet_deploy.memory_plan import onnx_file_facts, simplify_plan
    from danet_deploy.simplify import choose_attention, get_target, simplify_file

    out = check_output(output, [model])
    options.check()
    facts, size = onnx_file_facts(model)
    form = options.attention or (choose_attention(get_target(options.target), True)[0] if options.target else "naive")
    heads = (options.heads or value_heads(512)) if form in ("mha", "onnx-attention") else 1
    simplify_plan(facts, size, heads).show_and_check(progress, options.force)

    def on_pass(p: Any) -> None:
        how = "" if p.evaluated == "as written" else f" (evaluated: {p.evaluated})"
        progress.note(f"  pass {p.name}: max abs diff {p.max_abs_diff:.2e}, {p.seconds:.0f} s{how}")

    with progress.task("simplify: checking every pass with ONNX Runtime (model runs)", total=0) as update:

        def on_check(done: int, total: int, what: str) -> None:
            update(1 if done else 0, description=f"simplify: {what}", total=total)

        report, info = simplify_file(model, out, options, on_pass=on_pass, on_check=on_check)
    return SimplifyResult(report, out, info["size_bytes"], info["onnx_sha256"])
