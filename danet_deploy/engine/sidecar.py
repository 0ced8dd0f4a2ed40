"""The engine sidecar `model.engine.json`: how and where an engine was built, checked before loading it.

The engine file stays a plain TensorRT plan (trtexec, Triton and DeepStream load it); everything else
lives beside it. Engines are tied to a TensorRT version and GPU unless built version-compatible or with a
hardware compatibility level, so the runner compares the sidecar with the running system *before*
deserializing and says exactly what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from danet_deploy.artifact import InputSpec
from danet_deploy.engine.audit import EngineAudit
from danet_deploy.engine.system import RunningSystem
from danet_deploy.errors import BadInputError, DeployError
from danet_deploy.files import write_json

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")  # what a TensorRT engine file is called
SIDECAR_SCHEMA = 2  # 2: engine_layers (the precision audit), platform, GPU memory


@dataclass
class EngineSidecar:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    cuda_version: str | None
    precision: str
    build_path: str  # "strongly typed" | "weakly typed"
    profiles: list[dict[str, list[list[int]]]]
    source_onnx: str
    source_onnx_sha256: str
    network_onnx_sha256: str
    model_config: dict[str, Any] | None
    build_options: dict[str, Any]
    build_seconds: float
    engine_sha256: str
    created: str
    pinned_fp32_layers: list[str] = field(default_factory=list)
    input_spec: dict[str, Any] = field(default_factory=dict)  # InputSpec.to_dict() of the network ONNX
    engine_layers: dict[str, Any] = field(default_factory=dict)  # audit.EngineAudit.to_dict(); {} before schema 2
    platform: str | None = None  # "Jetson AGX Orin Developer Kit (JetPack 6.2, Jetson Linux 36.4.3)", "x86_64"
    gpu_memory_bytes: int | None = None
    schema: int = SIDECAR_SCHEMA

    @property
    def audit(self) -> EngineAudit | None:
        """The layers per precision recorded after the build; None for sidecars from before the audit."""
        return EngineAudit.from_dict(self.engine_layers) if self.engine_layers else None

    def engine_bytes(self, engine: str | os.PathLike[str]) -> bytes:
        """The engine file's bytes, refused (exit 2) when they are not the engine this sidecar describes."""
        data = Path(engine).read_bytes()
        if self.engine_sha256 and hashlib.sha256(data).hexdigest() != self.engine_sha256:
            raise BadInputError(
                f"{engine}: the engine is not the one its sidecar describes (sha256 differs); "
                "rebuild it with `danet-deploy build-engine`"
            )
        return data

    @property
    def spec(self) -> InputSpec:
        """The engine's input and outputs as recorded at build time (names, layout, dtype, static dims)."""
        if not self.input_spec:
            raise BadInputError("the engine sidecar records no input spec (built by an older danet-deploy); rebuild it")
        return InputSpec.from_dict(self.input_spec)


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    return Path(f"{engine}.json")


def write_sidecar(engine: str | os.PathLike[str], sidecar: EngineSidecar) -> Path:
    return write_json(sidecar_path(engine), asdict(sidecar))


def read_sidecar(engine: str | os.PathLike[str]) -> EngineSidecar:
    path = sidecar_path(engine)
    if not path.is_file():
        raise BadInputError(f"{path}: no sidecar next to the engine (build engines with `danet-deploy build-engine`)")
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(EngineSidecar)}
        sidecar = EngineSidecar(**{k: v for k, v in data.items() if k in known})
        _ = sidecar.audit  # the recorded layers parse, or the file is not a sidecar
        if sidecar.gpu_memory_bytes is not None and not isinstance(sidecar.gpu_memory_bytes, int):
            raise TypeError("gpu_memory_bytes")
        return sidecar
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise BadInputError(f"{path}: not a valid engine sidecar ({type(exc).__name__})") from None


def _major_minor(version: str) -> tuple[int, int]:
    parts = ([*version.split("."), "0"])[:2]
    return int(parts[0]), int(parts[1])


def check_compatible(sidecar: EngineSidecar, running: RunningSystem, engine: str | os.PathLike[str]) -> list[str]:
    """Raise a DeployError naming what differs when the engine cannot run on this system; return warnings."""
    options = sidecar.build_options
    built, now = _major_minor(sidecar.tensorrt_version), _major_minor(running.tensorrt_version)
    if options.get("version_compatible"):
        # Version-compatible engines run on the same major version, same or newer.
        if now[0] != built[0] or now < built:
            raise DeployError(
                f"{engine}: built version-compatible with TensorRT {sidecar.tensorrt_version}, which runs on "
                f"{built[0]}.x >= {sidecar.tensorrt_version}; this system has TensorRT {running.tensorrt_version}"
            )
    elif built != now:
        raise DeployError(
            f"{engine}: built with TensorRT {sidecar.tensorrt_version}, this system has {running.tensorrt_version}; "
            "rebuild the engine here (or build with --version-compatible)"
        )
    compat = options.get("hardware_compat")
    same_cc = sidecar.compute_capability == running.compute_capability
    if compat == "ampere+":
        if _major_minor(running.compute_capability) < (8, 0):
            raise DeployError(
                f"{engine}: built for Ampere and newer GPUs; {running.gpu_name} is SM {running.compute_capability}"
            )
    elif compat == "same-cc":
        if not same_cc:
            raise DeployError(
                f"{engine}: built for compute capability {sidecar.compute_capability}; "
                f"{running.gpu_name} is {running.compute_capability}"
            )
    elif not same_cc:
        raise DeployError(
            f"{engine}: built on {sidecar.gpu_name} (SM {sidecar.compute_capability}), this GPU is "
            f"{running.gpu_name} (SM {running.compute_capability}); rebuild here or build with --hardware-compat"
        )
    if sidecar.gpu_name != running.gpu_name and compat is None:
        # TensorRT itself only warns across GPU models of one compute capability.
        return [
            f"{engine}: built on {sidecar.gpu_name}, running on {running.gpu_name} (same SM); rebuild for best speed"
        ]
    return []
