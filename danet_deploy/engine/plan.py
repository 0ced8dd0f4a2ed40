"""The TensorRT build plan: which precision path, flags, profiles and pinned layers, decided without TensorRT.

`--fp16` / `--int8` mean the same to the user on every TensorRT version; the plan picks the path the
installed (or named) version needs:
- strongly typed (TensorRT >= 10.12, the only mode of 11): precision comes from the ONNX tensor types, so
  FP16 builds from an FP16 ONNX and INT8 from a Q/DQ ONNX whose layers outside Q/DQ are FP16 (the CAM chain
  and GroupNorm FP32), with no precision flags (a `--fp16` flag on 11 would be ignored and silently yield an
  FP32 engine);
- weakly typed (8.6 / 10.3 on JetPack 6): the FP32 (or Q/DQ) ONNX with FP16 / INT8+FP16 builder flags, and
  the overflow-prone layers (the whole CAM chain with the Expand of its row max, GroupNorm) pinned to FP32 with
  OBEY_PRECISION_CONSTRAINTS;
- implicit INT8 (DLA on 8.6 / 10.3, and TensorRT 8.6 from an FP32 ONNX): the FP32 network with INT8+FP16 flags
  and a calibration cache written from the scales of a Q/DQ model (`calibration_cache.py`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import onnx

from danet_deploy.artifact import OnnxModel, Precision
from danet_deploy.errors import BadInputError

STRONGLY_TYPED_FROM = (10, 12)
HARDWARE_COMPAT_FROM = {"ampere+": (8, 6), "same-cc": (10, 9)}  # every supported version has ampere+
# TensorRT 10.7 was the last 10.x with DLA support; it returns with 11.4.1 on Jetson AGX Orin with JetPack 7.2.2+,
# strongly typed (TensorRT 11.4.1 release notes); 11.4.0 has none.
NO_DLA_VERSIONS = ((10, 8), (11, 4))  # [from, until)
DLA_BACK_IN = (11, 4, 1)
TRT86_MAX_OPSET = 17  # onnx-tensorrt 8.6 ignores the axes input of opset >= 18 ReduceMax/ReduceMean (fixed in 10.0)
DEFAULT_PLAN_VERSION = "11.4"  # what `pip install tensorrt` gives on datacenter machines in late 2026
WEAKLY_TYPED = "weakly typed"
STRONGLY_TYPED = "strongly typed"


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a supported TensorRT release: 8.6, 10.x or 11.x (9.x was an LLM-only preview line)."""
    version = full_version(text)
    if not ((version[0] == 8 and version[1] >= 6) or version[0] in (10, 11)):
        raise BadInputError(f"TensorRT {text}: danet-deploy builds with TensorRT 8.6, 10.x and 11.x")
    return version[0], version[1]


