"""Build a TensorRT engine from a BuildPlan through Polygraphy's loaders (TensorRT is imported lazily).

Nothing here runs on a machine without TensorRT and an NVIDIA GPU: `system.running_system` fails first with one
line saying which is missing and how to get it (exit code 3). After the build the engine's layer information
is audited (`audit.py`); an engine that does not run in the precision asked for is never written (exit 1).
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from danet_deploy.artifact import OnnxModel
from danet_deploy.engine.audit import EngineAudit, audit_engine, parse_layer_information
from danet_deploy.engine.plan import BuildPlan
from danet_deploy.engine.sidecar import EngineSidecar, write_sidecar
from danet_deploy.engine.system import Platform, RunningSystem, require_tensorrt, running_system
from danet_deploy.errors import BadInputError, CheckFailedError, DeployError
from danet_deploy.files import all_or_nothing, sha256_file, write_bytes


def check_platform(plan: BuildPlan, platform: Platform | None) -> None:
    """Options this platform cannot honour (the plan checked the TensorRT version already)."""
    if platform is None:
        return
    if plan.options.get("dla_core") is not None and platform.no_dla_reason:
        raise BadInputError(f"--dla-core: {platform.no_dla_reason}")
    if plan.options.get("hardware_compat") and platform.is_jetson:
        raise BadInputError("--hardware-compat: hardware compatibility levels are not supported on Jetson (JetPack)")


def _progress_monitor(trt: Any, on_progress: Callable[[str, int, int], None] | None) -> Any:
    """A trt.IProgressMonitor (TensorRT >= 10) that reports phases; None where the API is absent."""
    if on_progress is None or not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            on_progress(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            on_progress(phase_name, step + 1, -1)
            return True

        def phase_finish(self, phase_name: str) -> None:
            on_progress(phase_name, -1, -1)

    return Monitor()


def _use_dla(trt: Any, core: int, gpu_fallback: bool, builder: Any, network: Any, config: Any) -> None:
    """Put the build on DLA core `core`. Done here rather than with CreateConfig(use_dla=True), which always
    picks core 0 and adds PREFER_PRECISION_CONSTRAINTS next to our OBEY (TensorRT says: set one of them)."""
    available = builder.num_DLA_cores
    if core >= available:
        raise BadInputError(f"--dla-core {core}: this device has {available} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    if gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def polygraphy_loaders(plan: BuildPlan, on_progress: Callable[[str, int, int], None] | None = None) -> Any:
    """The lazy Polygraphy loader chain for the plan; calling the result builds serialized engine bytes."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        PostprocessConfig,
        Profile,
        SetLayerPrecisions,
    )

    strongly_typed = plan.path == "strongly typed"
    network: Any = NetworkFromOnnxPath(plan.network_onnx, strongly_typed=strongly_typed or None)
    if plan.pinned_fp32_layers:
        network = SetLayerPrecisions(network, dict.fromkeys(plan.pinned_fp32_layers, trt.float32))
    profile = Profile()
    for name, (lo, opt, hi) in plan.profile.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    options = plan.options
    levels = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
    config_kwargs: dict[str, Any] = {
        "profiles": [profile],
        "load_timing_cache": options.get("timing_cache"),
        "version_compatible": options.get("version_compatible") or None,
        "builder_optimization_level": options.get("builder_opt_level"),
        "progress_monitor": _progress_monitor(trt, on_progress),
        # Layer precisions and ONNX node names in the engine's layer information, for the audit.
        "profiling_verbosity": trt.ProfilingVerbosity.DETAILED,
    }
    if not strongly_typed:  # precision flags exist only for weakly typed networks (removed in 11)
        config_kwargs.update(fp16="FP16" in plan.builder_flags, int8="INT8" in plan.builder_flags)
        if "OBEY_PRECISION_CONSTRAINTS" in plan.builder_flags:
            config_kwargs["precision_constraints"] = "obey"
    if options.get("workspace_mib"):
        config_kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(options["workspace_mib"]) << 20}
    if options.get("hardware_compat"):
        config_kwargs["hardware_compatibility_level"] = getattr(
            trt.HardwareCompatibilityLevel, levels[options["hardware_compat"]]
        )
    config: Any = CreateConfig(**{k: v for k, v in config_kwargs.items() if v is not None})
    if options.get("dla_core") is not None:
        config = PostprocessConfig(
            config, functools.partial(_use_dla, trt, int(options["dla_core"]), bool(options.get("gpu_fallback")))
        )
    return EngineBytesFromNetwork(network, config=config, save_timing_cache=options.get("timing_cache"))


