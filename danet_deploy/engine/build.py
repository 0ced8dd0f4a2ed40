"""Build a TensorRT engine from a BuildPlan through Polygraphy's loaders (TensorRT is imported lazily).

Nothing here runs on a machine without TensorRT and an NVIDIA GPU: `require_tensorrt` and
`running_system` fail first with one line saying what is missing and how to get it (exit code 3).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import EXIT_MISSING_DEPENDENCY, DeployError
from ..export.artifact import OnnxModel
from ..files import all_or_nothing, sha256_file, write_bytes
from .plan import BuildPlan
from .sidecar import EngineSidecar, RunningSystem, write_sidecar

INSTALL_HINT = (
    'install it on a machine with an NVIDIA GPU and driver: pip install "danet-deploy[tensorrt]", '
    "or use NVIDIA's TensorRT container (docker/Dockerfile); on Jetson it comes with JetPack"
)


def require_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # PyPI stubs without their native libraries fail here too
        detail = f" ({str(exc).splitlines()[0][:100]})" if str(exc) else ""
        raise DeployError(f"TensorRT is not installed{detail}; {INSTALL_HINT}", EXIT_MISSING_DEPENDENCY) from None
    return trt


def running_system() -> RunningSystem:
    """TensorRT version and the GPU (name, compute capability) this process would use."""
    trt = require_tensorrt()
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0))
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except Exception as exc:  # no driver, no device, no NVML
        raise DeployError(f"no NVIDIA GPU found ({type(exc).__name__}); TensorRT engines need one",
                          EXIT_MISSING_DEPENDENCY) from None  # fmt: skip
    return RunningSystem(trt.__version__, name.decode() if isinstance(name, bytes) else str(name), f"{major}.{minor}")


def cuda_version() -> str | None:
    try:
        import pynvml

        version = pynvml.nvmlSystemGetCudaDriverVersion()
        return f"{version // 1000}.{(version % 1000) // 10}"
    except Exception:
        return None


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


def polygraphy_loaders(plan: BuildPlan, on_progress: Callable[[str, int, int], None] | None = None) -> Any:
    """The lazy Polygraphy loader chain for the plan; calling the result builds serialized engine bytes."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
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
    }
    if not strongly_typed:  # precision flags exist only for weakly typed networks (removed in 11)
        config_kwargs.update(fp16="FP16" in plan.builder_flags, int8="INT8" in plan.builder_flags)
        if "OBEY_PRECISION_CONSTRAINTS" in plan.builder_flags:
            config_kwargs["precision_constraints"] = "obey"
    if options.get("workspace_mib"):
        config_kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(options["workspace_mib"]) << 20}
    if options.get("dla_core") is not None:
        config_kwargs.update(use_dla=True, allow_gpu_fallback=bool(options.get("gpu_fallback")))
    if options.get("hardware_compat"):
        config_kwargs["hardware_compatibility_level"] = getattr(
            trt.HardwareCompatibilityLevel, levels[options["hardware_compat"]]
        )
    config = CreateConfig(**{k: v for k, v in config_kwargs.items() if v is not None})
    return EngineBytesFromNetwork(network, config=config, save_timing_cache=options.get("timing_cache"))


def build_engine(
    plan: BuildPlan, output: str | os.PathLike[str], on_progress: Callable[[str, int, int], None] | None = None
) -> EngineSidecar:
    """Build the plan's network ONNX (made beforehand by the precision stage), write the engine and its sidecar."""
    system = running_system()
    if plan.tensorrt_version.split(".")[:2] != system.tensorrt_version.split(".")[:2]:
        raise DeployError(
            f"the plan is for TensorRT {plan.tensorrt_version} but {system.tensorrt_version} is installed"
        )
    if not Path(plan.network_onnx).is_file():
        raise DeployError(
            f"{plan.network_onnx}: the network ONNX of the plan does not exist (make it first: {plan.prepare})"
        )
    started = time.perf_counter()
    build = polygraphy_loaders(plan, on_progress)
    engine_bytes = build()
    seconds = time.perf_counter() - started
    engine_bytes = bytes(engine_bytes)
    out = Path(output)
    network = OnnxModel.load(plan.network_onnx, external_data=False)
    sidecar = EngineSidecar(
        tensorrt_version=system.tensorrt_version,
        gpu_name=system.gpu_name,
        compute_capability=system.compute_capability,
        cuda_version=cuda_version(),
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
    )
    with all_or_nothing():  # an engine without its sidecar (or the reverse) is never left behind
        write_bytes(out, engine_bytes)
        write_sidecar(out, sidecar)
    return sidecar
