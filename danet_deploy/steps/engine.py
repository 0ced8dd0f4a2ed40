"""Build a TensorRT engine: plan (pure Python), prepare the network ONNX, build through Polygraphy, audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danet_deploy.artifact import OnnxModel
from danet_deploy.errors import DeployError
from danet_deploy.files import (
    PathLike,
    check_outputs,
)
from danet_deploy.options import Fp16Options, Int8Options
from danet_deploy.progress import SILENT, Progress
from danet_deploy.steps.quantize import QuantizeResult, quantize


@dataclass
class EngineResult:
    """The build plan (printed by `--dry-run`), notes on how the TensorRT version was chosen, and once built the
    engine's sidecar and the system it was built on."""

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
    from danet_deploy.engine.plan import DEFAULT_PLAN_VERSION, plan_build
    from danet_deploy.engine.system import read_platform, require_tensorrt, running_system

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
    calib = plan.options.get("calib")
    options = Int8Options(calib=calib) if plan.precision == "int8" else Fp16Options(calib=calib)
    return quantize(plan.source_onnx, plan.network_onnx, options, progress)


def build_engine(
    model: PathLike, output: PathLike, options: Any, tensorrt_version: str | None = None, progress: Progress = SILENT
) -> EngineResult:
    """Plan, make the network ONNX the plan needs, build the engine, audit its precision and write it with its
    sidecar. Options the platform cannot honour (DLA on a GPU without one, hardware compatibility on Jetson) fail
    before the network ONNX is made."""
    from danet_deploy.engine.build import build_engine as build
    from danet_deploy.engine.build import check_platform
    from danet_deploy.engine.sidecar import sidecar_path

    out, _ = check_outputs([output, sidecar_path(output)], [model])
    result = plan_engine(model, options, tensorrt_version)
    check_platform(result.plan, result.system.platform)
    prepare_network(result.plan, progress)
    with progress.task("building (TensorRT)") as update:
        result.sidecar = build(
            result.plan, out, lambda phase, step, total: update(0, description=phase), system=result.system
        )
    result.output = out
    return result