def engine_layer_information(engine_bytes: bytes) -> str:
    """The engine's layer information as TensorRT's JSON (deserialized from bytes: works on every TensorRT)."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import EngineFromBytes

    engine = EngineFromBytes(engine_bytes)()
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def audit_engine_bytes(plan: BuildPlan, engine_bytes: bytes) -> EngineAudit:
    """Layers per precision of the built engine; CheckFailedError (exit 1) when it is not what the plan asked."""
    try:
        layers = parse_layer_information(engine_layer_information(engine_bytes))
    except ValueError as exc:
        raise CheckFailedError(f"cannot audit the engine's precision: {exc}") from None
    audit = audit_engine(layers, plan.precision, plan.pinned_fp32_layers)
    if audit.failures:
        raise CheckFailedError(
            f"engine not written: {'; '.join(audit.failures)} (TensorRT {plan.tensorrt_version}, {plan.path} build)"
        )
    return audit


def build_engine(
    plan: BuildPlan,
    output: str | os.PathLike[str],
    on_progress: Callable[[str, int, int], None] | None = None,
    system: RunningSystem | None = None,
) -> EngineSidecar:
    """Build the plan's network ONNX (made beforehand by the precision stage), audit the engine's precision, write
    the engine and its sidecar."""
    system = system or running_system()
    if plan.tensorrt_version.split(".")[:2] != system.tensorrt_version.split(".")[:2]:
        raise DeployError(
            f"the plan is for TensorRT {plan.tensorrt_version} but {system.tensorrt_version} is installed"
        )
    check_platform(plan, system.platform)
    if not Path(plan.network_onnx).is_file():
        raise DeployError(
            f"{plan.network_onnx}: the network ONNX of the plan does not exist (make it first: {plan.prepare})"
        )
    started = time.perf_counter()
    build = polygraphy_loaders(plan, on_progress)
    engine_bytes = bytes(build())
    seconds = time.perf_counter() - started
    audit = audit_engine_bytes(plan, engine_bytes)
    out = Path(output)
    network = OnnxModel.load(plan.network_onnx, external_data=False)
    sidecar = EngineSidecar(
        tensorrt_version=system.tensorrt_version,
        gpu_name=system.gpu_name,
        compute_capability=system.compute_capability,
        cuda_version=system.cuda_version,
        precision=plan.precision,
        build_path=plan.path,
        profiles=[plan.profile],
        source_onnx=plan.source_onnx,
        source_onnx_sha256=sha256_file(plan.source_onnx),
        network_onnx_sha256=sha256_file(plan.network_onnx),
        model_config=network.metadata.get("model_config"),
        build_options=plan.options,
        build_seconds=round(seconds, 1),
        engine_sha256=hashlib.sha256(engine_bytes).hexdigest(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pinned_fp32_layers=plan.pinned_fp32_layers,
        input_spec=network.input_spec.to_dict(),
        engine_layers=audit.to_dict(),
        platform=system.platform.describe() if system.platform else None,
        gpu_memory_bytes=system.gpu_memory_bytes,
    )
    with all_or_nothing():  # an engine without its sidecar (or the reverse) is never left behind
        write_bytes(out, engine_bytes)
        write_sidecar(out, sidecar)
    return sidecar