def full_version(text: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); as many parts as given (at least major.minor); a local tag ('8.6.1.post1')
    ends the numbers."""
    parts: list[int] = []
    for part in text.strip().split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    if len(parts) < 2 and not (len(parts) == 1 and text.strip().isdigit()):
        raise BadInputError(f"TensorRT version must look like 10.3 or 11.4, got {text!r}")
    return tuple(parts) if len(parts) >= 2 else (parts[0], 0)


def lint_target(version: tuple[int, int]) -> str:
    """The `inspect --target` name whose readiness lint fits this TensorRT release."""
    if version < (10, 0):
        return "trt8.6"
    if version < (10, 14):
        return "trt10.3"
    return "trt10.14" if version < (11, 0) else "trt11"


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked of a build; the plan decides how (the same request means the same on every release).

    Attributes:
        precision: fp32, fp16 or int8 (a string is accepted and checked).
        min_shape / opt_shape / max_shape: the optimization profile (default: the model's static shape or its
            config's size, batch 1; opt defaults to min and max to opt).
        workspace_mib: workspace memory pool limit in MiB (default: TensorRT's).
        timing_cache: timing cache file to load (when it exists, refused when TensorRT rejects it) and update.
        dla_core: build for this DLA core (Jetson Orin); INT8 on DLA uses implicit quantization.
        gpu_fallback: with dla_core, let layers DLA cannot run go to the GPU.
        version_compatible: the engine runs on later TensorRT releases (8 -> 10 and 10 -> 11 included).
        hardware_compat: None, "ampere+" or "same-cc": the engine runs on other GPUs.
        builder_opt_level: builder optimization level 0-5 (default: TensorRT's, 3).
        calib: calibration images for INT8 when the ONNX is not Q/DQ yet.
        network_onnx: where to write the network ONNX the plan prepares (FP16 / Q/DQ); it must not exist. Default:
            a scratch folder removed after the build, so a user's `m.fp16.onnx` is never replaced.
        tf32: allow TF32 for FP32 layers (trtexec's default; Polygraphy clears it unless asked).
    """

    precision: Precision = Precision.FP32
    min_shape: tuple[int, ...] | None = None
    opt_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    hardware_compat: str | None = None
    builder_opt_level: int | None = None
    calib: str | None = None
    network_onnx: str | None = None
    tf32: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError:
            raise BadInputError(f"unknown precision {self.precision!r}; choose fp32, fp16 or int8") from None

    def check(self) -> None:
        """BadInputError for values no TensorRT release accepts (release-specific rules are the plan's)."""
        for name in ("min_shape", "opt_shape", "max_shape"):
            shape = getattr(self, name)
            if shape is not None and (not shape or any(not isinstance(d, int) or d < 1 for d in shape)):
                raise BadInputError(f"profile {name.replace('_', ' ')} must be positive dims, got {shape}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise BadInputError(f"workspace must be at least 1 MiB, got {self.workspace_mib}")
        if self.dla_core is not None and self.dla_core < 0:
            raise BadInputError(f"DLA core must be 0 or more, got {self.dla_core}")
        if self.gpu_fallback and self.dla_core is None:
            raise BadInputError("GPU fallback only applies to a DLA build (give a DLA core)")
        if self.hardware_compat not in (None, *HARDWARE_COMPAT_FROM):
            raise BadInputError(f"hardware compatibility must be ampere+ or same-cc, got {self.hardware_compat!r}")
        if self.builder_opt_level is not None and not 0 <= self.builder_opt_level <= 5:
            raise BadInputError(f"builder optimization level must be 0..5, got {self.builder_opt_level}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["precision"] = self.precision.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildOptions:
        """The options as a sidecar records them (fields added later take their defaults)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            k: (tuple(v) if k.endswith("_shape") and v is not None else v) for k, v in data.items() if k in known
        }
        return cls(**values)


@dataclass
class BuildPlan:
    """Everything about a build, decided without TensorRT (`build-engine --dry-run` prints it)."""

    tensorrt_version: str
    path: str  # STRONGLY_TYPED | WEAKLY_TYPED
    precision: str
    source_onnx: str
    source_precision: str
    network_onnx: str  # what TensorRT parses ("" until the scratch folder exists, when the plan prepares it)
    prepare: list[str]  # steps that produce network_onnx from source_onnx
    network_flags: list[str]
    builder_flags: list[str]
    profile: dict[str, list[list[int]]]  # input -> [min, opt, max]
    pinned_fp32_layers: list[str]  # network ONNX node names kept FP32 (TensorRT names layers after them)
    options: BuildOptions
    notes: list[str] = field(default_factory=list)
    # INT8 by implicit quantization (DLA on weakly typed releases, TensorRT 8.6 from an FP32 ONNX): the Q/DQ ONNX
    # whose activation scales become TensorRT's calibration cache for the FP32 network ("" until prepared).
    implicit_int8: bool = False
    scales_onnx: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = self.options.to_dict()
        return data


def _profile(model: OnnxModel, options: BuildOptions) -> dict[str, list[list[int]]]:
    """min/opt/max for the input: given explicitly, else the static shape or the model config's size (batch 1)."""
    spec = model.input_spec
    dims = spec.shape(spec.batch or 0, (spec.height or 0, spec.width or 0))  # 0 marks a dynamic dim
    default = spec.shape(spec.batch or 1, model.input_size) if spec.static_size or model.has_config else []
    shapes: list[list[int]] = []
    for given, which in ((options.min_shape, "min"), (options.opt_shape, "opt"), (options.max_shape, "max")):
        shape = list(given) if given else (list(shapes[-1]) if shapes and which != "min" else default)
        if not shape:
            raise BadInputError(f"the ONNX input has dynamic dims and no model config: give the profile {which} shape")
        for i, (d, s) in enumerate(zip(dims, shape)):
            if d and d != s:
                raise BadInputError(
                    f"profile {which} shape {'x'.join(map(str, shape))}: dim {i} is fixed to {d} in the ONNX model"
                )
        shapes.append(shape)
    if options.opt_shape is None and options.max_shape is not None:
        shapes[1] = list(shapes[0])  # opt defaults to min when only a range is given
    lo, opt, hi = shapes
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise BadInputError(f"profile must satisfy min <= opt <= max in every dim, got {lo} / {opt} / {hi}")
    return {spec.input_name: [lo, opt, hi]}


def pinned_layers(model: onnx.ModelProto) -> list[str]:
    """Node names (TensorRT names layers after them) kept FP32 in a weakly typed build: the whole CAM chain, energy
    MatMul through the final MatMul with the Expand that broadcasts the row max (its values reach the energy's,
    beyond FP16's 65504), and GroupNorm (statistics over all positions). The same set the FP16 ONNX keeps FP32."""
    from danet_deploy.precision.fp16 import cam_protected_nodes

    return cam_protected_nodes(model)


def _check_dla(
    options: BuildOptions,
    precision: Precision,
    version: tuple[int, ...],
    fp32_layers: list[str],
    profile: dict[str, list[list[int]]],
) -> None:
    """DLA requests TensorRT can honour: FP16/INT8 only, a TensorRT build with DLA, a static profile, FP32 parts
    only with GPU fallback (DLA has no FP32 kernels). Whether this platform has DLA is checked at build time."""
    if precision == Precision.FP32:
        raise BadInputError("DLA runs only FP16 or INT8: choose fp16 or int8 for a DLA build")
    start, end = NO_DLA_VERSIONS
    if start <= version[:2] < end:
        raise BadInputError(
            f"TensorRT {version[0]}.{version[1]} has no DLA support (none from 10.8 to 11.3; JetPack 6 on Orin ships "
            "TensorRT 8.6 / 10.3, which have it)"
        )
    if version[:2] == DLA_BACK_IN[:2] and len(version) >= 3 and version[:3] < DLA_BACK_IN:
        raise BadInputError(
            "TensorRT 11.4.0 has no DLA support; DLA returns in 11.4.1 (Jetson AGX Orin with JetPack 7.2.2+, "
            "strongly typed networks)"
        )
    for name, (lo, opt, hi) in profile.items():
        if not lo == opt == hi:
            raise BadInputError(f"DLA needs a static profile (min = opt = max); {name} has {lo} / {opt} / {hi}")
    if fp32_layers and not options.gpu_fallback:
        raise BadInputError(
            f"a DLA build without GPU fallback: {len(fp32_layers)} layers stay FP32 (CAM attention, GroupNorm: "
            f"{fp32_layers[0]}, ...) and DLA has no FP32 kernels; allow GPU fallback"
        )


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def plan_build(
    onnx_path: str | os.PathLike[str] | OnnxModel, options: BuildOptions, tensorrt_version: str
) -> BuildPlan:
    """Decide everything about a build without TensorRT; raises BadInputError for impossible requests."""
    options.check()
    source = onnx_path if isinstance(onnx_path, OnnxModel) else OnnxModel.load(onnx_path, external_data=False)
    path, model = source.path, source.proto
    version = parse_version(tensorrt_version)
    full = full_version(tensorrt_version)
    precision = options.precision
    source_precision = source.precision
    strongly_typed = version >= STRONGLY_TYPED_FROM
    dla = options.dla_core is not None
    notes: list[str] = []
    prepare: list[str] = []
    network = str(path)
    network_flags: list[str] = ["STRONGLY_TYPED"] if strongly_typed else []
    builder_flags: list[str] = []
    pinned: list[str] = []
    implicit = False
    prepared = options.network_onnx or ""  # "" = a scratch folder, chosen at build time

    if source.quantized_for == "onnxruntime":
        raise BadInputError(
            f"{path} is INT8 for ONNX Runtime's CPU kernels (uint8 activations with zero points, which TensorRT "
            "rejects); build from the FP32 ONNX, or a Q/DQ model from `quantize --target tensorrt`"
        )
    if source_precision != "fp32" and source_precision != precision:
        raise BadInputError(f"{path} is already a {source_precision} model; build it as {source_precision}")
    if precision == "int8" and source_precision != "int8" and not options.calib:
        raise BadInputError("an INT8 engine needs calibration images or a Q/DQ ONNX from `danet-deploy quantize`")
    if precision == "fp16" and source_precision == "fp32":
        if strongly_typed:
            network = prepared
            prepare.append(f"FP16 ONNX with FP32 I/O, CAM chain and GroupNorm kept FP32 -> {prepared or 'scratch'}")
        else:
            builder_flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            pinned = pinned_layers(model)
    elif precision == "int8":
        # DLA runs INT8 only by implicit quantization (TensorRT issue 2222); onnx-tensorrt 8.6 misreads the opset-19
        # Q/DQ models ModelOpt writes. Both get the FP32 network with a calibration cache from the same scales.
        implicit = not strongly_typed and source_precision == "fp32" and (dla or version < (10, 0))
        if source_precision == "int8" and not strongly_typed and dla:
            raise BadInputError(
                f"{path} is a Q/DQ model: DLA runs INT8 only by implicit quantization (explicit Q/DQ regions leave the "
                "DLA); build from the FP32 ONNX with calibration images"
            )
        if source_precision == "int8" and version < (10, 0) and _opset(model) > TRT86_MAX_OPSET:
            raise BadInputError(
                f"{path} is a Q/DQ model at opset {_opset(model)}: TensorRT 8.6's ONNX parser ignores the axes input "
                f"of opset >= 18 ReduceMax/ReduceMean and reduces over all axes; build from the FP32 ONNX (opset <= "
                f"{TRT86_MAX_OPSET}) with calibration images, which TensorRT 8.6 gets as implicit INT8"
            )
        if implicit:
            prepare.append(f"Q/DQ ONNX calibrated on {options.calib}, for its activation scales -> scratch")
            prepare.append("TensorRT calibration cache from those scales (written for the running TensorRT)")
            builder_flags += ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]
            pinned = pinned_layers(model)
            notes.append(
                "implicit INT8: the FP32 network with a calibration cache from the Q/DQ scales, as NVIDIA's Q/DQ "
                "translator does" + (" (DLA runs INT8 only this way)" if dla else " (TensorRT 8.6)")
            )
        else:
            if source_precision == "fp32":
                network = prepared
                prepare.append(
                    f"Q/DQ ONNX (symmetric, per-channel weights) calibrated on {options.calib}"
                    + (", FP16 outside Q/DQ with the CAM chain FP32" if strongly_typed else "")
                    + f" -> {prepared or 'scratch'}"
                )
            if not strongly_typed:
                # Explicit quantization: Q/DQ decides INT8; FP16 lets the rest run in half precision.
                builder_flags += ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]
                pinned = pinned_layers(model)
    if strongly_typed and version >= (11, 0):
        notes.append("TensorRT 11 builds only strongly typed networks: precision comes from the ONNX tensor types")
    entry = source.metadata.get("precision")
    qdq_fp32 = isinstance(entry, dict) and entry.get("unquantized_precision", "fp32") == "fp32"
    if strongly_typed and source_precision == "int8" and qdq_fp32:
        notes.append(
            "this Q/DQ model keeps the layers outside Q/DQ in FP32, which a strongly typed build runs in FP32 "
            "(slower than an FP16 engine); build from the FP32 ONNX with calibration images for FP16 there"
        )
    if pinned and network != str(path):
        notes.append("pinned layers are named from the source ONNX here and taken again from the network ONNX")

    profile = _profile(source, options)
    if dla:
        _check_dla(options, precision, full, pinned or pinned_layers(model), profile)
        strongly_dla = version >= (11, 0)
        notes.append(
            f"DLA core {options.dla_core} (Jetson Orin; Jetson Thor and Orin Nano have none): "
            + ("layers DLA cannot run fall back to the GPU" if options.gpu_fallback else "every layer must run on DLA")
            + (
                "; TensorRT 11.4.1+ runs DLA strongly typed, on Jetson AGX Orin with JetPack 7.2.2+"
                if strongly_dla
                else ""
            )
        )
    if options.hardware_compat:
        needed = HARDWARE_COMPAT_FROM[options.hardware_compat]
        if version < needed:
            raise BadInputError(
                f"hardware compatibility {options.hardware_compat} needs TensorRT >= {needed[0]}.{needed[1]}"
            )

    return BuildPlan(
        tensorrt_version=tensorrt_version,
        path=STRONGLY_TYPED if strongly_typed else WEAKLY_TYPED,
        precision=precision.value,
        source_onnx=str(path),
        source_precision=source_precision.value,
        network_onnx=network,
        prepare=prepare,
        network_flags=network_flags,
        builder_flags=builder_flags,
        profile=profile,
        pinned_fp32_layers=pinned,
        options=options,
        notes=notes,
        implicit_int8=implicit,
        scales_onnx="",
    )
