"""Verify: every backend against the PyTorch reference on labeled data (mIoU, parity), with reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danet_deploy.errors import BadInputError, CheckFailedError
from danet_deploy.files import (
    PathLike,
    all_or_nothing,
    check_outputs,
    write_json,
)
from danet_deploy.progress import SILENT, Progress
from danet_deploy.steps.backends import backend_names, backends_plan, engine_runners, with_sidecars
from danet_deploy.steps.benchmark import read_benchmark_json
from danet_deploy.steps.export import load_checkpoint
from danet_deploy.steps.quantize import checked_dataset


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
    """The verify report (per backend: mIoU, per-class IoU, parity, pass/fail), the engines' sidecars and the
    report files written."""

    report: Any  # evaluate.verify.VerifyReport
    warnings: list[str]
    json_path: Path | None = None
    html_path: Path | None = None
    engines: list[tuple[str, Any]] = field(default_factory=list)  # (backend name, EngineSidecar) per engine


def _runners(
    checkpoint: PathLike | None,
    onnx: Sequence[PathLike],
    engines: Sequence[PathLike],
    options: VerifyOptions,
    progress: Progress,
    warnings: list[str],
) -> tuple[list[Any], Any]:
    """Backends from paths, the PyTorch reference first; returns (runners, model config)."""
    from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner
    from danet_deploy.runners.pytorch import PyTorchRunner

    runners: list[Any] = [
        OnnxRuntimeRunner(p, name=name, threads=options.threads, bounded=True)
        for p, name in zip(onnx, backend_names("onnxruntime", onnx))
    ]
    runners += engine_runners(engines)
    config = runners[0].config if runners else None
    if checkpoint is not None:
        # The ONNX metadata says how the model was built (dilations, align_corners, classes); reuse it.
        overrides: dict[str, Any] = {}
        if config is not None:
            overrides = {
                "layer4_dilations": config.layer4_dilations,
                "align_corners": config.align_corners,
                "class_names": config.class_names,
                "mean": config.mean,
                "std": config.std,
            }
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
    from danet_deploy.data.datasets import open_dataset
    from danet_deploy.evaluate.protocols import EvalProtocol
    from danet_deploy.evaluate.verify import thresholds_with
    from danet_deploy.evaluate.verify import verify as run_verify
    from danet_deploy.runners.base import activated

    inputs = [data, checkpoint, *onnx, *with_sidecars(engines), benchmark_json, options.thresholds_file]
    reports = [Path(report_dir) / name for name in ("report.html", "report.md")] if report_dir is not None else []
    check_outputs([json_path, *reports], inputs)
    if checkpoint is None and not onnx and not engines:
        raise BadInputError("verify needs --ckpt and/or --onnx / --engine")
    thresholds = thresholds_with(
        list(options.thresholds), str(options.thresholds_file) if options.thresholds_file else None
    )
    benchmark_results = read_benchmark_json(benchmark_json) if benchmark_json else None
    protocol = EvalProtocol(crop=options.crop, stride=options.stride, flip=options.flip, scales=options.scales)
    warnings: list[str] = []
    runners, config = _runners(checkpoint, onnx, engines, options, progress, warnings)  # files read, nothing run
    dataset = open_dataset(data, options.split).head(options.limit)
    backends_plan("verify", checkpoint, onnx, protocol.largest_run(dataset.largest_image())).show_and_check(
        progress, options.force
    )
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
            result.report = run_verify(
                dataset,
                runners,
                config,
                thresholds,
                on_image=lambda i: advance(),
                protocol=protocol,
                ignore_unknown_labels=options.ignore_unknown_labels,
                allow_unlabeled=options.allow_unlabeled,
            )
        with all_or_nothing():  # the JSON, HTML and Markdown appear together or not at all
            if json_path is not None:
                result.json_path = write_json(json_path, result.report.to_dict())
            if report_dir is not None:
                from danet_deploy.report.html_report import collect_examples, write_html, write_markdown

                with progress.task("writing the HTML report (re-running the worst images)"):
                    examples = collect_examples(dataset, runners, result.report, config, protocol)
                    html = write_html(
                        result.report, examples, config, Path(report_dir) / "report.html", benchmark=benchmark_results
                    )
                    write_markdown(result.report, Path(report_dir) / "report.md", html.name)
                result.html_path = html
    return result


def check_verify_passed(result: VerifyResult) -> None:
    """Raise CheckFailedError (exit 1) naming each failed backend."""
    if not result.report.passed:
        failed = [f"{b.name}: {', '.join(b.failures)}" for b in result.report.backends if not b.passed]
        raise CheckFailedError("parity check failed: " + "; ".join(failed))
