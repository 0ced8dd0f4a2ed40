"""Verify: every backend against the PyTorch reference on labeled data (mIoU, parity), with reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danet_deploy.artifact import Precision
from danet_deploy.errors import BadInputError, CheckFailedError, OptionError
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

if TYPE_CHECKING:
    from danet_deploy.evaluate.verify import VerifyReport


@dataclass(frozen=True)
class VerifyOptions:
    """How verify evaluates the backends and judges them. `check()` raises a one-line `OptionError` (exit 2) for a
    value no run can use, before any file is read beyond a thresholds file.

    Attributes:
        split: Cityscapes split to evaluate.
        limit: evaluate only the first N images (None: all).
        thresholds: overrides of the pass thresholds, PRECISION.FIELD=VALUE (e.g. "fp16.min_pixel_agreement=0.998";
            fields: `evaluate.verify.Thresholds`); they win over `thresholds_file`.
        thresholds_file: JSON thresholds per precision ({"int8": {"max_miou_drop": 0.5}}).
        crop: sliding-window size (with `stride`); None: whole images.
        stride: sliding-window step.
        flip: average each image's logits with those of its mirror image.
        scales: image scales whose logits are averaged.
        threads: ONNX Runtime intra-op threads (None: its default).
        layout: checkpoint layout, when it cannot be recognised.
        pytorch_fp16: also run the checkpoint in FP16 on a CUDA GPU.
        ignore_unknown_labels: mask values that are not class ids count as ignored (else an error).
        allow_unlabeled: a partly labeled set is evaluated on its labeled images (else an error).
        force: go on when the memory plan's peak exceeds the available memory.
        locate: compare every FP16 / INT8 backend's intermediate tensors with the FP32 ONNX's
            (`evaluate.locate`) and report where the error jumps.
        locate_failed: do so automatically for each FP16 / INT8 backend that fails.
        locate_images: how many of a backend's worst images the layers are compared on.
        locate_layers: how many jump layers to report.
    """

    split: str = "val"
    limit: int | None = None
    thresholds: tuple[str, ...] = ()
    thresholds_file: PathLike | None = None
    crop: int | None = None
    stride: int | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    threads: int | None = None
    layout: str | None = None
    pytorch_fp16: bool = False
    ignore_unknown_labels: bool = False
    allow_unlabeled: bool = False
    force: bool = False
    locate: bool = False
    locate_failed: bool = True
    locate_images: int = 2
    locate_layers: int = 5

    def check(self) -> None:
        """Every value usable (one-line OptionError naming the option otherwise); reads the thresholds file."""
        for name in ("limit", "threads", "crop", "stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(name, str(value), "must be at least 1")
        for name in ("locate_images", "locate_layers"):
            if getattr(self, name) < 1:
                raise OptionError(name, str(getattr(self, name)), "must be at least 1")
        if not self.split:
            raise OptionError("split", "", "names no split")
        self.protocol()
        self.threshold_settings()

    def protocol(self) -> Any:
        """The evaluation protocol (evaluate.protocols.EvalProtocol) these options describe."""
        from danet_deploy.evaluate.protocols import EvalProtocol

        return EvalProtocol(crop=self.crop, stride=self.stride, flip=self.flip, scales=self.scales)

    def threshold_settings(self) -> Any:
        """The thresholds per precision with where each came from (evaluate.verify.ThresholdSettings)."""
        from danet_deploy.evaluate.verify import threshold_settings

        file = str(self.thresholds_file) if self.thresholds_file is not None else None
        return threshold_settings(list(self.thresholds), file)


@dataclass
class VerifyResult:
    """The verify report (per backend: mIoU, per-class IoU, parity, pass/fail), the engines' sidecars and the
    report files written."""

    report: VerifyReport
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
    """Every backend on the same images under one protocol, judged against the first (PyTorch when given); FP16 and
    INT8 ONNX backends that fail (or all of them with `options.locate`) are then located layer by layer."""
    from danet_deploy.data.datasets import open_dataset
    from danet_deploy.evaluate.verify import verify as run_verify
    from danet_deploy.runners.base import activated

    options.check()
    inputs = [data, checkpoint, *onnx, *with_sidecars(engines), benchmark_json, options.thresholds_file]
    reports = [Path(report_dir) / name for name in ("report.html", "report.md")] if report_dir is not None else []
    check_outputs([json_path, *reports], inputs)
    if checkpoint is None and not onnx and not engines:
        raise BadInputError("verify needs --ckpt and/or --onnx / --engine")
    thresholds = options.threshold_settings()
    benchmark_results = read_benchmark_json(benchmark_json) if benchmark_json else None
    protocol = options.protocol()
    warnings: list[str] = []
    runners, config = _runners(checkpoint, onnx, engines, options, progress, warnings)  # files read, nothing run
    dataset = open_dataset(data, options.split).head(options.limit)
    backends_plan("verify", checkpoint, onnx, protocol.largest_run(dataset.largest_image())).show_and_check(
        progress, options.force
    )
    dataset = checked_dataset(dataset, config, options.ignore_unknown_labels, options.allow_unlabeled, progress)
    if not dataset.labeled:
        warnings.append(f"{data} has no label files; parity only, mIoU is not computed")
    engine_sidecars = [(r.name, r.sidecar) for r in runners if r.kind == "tensorrt"]
    with activated(runners):
        # TensorRT runners compare their engine's sidecar with this system when they activate.
        warnings += [w for r in runners for w in getattr(r, "warnings", [])]
        for warning in warnings:
            progress.note(f"warning: {warning}")
        if runners[0].kind == "pytorch" and any(r.precision is Precision.FP32 for r in runners[1:]):
            progress.note("measuring the reference's own FP32 noise (a float64 run on the first image)")
        with progress.task(f"verify ({len(runners)} backends)", total=len(dataset)) as advance:
            report = run_verify(
                dataset,
                runners,
                config,
                thresholds,
                on_image=lambda i: advance(),
                protocol=protocol,
                ignore_unknown_labels=options.ignore_unknown_labels,
                allow_unlabeled=options.allow_unlabeled,
            )
    result = VerifyResult(report, warnings, engines=engine_sidecars)
    # The runners are closed: locating opens its own sessions, two models' segments at a time.
    result.report.located = locate_backends(dataset, runners, result.report, options, progress)
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


def locate_backends(
    dataset: Any, runners: Sequence[Any], report: Any, options: VerifyOptions, progress: Progress = SILENT
) -> list[Any]:
    """`evaluate.locate` for each FP16 / INT8 backend that failed (or every one with `options.locate`), on its worst
    images, against the FP32 ONNX among the backends. A backend that cannot be located says why."""
    from danet_deploy.data.preprocess import resize_image
    from danet_deploy.evaluate.locate import LocateResult, locate_onnx, locate_tensorrt
    from danet_deploy.evaluate.verify import common_input_size

    fp32 = next((r for r in runners if r.kind == "onnxruntime" and r.precision is Precision.FP32), None)
    size = common_input_size(r.input_spec.static_size for r in runners)
    index = {str(path.relative_to(dataset.root)): i for i, (path, _) in enumerate(dataset.items)}
    located = []
    for runner, backend in zip(runners[1:], report.backends[1:]):
        reduced = runner.precision in (Precision.FP16, Precision.INT8)
        if not reduced or not (options.locate or (options.locate_failed and not backend.passed)):
            continue
        ranked = [item["image"] for item in sorted(backend.per_image, key=lambda item: item["pixel_agreement"])]
        names = ranked[: options.locate_images]
        reason = ""
        if runner.kind not in ("onnxruntime", "tensorrt"):
            reason = "only ONNX models and TensorRT engines are located (their node names match the FP32 ONNX's)"
        elif fp32 is None:
            reason = "no FP32 ONNX among the backends to compare its layers with"
        if reason:
            path = str(getattr(runner, "path", ""))
            located.append(LocateResult(runner.name, path, "", runner.precision.value, names, skipped=reason))
            continue
        assert fp32 is not None
        feeds = []
        for name in names:
            image = dataset.load(index[name]).image
            image = resize_image(image, size) if size else image
            if options.crop is not None:
                image = image[: options.crop, : options.crop]
            feeds.append({runner.input_spec.input_name: fp32.input_spec.prepare(image, fp32.config)})
        with progress.task(f"locating {runner.name}: its layers against {fp32.name} on {len(names)} image(s)"):
            try:
                if runner.kind == "tensorrt":
                    source = runner.sidecar.source_onnx
                    found = locate_tensorrt(
                        runner.name, source, fp32.path, runner.precision, feeds, names, options.locate_layers
                    )
                else:
                    found = locate_onnx(
                        runner.name, runner.path, fp32.path, runner.precision, feeds, names, options.locate_layers
                    )
            except BadInputError as exc:  # e.g. models exported differently: verify's verdict stands, said why
                found = LocateResult(runner.name, str(runner.path), str(fp32.path), runner.precision.value, names)
                found.skipped = str(exc)
        located.append(found)
    return located


def check_verify_passed(result: VerifyResult) -> None:
    """Raise CheckFailedError (exit 1) naming each failed backend."""
    if not result.report.passed:
        failed = [f"{b.name}: {', '.join(b.failures)}" for b in result.report.backends if not b.passed]
        raise CheckFailedError("parity check failed: " + "; ".join(failed))
