"""Build a TensorRT engine: plan (pure Python), readiness lint, prepare the network ONNX, build through Polygraphy,
audit."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danet_deploy.artifact import OnnxModel
from danet_deploy.engine.plan import (
    STRONGLY_TYPED,
    BuildOptions,
    BuildPlan,
    lint_target,
    parse_version,
    pinned_layers,
)
from danet_deploy.errors import BadInputError, CheckFailedError, DeployError, OptionError
from danet_deploy.files import PathLike, check_outputs, resolve
from danet_deploy.options import Fp16Options, Int8Options
from danet_deploy.progress import SILENT, Progress
from danet_deploy.steps.quantize import quantize

if TYPE_CHECKING:
    from danet_deploy.engine.sidecar import EngineSidecar
    from danet_deploy.engine.system import RunningSystem
    from danet_deploy.graph.lint import LintReport


@dataclass
class EngineResult:
    """The build plan (printed by `--dry-run`), notes on how the TensorRT version was chosen, and once built the
    engine's sidecar and the system it was built on."""

    plan: BuildPlan
    notes: list[str] = field(default_factory=list)
    sidecar: EngineSidecar | None = None  # once built
    output: Path | None = None
    system: RunningSystem | None = None  # where TensorRT and a GPU were found
    lint: LintReport | None = None  # of the source ONNX for the planned TensorRT release


def readiness_lint(plan: BuildPlan) -> Any:
    """The readiness lint `inspect --target` runs, for the planned release at the profile's opt shape; a
    CheckFailedError (exit 1) naming its errors."""
    from danet_deploy.graph.lint import lint

    target = lint_target(parse_version(plan.tensorrt_version))
    model = OnnxModel.load(plan.source_onnx, external_data=False)
    (_, opt, _), *_ = plan.profile.values()
    try:
        report = lint(model.proto, target, (opt[-2], opt[-1]), batch=opt[0])
    except ValueError as exc:
        raise BadInputError(f"{plan.source_onnx}: {exc}") from None
    if report.errors:
        found = "; ".join(f.message for f in report.errors[:3])
        raise CheckFailedError(
            f"{plan.source_onnx}: {len(report.errors)} TensorRT readiness error(s) for {target} "
            f"(as `inspect --target {target}` reports): {found}"
        )
    return report


def plan_engine(
    model: PathLike | OnnxModel, options: BuildOptions, tensorrt_version: str | None = None, dry_run: bool = False
) -> EngineResult:
    """The build plan for the installed TensorRT (or `tensorrt_version`), checked by the readiness lint for that
    release; a dry run without TensorRT plans for the TensorRT this Jetson's JetPack installs, else the default
    version, and says so; a real build needs TensorRT and a GPU here."""
    from danet_deploy.engine.plan import DEFAULT_PLAN_VERSION, plan_build
    from danet_deploy.engine.system import read_platform, require_tensorrt, running_system

    if options.calib is not None and not resolve(Path(options.calib)).is_dir():
        # A dry run checks what the build would read first: a plan calibrated on nothing is no plan.
        raise OptionError("calib", options.calib, "no such folder of calibration images")
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
    assert version is not None
    plan = plan_build(model, options, version)
    return EngineResult(plan, notes, system=system, lint=readiness_lint(plan))


def prepare_network(plan: BuildPlan, scratch: PathLike, progress: Progress = SILENT) -> BuildPlan:
    """Produce the ONNX TensorRT parses when the plan needs an FP16 or Q/DQ model first (the `quantize` step), in
    `scratch` unless the options name the file (which must not exist: a user's file is never replaced); take the
    pinned layers again from the ONNX TensorRT will parse. Returns the plan with its files filled in."""
    if not plan.prepare:
        return plan
    # With calibration images, FP16 magnitudes measured on them decide what stays FP32 too (not only the CAM rule).
    # Strongly typed INT8 runs the layers outside Q/DQ in their ONNX type: FP16 there (CAM chain and GroupNorm FP32).
    strongly_int8 = plan.precision == "int8" and plan.path == STRONGLY_TYPED
    calib = plan.options.calib
    options: Fp16Options | Int8Options = Fp16Options(calib=calib)
    if plan.precision == "int8":
        if calib is None:
            raise BadInputError("an INT8 engine from an FP32 model needs calibration images")
        options = Int8Options(
            calib=calib,
            unquantized="fp16" if strongly_int8 else "fp32",
            every_tensor=plan.implicit_int8,  # implicit INT8 needs a scale for every tensor (ModelOpt's DLA placement)
        )
    source = Path(plan.source_onnx)
    if plan.implicit_int8:
        scales = Path(scratch) / f"{source.stem}.int8.onnx"
        quantize(plan.source_onnx, scales, options, progress)
        _check_scale_names(plan, scales)
        return dataclasses.replace(plan, scales_onnx=str(scales))
    named = plan.options.network_onnx
    if named and Path(named).exists():
        raise BadInputError(f"{named}: the network ONNX to prepare exists already; name a new file or remove it")
    target = Path(named) if named else Path(scratch) / f"{source.stem}.{plan.precision}.onnx"
    quantize(plan.source_onnx, target, options, progress)
    pinned = plan.pinned_fp32_layers
    if pinned:
        pinned = pinned_layers(OnnxModel.load(target, external_data=False).proto)
        if not pinned:  # the layers to keep FP32 are gone from the network ONNX: never build without them
            raise CheckFailedError(
                f"{target}: the CAM chain / GroupNorm layers to keep FP32 are not found in the network ONNX "
                f"(found in {plan.source_onnx}); the engine would run them in reduced precision"
            )
    return dataclasses.replace(plan, network_onnx=str(target), pinned_fp32_layers=pinned)


def _check_scale_names(plan: BuildPlan, scales_onnx: Path) -> None:
    """Implicit INT8 reads scales by tensor name: the Q/DQ model's quantized tensors must exist in the network."""
    from danet_deploy.engine.calibration_cache import activation_scales

    network = OnnxModel.load(plan.network_onnx, external_data=False).proto
    tensors = {name for node in network.graph.node for name in node.output} | {i.name for i in network.graph.input}
    scales = activation_scales(OnnxModel.load(scales_onnx, external_data=False).proto)
    if not set(scales) & tensors:
        raise CheckFailedError(
            f"{scales_onnx}: none of its {len(scales)} quantized tensors is a tensor of {plan.network_onnx}; "
            "no calibration cache can be written for implicit INT8"
        )


def build_engine(
    model: PathLike,
    output: PathLike,
    options: BuildOptions,
    tensorrt_version: str | None = None,
    progress: Progress = SILENT,
) -> EngineResult:
    """Plan, lint, make the network ONNX the plan needs (in a scratch folder), build the engine, audit its precision
    and write it with its sidecar. Options the platform cannot honour (DLA on a GPU without one, hardware
    compatibility on Jetson) fail before the network ONNX is made."""
    from danet_deploy.engine.build import build_engine as build
    from danet_deploy.engine.build import check_platform
    from danet_deploy.engine.sidecar import sidecar_path

    out, _ = check_outputs([output, sidecar_path(output)], [model])
    result = plan_engine(model, options, tensorrt_version)
    assert result.system is not None  # not a dry run: plan_engine found TensorRT and a GPU, or raised
    check_platform(result.plan, result.system.platform)
    with tempfile.TemporaryDirectory(prefix="danet-network-") as scratch:
        result.plan = prepare_network(result.plan, scratch, progress)
        with progress.task("building (TensorRT)") as update:
            result.sidecar = build(
                result.plan, out, lambda phase, step, total: update(0, description=phase), system=result.system
            )
    result.output = out
    return result
