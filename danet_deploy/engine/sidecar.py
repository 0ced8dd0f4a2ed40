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
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from danet_deploy.artifact import InputSpec
from danet_deploy.engine.audit import EngineAudit
from danet_deploy.engine.plan import BuildOptions, full_version
from danet_deploy.engine.system import RunningSystem
from danet_deploy.errors import BadInputError, DeployError
from danet_deploy.files import write_json

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")  # what a TensorRT engine file is called
SIDECAR_SCHEMA = 3  # 2: engine_layers (the precision audit), platform, GPU memory; 3: layers per device
READABLE_SCHEMAS = (2, 3)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^\d+\.\d+(\.\d+){0,2}")
_CAPABILITY = re.compile(r"^\d+\.\d+$")
_BUILD_PATHS = ("strongly typed", "weakly typed")
_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class EngineSidecar:
    tensorrt_version: str  # trt.__version__ at build time, as many parts as it has ("10.3.0.26")
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
    build_options: dict[str, Any]  # BuildOptions.to_dict()
    build_seconds: float
    engine_sha256: str
    created: str
    pinned_fp32_layers: list[str] = field(default_factory=list)
    input_spec: dict[str, Any] = field(default_factory=dict)  # InputSpec.to_dict() of the network ONNX
    engine_layers: dict[str, Any] = field(default_factory=dict)  # audit.EngineAudit.to_dict()
    platform: str | None = None  # "Jetson AGX Orin Developer Kit (JetPack 6.2, Jetson Linux 36.4.3)", "x86_64"
    gpu_memory_bytes: int | None = None
    schema: int = SIDECAR_SCHEMA

    @property
    def audit(self) -> EngineAudit | None:
        """The layers per precision recorded after the build; None for sidecars from before the audit."""
        return EngineAudit.from_dict(self.engine_layers) if self.engine_layers else None

    @property
    def options(self) -> BuildOptions:
        """The build options, typed (validated when the sidecar was read)."""
        return BuildOptions.from_dict(self.build_options)

    def engine_bytes(self, engine: str | os.PathLike[str]) -> bytes:
        """The engine file's bytes, refused (exit 2) when they are not the engine this sidecar describes."""
        data = Path(engine).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.engine_sha256:
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


