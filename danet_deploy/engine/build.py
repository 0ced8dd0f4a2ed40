"""Build a TensorRT engine from a BuildPlan through Polygraphy's loaders (TensorRT is imported lazily).

Nothing here runs on a machine without TensorRT and an NVIDIA GPU: `system.running_system` fails first with one
line saying which is missing and how to get it (exit code 3). After the build the engine's layer information
is audited (`audit.py`); an engine that does not run in the precision asked for is never written (exit 1).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from danet_deploy.artifact import OnnxModel
from danet_deploy.engine.audit import EngineAudit, audit_engine, parse_layer_information
from danet_deploy.engine.calibration_cache import activation_scales, calibration_cache_text
from danet_deploy.engine.plan import STRONGLY_TYPED, BuildPlan, full_version, parse_version
from danet_deploy.engine.sidecar import EngineSidecar, write_sidecar
from danet_deploy.engine.system import Platform, RunningSystem, require_tensorrt, running_system
from danet_deploy.errors import BadInputError, CheckFailedError, DeployError
from danet_deploy.files import all_or_nothing, sha256_file, write_bytes


def check_platform(plan: BuildPlan, platform: Platform | None) -> None:
    """Options this platform cannot honour (the plan checked the TensorRT version already)."""
    if platform is None:
        return
    options = plan.options
    if options.dla_core is not None:
        if platform.no_dla_reason:
            raise BadInputError(f"DLA core {options.dla_core}: {platform.no_dla_reason}")
        found = re.match(r"\d+(\.\d+)*", platform.jetpack or "")  # "6.0 DP", "6.2.1"
        jetpack = tuple(int(p) for p in found.group(0).split(".")) if found else None
        if parse_version(plan.tensorrt_version) >= (11, 0) and jetpack is not None and jetpack < (7, 2, 2):
            raise BadInputError(
                f"DLA with TensorRT 11 needs JetPack 7.2.2 or later (TensorRT 11.4.1 release notes); this is JetPack "
                f"{platform.jetpack}"
            )
    if options.hardware_compat and platform.is_jetson:
        raise BadInputError("hardware compatibility levels are not supported on Jetson (JetPack)")


def _progress_monitor(trt: Any, on_progress: Callable[[str, int, int], None] | None) -> Any:
    """A trt.IProgressMonitor (TensorRT >= 10) that reports phases; None where the API is absent."""
    if on_progress is None or not hasattr(trt, "IProgressMonitor"):
        return None
    report: Callable[[str, int, int], None] = on_progress
    base: Any = trt.IProgressMonitor

    class Monitor(base):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            report(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            report(phase_name, step + 1, -1)
            return True

        def phase_finish(self, phase_name: str) -> None:
            report(phase_name, -1, -1)

    return Monitor()


def _use_dla(trt: Any, core: int, gpu_fallback: bool, builder: Any, network: Any, config: Any) -> None:
    """Put the build on DLA core `core`. Done here rather than with CreateConfig(use_dla=True), which always
    picks core 0 and adds PREFER_PRECISION_CONSTRAINTS next to our OBEY (TensorRT says: set one of them)."""
    available = builder.num_DLA_cores
    if core >= available:
        raise BadInputError(f"DLA core {core}: this device has {available} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    if gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _load_timing_cache(path: str, builder: Any, network: Any, config: Any) -> None:
    """Load the timing cache ourselves and check TensorRT took it: Polygraphy ignores `set_timing_cache`'s result,
    and a cache from another TensorRT or GPU would otherwise be dropped without a word."""
    data = Path(path).read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        raise BadInputError(
            f"{path}: TensorRT refused this timing cache (made by another TensorRT release or GPU?); "
            "delete it or name another file"
        )


def _pin_layers(trt: Any, pinned: list[str], network_onnx: str, network: Any) -> None:
    """Set the pinned layers to FP32, failing (exit 1, nothing built) when a pin names no layer of the network
    TensorRT parsed: Polygraphy's SetLayerPrecisions would only warn, and the layer would silently run in FP16."""
    names = {network.get_layer(i).name for i in range(network.num_layers)}
    missing = [name for name in pinned if name not in names]
    if missing:
        raise CheckFailedError(
            f"engine not built: {len(missing)} pinned FP32 layer(s) match no layer TensorRT parsed from "
            f"{network_onnx} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in pinned:
            layer.precision = trt.float32


def polygraphy_loaders(
    plan: BuildPlan,
    on_progress: Callable[[str, int, int], None] | None = None,
    calibration_cache: str | None = None,
) -> Any:
    """The lazy Polygraphy loader chain for the plan; calling the result builds serialized engine bytes.
    `calibration_cache`: implicit INT8 (the plan's `implicit_int8`), the cache TensorRT reads the scales from."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import (
        Calibrator,
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        PostprocessConfig,
        PostprocessNetwork,
        Profile,
    )

    strongly_typed = plan.path == STRONGLY_TYPED
    options = plan.options
    network: Any = NetworkFromOnnxPath(plan.network_onnx, strongly_typed=strongly_typed or None)
    if plan.pinned_fp32_layers:
        pin = functools.partial(_pin_layers, trt, plan.pinned_fp32_layers, plan.network_onnx)
        network = PostprocessNetwork(network, pin, name="pin FP32 layers")
    profile = Profile()
    for name, (lo, opt, hi) in plan.profile.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    levels = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
    config_kwargs: dict[str, Any] = {
        "profiles": [profile],
        "version_compatible": options.version_compatible or None,
        "builder_optimization_level": options.builder_opt_level,
        "progress_monitor": _progress_monitor(trt, on_progress),
        # Layer precisions and ONNX node names in the engine's layer information, for the audit.
        "profiling_verbosity": trt.ProfilingVerbosity.DETAILED,
        # FP32 layers may use TF32 as trtexec lets them by default (Polygraphy clears the flag unless asked).
        "tf32": options.tf32 or None,
    }
    if not strongly_typed:  # precision flags exist only for weakly typed networks (removed in 11)
        config_kwargs.update(fp16="FP16" in plan.builder_flags, int8="INT8" in plan.builder_flags)
        if "OBEY_PRECISION_CONSTRAINTS" in plan.builder_flags:
            config_kwargs["precision_constraints"] = "obey"
    if calibration_cache is not None:
        # TensorRT reads every scale from the cache and asks for no calibration batch (data loader left empty).
        config_kwargs["calibrator"] = Calibrator(data_loader=[], cache=calibration_cache)
    if options.workspace_mib:
        config_kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: options.workspace_mib << 20}
    if options.hardware_compat:
        config_kwargs["hardware_compatibility_level"] = getattr(
            trt.HardwareCompatibilityLevel, levels[options.hardware_compat]
        )
    config: Any = CreateConfig(**{k: v for k, v in config_kwargs.items() if v is not None})
    if options.timing_cache and Path(options.timing_cache).is_file():
        config = PostprocessConfig(config, functools.partial(_load_timing_cache, options.timing_cache))
    if options.dla_core is not None:
        config = PostprocessConfig(config, functools.partial(_use_dla, trt, options.dla_core, options.gpu_fallback))
    return EngineBytesFromNetwork(network, config=config, save_timing_cache=options.timing_cache)


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
    dla = plan.options.dla_core is not None
    audit = audit_engine(layers, plan.precision, plan.pinned_fp32_layers, dla, plan.options.gpu_fallback)
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
    planned, here = full_version(plan.tensorrt_version), full_version(system.tensorrt_version)
    if planned != here[: len(planned)]:
        raise DeployError(
            f"the plan is for TensorRT {plan.tensorrt_version} but {system.tensorrt_version} is installed"
        )
    check_platform(plan, system.platform)
    if not Path(plan.network_onnx).is_file():
        raise DeployError(
            f"{plan.network_onnx}: the network ONNX of the plan does not exist (make it first: {plan.prepare})"
        )
    with tempfile.TemporaryDirectory(prefix="danet-engine-") as scratch:
        cache = None
        if plan.implicit_int8:
            scales = activation_scales(OnnxModel.load(plan.scales_onnx, external_data=False).proto)
            cache = str(Path(scratch) / "calibration.cache")
            Path(cache).write_text(calibration_cache_text(scales, here))
        started = time.perf_counter()
        build = polygraphy_loaders(plan, on_progress, cache)
        from polygraphy.exception import PolygraphyException

        try:
            engine_bytes = bytes(build())
        except PolygraphyException as exc:  # Polygraphy reports TensorRT's build errors (logged above) this way
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CheckFailedError(f"TensorRT could not build the engine: {first}") from None
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
        build_options=plan.options.to_dict(),
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
