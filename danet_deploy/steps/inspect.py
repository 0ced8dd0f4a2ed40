"""Inspect an ONNX model (metadata, attention sites, TensorRT readiness) or an engine (its sidecar and layers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danet_deploy.artifact import OnnxModel, Precision
from danet_deploy.errors import BadInputError, DeployError, OptionError
from danet_deploy.files import (
    PathLike,
    check_output,
    write_json,
)
from danet_deploy.options import InspectOptions
from danet_deploy.progress import SILENT, Progress

if TYPE_CHECKING:
    from danet_deploy.engine.audit import EngineAudit
    from danet_deploy.engine.sidecar import EngineSidecar
    from danet_deploy.graph.lint import LintReport
    from danet_deploy.precision.int8_ort import KernelChoice
from danet_deploy.steps.backends import ENGINE_SUFFIXES, with_sidecars


@dataclass
class InspectResult:
    """An ONNX model's metadata, precision, TensorRT readiness lint and, for INT8, ONNX Runtime's kernels."""

    path: Path
    metadata: dict[str, Any]
    lint: LintReport  # TensorRT readiness findings for the target
    precision: str = "fp32"  # with the INT8 target, e.g. "int8 (ONNX Runtime)"
    kernels: list[KernelChoice] = field(default_factory=list)  # INT8: ONNX Runtime's kernel per Conv/MatMul/Gemm
    json_path: Path | None = None


@dataclass
class EngineInspectResult:
    """A TensorRT engine as its sidecar records it and, where TensorRT runs here, as it reads now."""

    path: Path
    sidecar: EngineSidecar  # how and where it was built, the precision audit of the build
    live: EngineAudit | None = None  # read from the engine now (TensorRT here and the engine compatible)
    notes: list[str] = field(default_factory=list)  # why the engine itself was not read, or what differs
    json_path: Path | None = None


def inspect_engine(
    engine: PathLike, json_path: PathLike | None = None, progress: Progress = SILENT
) -> EngineInspectResult:
    """The sidecar's facts (TensorRT, GPU, platform, precision path, profile, options, layers per precision at
    build time) and, where TensorRT and a compatible GPU are present, the engine's own layer information."""
    import dataclasses

    from danet_deploy.engine.audit import audit_engine, parse_layer_information
    from danet_deploy.engine.build import engine_layer_information
    from danet_deploy.engine.sidecar import check_compatible, read_sidecar
    from danet_deploy.engine.system import running_system

    if json_path is not None:
        check_output(json_path, with_sidecars([engine]))
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
        options = sidecar.options
        dla = options.dla_core is not None
        result.live = audit_engine(layers, sidecar.precision, sidecar.pinned_fp32_layers, dla, options.gpu_fallback)
    if json_path is not None:
        data = {
            "engine": str(path),
            "sidecar": dataclasses.asdict(sidecar),
            "live_layers": result.live.to_dict() if result.live else None,
            "notes": result.notes,
        }
        result.json_path = write_json(json_path, data)
    return result


def inspect(
    model: PathLike,
    options: InspectOptions = InspectOptions(),
    json_path: PathLike | None = None,
    progress: Progress = SILENT,
) -> InspectResult | EngineInspectResult:
    """Model config and provenance, precision, op histogram, attention sites, TensorRT readiness lint, memory
    estimate; for INT8 models which Conv/MatMul nodes ONNX Runtime's CPU provider runs as integer kernels. A
    TensorRT engine (.engine, .plan, .trt) is inspected by `inspect_engine`."""
    import dataclasses

    from danet_deploy.artifact import precision_label
    from danet_deploy.graph.lint import lint

    options.check()
    if Path(model).suffix.lower() in ENGINE_SUFFIXES:
        return inspect_engine(model, json_path, progress)
    if json_path is not None:
        check_output(json_path, [model])
    onnx_model = OnnxModel.load(model)
    if onnx_model.has_config:
        onnx_model.config  # noqa: B018 -- validates it (class names, palette): a bad one is exit 2, not shown
    try:
        with progress.task("linting"):
            report = lint(onnx_model.proto, options.target, options.input_size)
    except ValueError as exc:
        if options.input_size is None and "input size" in str(exc):
            raise OptionError("input_size", None, f"{model}: {exc}") from None
        raise BadInputError(f"{model}: {exc}") from None
    label = precision_label(onnx_model.precision, onnx_model.quantized_for)
    result = InspectResult(onnx_model.path, onnx_model.metadata, report, label)
    if onnx_model.precision is Precision.INT8:
        from danet_deploy.precision.int8_ort import kernel_choices

        with progress.task("asking ONNX Runtime which kernels it runs"):
            try:
                result.kernels = kernel_choices(onnx_model.proto)
            except BadInputError as exc:
                raise BadInputError(f"{model}: {exc}") from None
    if json_path is not None:
        data = {
            "model": str(model),
            "metadata": onnx_model.metadata,
            "precision": label,
            "onnxruntime_kernels": [{**dataclasses.asdict(k), "integer": k.integer} for k in result.kernels],
            **dataclasses.asdict(report),
        }
        result.json_path = write_json(json_path, data)
    return result