class _Invalid(Exception):
    """One field of a sidecar that is not what a sidecar holds (the message names it)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(ok: bool, name: str, what: str, value: Any) -> None:
    if not ok:
        raise _Invalid(f"{name} must be {what}, got {json.dumps(value)[:60]}")


def _check_profile(profiles: Any) -> None:
    _expect(isinstance(profiles, list) and len(profiles) == 1, "profiles", "a list of one profile", profiles)
    (profile,) = profiles
    _expect(isinstance(profile, dict) and len(profile) >= 1, "profiles[0]", "an object of inputs", profile)
    for name, shapes in profile.items():
        ok = isinstance(shapes, list) and len(shapes) == 3
        ok = ok and all(isinstance(s, list) and s and all(_is_int(d) and d > 0 for d in s) for s in shapes)
        ok = ok and len({len(s) for s in shapes}) == 1
        ok = ok and all(a <= b <= c for a, b, c in zip(*shapes))
        _expect(
            ok, f"profiles[0][{name!r}]", "[min, opt, max] of equal-length positive dims, min <= opt <= max", shapes
        )


def _check_options(options: Any) -> None:
    _expect(isinstance(options, dict), "build_options", "an object", options)
    known = {f.name: f for f in fields(BuildOptions)}
    flags = ("gpu_fallback", "version_compatible", "tf32")
    for key, value in options.items():
        name = f"build_options.{key}"
        if key not in known:
            continue  # a field of a later danet-deploy: ignored
        if key in flags:
            _expect(isinstance(value, bool), name, "true or false", value)
        elif key == "precision":
            _expect(value in _PRECISIONS, name, "fp32, fp16 or int8", value)
        elif key.endswith("_shape"):
            ok = value is None or (isinstance(value, list) and bool(value) and all(_is_int(d) and d > 0 for d in value))
            _expect(ok, name, "null or positive dims", value)
        elif key in ("workspace_mib", "dla_core", "builder_opt_level"):
            low = 1 if key == "workspace_mib" else 0
            ok = value is None or (_is_int(value) and value >= low and (key != "builder_opt_level" or value <= 5))
            _expect(ok, name, "null or an integer in range", value)
        elif key == "hardware_compat":
            _expect(value in (None, "ampere+", "same-cc"), name, "null, ampere+ or same-cc", value)
        else:
            _expect(value is None or isinstance(value, str), name, "null or a string", value)


def validate_sidecar(data: Any) -> EngineSidecar:
    """The one check of a sidecar's contents: every field with its exact type and range (_Invalid names the first
    field that is wrong)."""
    _expect(isinstance(data, dict), "the sidecar", "a JSON object", data)
    schema = data.get("schema")
    _expect(_is_int(schema) and schema in READABLE_SCHEMAS, "schema", f"one of {READABLE_SCHEMAS}", schema)
    required = [f.name for f in fields(EngineSidecar) if f.default is MISSING and f.default_factory is MISSING]
    for name in required:
        _expect(name in data, name, "present", None)
    for name in ("gpu_name", "source_onnx", "created"):
        _expect(isinstance(data[name], str) and data[name] != "", name, "a non-empty string", data[name])
    version = data["tensorrt_version"]
    _expect(isinstance(version, str) and bool(_VERSION.match(version)), "tensorrt_version", "like 10.3.0.26", version)
    capability = data["compute_capability"]
    _expect(
        isinstance(capability, str) and bool(_CAPABILITY.match(capability)),
        "compute_capability",
        "like 8.7",
        capability,
    )
    for name in ("cuda_version", "platform"):
        _expect(data.get(name) is None or isinstance(data[name], str), name, "null or a string", data.get(name))
    _expect(data["precision"] in _PRECISIONS, "precision", "fp32, fp16 or int8", data["precision"])
    _expect(data["build_path"] in _BUILD_PATHS, "build_path", "strongly typed or weakly typed", data["build_path"])
    _check_profile(data["profiles"])
    for name in ("source_onnx_sha256", "network_onnx_sha256", "engine_sha256"):
        _expect(
            isinstance(data[name], str) and bool(_HEX64.match(data[name])), name, "a sha256 (64 hex digits)", data[name]
        )
    config = data["model_config"]
    _expect(config is None or isinstance(config, dict), "model_config", "null or an object", config)
    _check_options(data["build_options"])
    seconds = data["build_seconds"]
    ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0
    _expect(ok, "build_seconds", "a number >= 0", seconds)
    pinned = data.get("pinned_fp32_layers", [])
    _expect(
        isinstance(pinned, list) and all(isinstance(p, str) for p in pinned),
        "pinned_fp32_layers",
        "a list of names",
        pinned,
    )
    for name in ("input_spec", "engine_layers"):
        _expect(isinstance(data.get(name, {}), dict), name, "an object", data.get(name))
    memory = data.get("gpu_memory_bytes")
    _expect(memory is None or (_is_int(memory) and memory >= 0), "gpu_memory_bytes", "null or bytes >= 0", memory)
    known = {f.name for f in fields(EngineSidecar)}
    sidecar = EngineSidecar(**{k: v for k, v in data.items() if k in known})
    try:
        audit = sidecar.audit
    except TypeError as exc:
        raise _Invalid(f"engine_layers is not a precision audit ({exc})") from None
    if audit is not None:
        counts = [audit.compute_layers, *audit.devices.values()]
        ok = all(isinstance(c, dict) and all(_is_int(n) and n >= 0 for n in c.values()) for c in counts)
        _expect(ok and _is_int(audit.total_layers), "engine_layers", "layer counts", data["engine_layers"])
    return sidecar


def read_sidecar(engine: str | os.PathLike[str]) -> EngineSidecar:
    """The engine's sidecar, validated (exit 2 naming the file and the field when it is not a valid sidecar)."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise BadInputError(f"{path}: no sidecar next to the engine (build engines with `danet-deploy build-engine`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: not a valid engine sidecar (not JSON: {type(exc).__name__})") from None
    try:
        return validate_sidecar(data)
    except _Invalid as exc:
        raise BadInputError(f"{path}: not a valid engine sidecar: {exc}") from None


# Version-compatible engines run on later releases of the same major and on the next major (TensorRT 11.4
# support matrix: 8 -> 10, 10 -> 11; 9.x was never a general release).
NEXT_MAJOR = {8: 10, 10: 11}


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def check_version(sidecar: EngineSidecar, running_version: str, engine: str | os.PathLike[str]) -> None:
    """Refuse (exit 2, before deserializing) an engine this TensorRT cannot load, with what to do."""
    built, now = full_version(sidecar.tensorrt_version), full_version(running_version)
    if sidecar.options.version_compatible:
        majors = (built[0], NEXT_MAJOR.get(built[0]))
        if now[0] not in majors or now < built:
            runs_on = f"{built[0]}.x >= {sidecar.tensorrt_version}" + (
                f" and {majors[1]}.x" if majors[1] is not None else ""
            )
            raise BadInputError(
                f"{engine}: rebuild: built version-compatible with TensorRT {sidecar.tensorrt_version}, which runs "
                f"on {runs_on}; running {running_version}"
            )
        return
    # Not version-compatible: TensorRT wants the same major.minor.patch.build ("expecting library version
    # 8.6.1.2 got 8.6.0.12"); compare every part both versions name.
    common = min(len(built), len(now))
    if built[:common] != now[:common]:
        raise BadInputError(
            f"{engine}: rebuild: built with TensorRT {_version_text(built)}, running {_version_text(now)} (an engine "
            "runs only on the TensorRT release that built it unless built version-compatible)"
        )


def check_compatible(sidecar: EngineSidecar, running: RunningSystem, engine: str | os.PathLike[str]) -> list[str]:
    """Raise a DeployError naming what differs when the engine cannot run on this system; return warnings."""
    check_version(sidecar, running.tensorrt_version, engine)
    options = sidecar.options
    warnings: list[str] = []
    compat = options.hardware_compat
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
        warnings.append(
            f"{engine}: built on {sidecar.gpu_name}, running on {running.gpu_name} (same SM); rebuild for best speed"
        )
    return warnings


def _major_minor(version: str) -> tuple[int, int]:
    parts = ([*version.split("."), "0"])[:2]
    return int(parts[0]), int(parts[1])
