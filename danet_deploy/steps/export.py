"""Export (checkpoint -> ONNX, checked against PyTorch) and simplify (attention graph rewrites, each checked)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danet_deploy.config import check_number
from danet_deploy.errors import BadInputError
from danet_deploy.export.torch_export import ExportOptions, ExportRecord
from danet_deploy.files import (
    PathLike,
    check_output,
    scratch_dir,
)
from danet_deploy.graph.pam import DEFAULT_BLOCK
from danet_deploy.progress import SILENT, Progress


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
        from danet_deploy.graph.group_norm import GROUP_NORM_FORMS
        from danet_deploy.graph.simplify import ATTENTION_FORMS, get_target

        if self.target is not None:
            get_target(self.target)
        for option, value, choices in (
            ("--attention", self.attention, ATTENTION_FORMS),
            ("--group-norm", self.group_norm, GROUP_NORM_FORMS),
        ):
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
    from danet_deploy.data.bundled import sample_image
    from danet_deploy.data.images import read_image
    from danet_deploy.export.torch_export import export_onnx

    out = check_output(output, [checkpoint, image, *option_files])
    options.check()
    if simplify is not None:
        simplify.check()  # a bad pass option fails before the export, not after it
    size = options.input_size
    loaded = load_checkpoint(checkpoint, layout, progress, **{**(overrides or {}), "input_size": size})
    from danet_deploy.memory_plan import export_plan

    state = [*loaded.model.parameters(), *loaded.model.buffers()]
    plan = export_plan(
        sum(t.numel() * t.element_size() for t in state),
        options.batch,
        options.size(loaded.config),
        loaded.config.position_attention == "pam",
        loaded.config.num_classes,
    )
    plan.show_and_check(progress, force)
    parity_image = read_image(Path(image)) if image else sample_image()
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
    from danet_deploy.graph.simplify import choose_attention, get_target, simplify_file
    from danet_deploy.memory_plan import onnx_file_facts, simplify_plan

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

        report, info = simplify_file(
            model,
            out,
            target=options.target,
            attention=options.attention,
            block=options.block,
            heads=options.heads,
            atol=options.atol,
            rtol=options.rtol,
            group_norm=options.group_norm,
            fold_shuffle=options.fold_shuffle,
            on_pass=on_pass,
            on_check=on_check,
        )
    return SimplifyResult(report, out, info["size_bytes"], info["onnx_sha256"])
