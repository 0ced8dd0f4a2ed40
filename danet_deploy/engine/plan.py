"""The TensorRT build plan: which precision path, flags, profiles and pinned layers, decided without TensorRT.

`--fp16` / `--int8` mean the same to the user on every TensorRT version; the plan picks the path the
installed (or named) version needs:
- strongly typed (TensorRT >= 10.12, the only mode of 11): precision comes from the ONNX tensor types, so
  FP16 builds from an FP16 ONNX and INT8 from a Q/DQ ONNX, with no precision flags (a `--fp16` flag on 11
  would be ignored and silently yield an FP32 engine);
- weakly typed (8.6 / 10.3 on JetPack 6): the FP32 (or Q/DQ) ONNX with FP16 / INT8+FP16 builder flags, and
  the overflow-prone attention layers (CAM energy, its softmax and product) pinned to FP32 with
  OBEY_PRECISION_CONSTRAINTS.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from danet_deploy.artifact import OnnxModel, Precision
from danet_deploy.errors import BadInputError
from danet_deploy.graph.sites import find_light_sites, find_sites

STRONGLY_TYPED_FROM = (10, 12)
HARDWARE_COMPAT_FROM = {"ampere+": (8, 6), "same-cc": (10, 9)}  # every supported version has ampere+
# TensorRT 10.7 was the last 10.x with DLA support; it returns with 11.4 (TensorRT 11.4 documentation).
NO_DLA_VERSIONS = ((10, 8), (11, 4))  # [from, until)
DEFAULT_PLAN_VERSION = "11.4"  # what `pip install tensorrt` gives on datacenter machines in late 2026


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a supported TensorRT release: 8.6, 10.x or 11.x (9.x was an LLM-only preview line)."""
    parts = text.strip().split(".")
    try:
        version = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise BadInputError(f"TensorRT version must look like 10.3 or 11.4, got {text!r}") from None
    if not ((version[0] == 8 and version[1] >= 6) or version[0] in (10, 11)):
        raise BadInputError(f"TensorRT {text}: danet-deploy builds with TensorRT 8.6, 10.x and 11.x")
    return version


@dataclass(frozen=True)
class BuildOptions:
    precision: Precision = Precision.FP32
    min_shape: tuple[int, ...] | None = None
    opt_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    hardware_compat: str | None = None  # None | "ampere+" | "same-cc"
    builder_opt_level: int | None = None
    calib: str | None = None  # calibration images for INT8 when the ONNX is not Q/DQ yet


@dataclass
class BuildPlan:
    tensorrt_version: str
    path: str  # "strongly typed" | "weakly typed"
    precision: str
    source_onnx: str
    source_precision: str
    network_onnx: str  # what TensorRT parses
    prepare: list[str]  # steps that produce network_onnx from source_onnx
    network_flags: list[str]
    builder_flags: list[str]
    profile: dict[str, list[list[int]]]  # input -> [min, opt, max]
    pinned_fp32_layers: list[str]
    options: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _profile(model: OnnxModel, options: BuildOptions) -> dict[str, list[list[int]]]:
    """min/opt/max for the input: given explicitly, else the static shape or the model config's size (batch 1)."""
    spec = model.input_spec
    dims = spec.shape(spec.batch or 0, (spec.height or 0, spec.width or 0))  # 0 marks a dynamic dim
    default = spec.shape(spec.batch or 1, model.input_size) if spec.static_size or model.has_config else []
    shapes = []
    for given, option in (
        (options.min_shape, "--min-shape"),
        (options.opt_shape, "--opt-shape"),
        (options.max_shape, "--max-shape"),
    ):
        shape = list(given) if given else (list(shapes[-1]) if shapes and option != "--min-shape" else default)
        if not shape:
            raise BadInputError(f"the ONNX input has dynamic dims and no model config: give {option}")
        for i, (d, s) in enumerate(zip(dims, shape)):
            if d and d != s:
                raise BadInputError(f"{option} {'x'.join(map(str, shape))}: dim {i} is fixed to {d} in the ONNX model")
        shapes.append(shape)
    if options.opt_shape is None and options.max_shape is not None:
        shapes[1] = list(shapes[0])  # opt defaults to min when only a range is given
    lo, opt, hi = shapes
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise BadInputError(f"profile must satisfy min <= opt <= max in every dim, got {lo} / {opt} / {hi}")
    return {spec.input_name: [lo, opt, hi]}


def _attention_layers(model: onnx.ModelProto) -> list[str]:
    """ONNX node names (TensorRT layer names follow them) of CAM, whose energy overflows FP16, and of GroupNorm
    (statistics over N positions; TensorRT itself advises FP32 for normalization layers)."""
    sites = [*find_sites(model), *find_light_sites(model)]
    return [name for s in sites if s.kind in ("cam", "group-norm") for name in s.nodes]


def _check_dla(options: BuildOptions, precision: Precision, version: tuple[int, int], fp32_layers: list[str]) -> None:
    """DLA requests TensorRT can honour: FP16/INT8 only, a TensorRT build with DLA, FP32 parts only with GPU
    fallback (DLA has no FP32 kernels). Whether this platform has DLA is checked at build time."""
    if precision == "fp32":
        raise BadInputError("DLA runs only FP16 or INT8: add --fp16 or --int8 to use --dla-core")
    start, end = NO_DLA_VERSIONS
    if start <= version < end:
        raise BadInputError(
            f"--dla-core: TensorRT {version[0]}.{version[1]} has no DLA support (none from 10.8 to 11.3; JetPack 6 "
            "on Orin ships TensorRT 8.6 / 10.3, which have it)"
        )
    if fp32_layers and not options.gpu_fallback:
        raise BadInputError(
            f"--dla-core without --gpu-fallback: {len(fp32_layers)} layers stay FP32 (CAM attention, GroupNorm: "
            f"{fp32_layers[0]}, ...) and DLA has no FP32 kernels; add --gpu-fallback"
        )


def plan_build(
    onnx_path: str | os.PathLike[str] | OnnxModel, options: BuildOptions, tensorrt_version: str
) -> BuildPlan:
    """Decide everything about a build without TensorRT; raises BadInputError for impossible requests."""
    source = onnx_path if isinstance(onnx_path, OnnxModel) else OnnxModel.load(onnx_path, external_data=False)
    path, model = source.path, source.proto
    version = parse_version(tensorrt_version)
    try:
        precision = Precision(options.precision)
    except ValueError:
        raise BadInputError(f"unknown precision {options.precision!r}; choose fp32, fp16 or int8") from None
    source_precision = source.precision
    strongly_typed = version >= STRONGLY_TYPED_FROM
    notes: list[str] = []
    prepare: list[str] = []
    network = str(path)
    network_flags: list[str] = ["STRONGLY_TYPED"] if strongly_typed else []
    builder_flags: list[str] = []
    pinned: list[str] = []

    if source.quantized_for == "onnxruntime":
        raise BadInputError(
            f"{path} is INT8 for ONNX Runtime's CPU kernels (uint8 activations with zero points, which TensorRT "
            "rejects); build from the FP32 ONNX, or a Q/DQ model from `quantize --target tensorrt`"
        )
    if source_precision != "fp32" and source_precision != precision:
        raise BadInputError(f"{path} is already a {source_precision} model; build it with --{source_precision}")
    if precision == "int8" and source_precision != "int8" and not options.calib:
        raise BadInputError("--int8 needs calibration images (--calib DIR) or a Q/DQ ONNX from `danet-deploy quantize`")
    if precision == "fp16" and source_precision == "fp32":
        if strongly_typed:
            network = str(path.with_suffix(".fp16.onnx"))
            prepare.append(f"FP16 ONNX with FP32 I/O, overflow-prone parts (CAM) kept FP32 -> {network}")
        else:
            builder_flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            pinned = _attention_layers(model)
    elif precision == "int8":
        if source_precision == "fp32":
            network = str(path.with_suffix(".int8.onnx"))
            prepare.append(f"Q/DQ ONNX (symmetric, per-channel weights) calibrated on {options.calib} -> {network}")
        if not strongly_typed:
            # Explicit quantization: Q/DQ decides INT8; FP16 lets the rest run in half precision.
            builder_flags += ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]
            pinned = _attention_layers(model)
    if strongly_typed and version >= (11, 0):
        notes.append("TensorRT 11 builds only strongly typed networks: precision comes from the ONNX tensor types")

    if options.dla_core is not None:
        _check_dla(options, precision, version, pinned or _attention_layers(model))
        notes.append(
            f"DLA core {options.dla_core} (Jetson Orin; Jetson Thor and Orin Nano have none): "
            + ("layers DLA cannot run fall back to the GPU" if options.gpu_fallback else "every layer must run on DLA")
        )
    elif options.gpu_fallback:
        raise BadInputError("--gpu-fallback only applies with --dla-core")
    if options.hardware_compat:
        needed = HARDWARE_COMPAT_FROM.get(options.hardware_compat)
        if needed is None:
            raise BadInputError(f"--hardware-compat must be ampere+ or same-cc, got {options.hardware_compat!r}")
        if version < needed:
            raise BadInputError(
                f"--hardware-compat {options.hardware_compat} needs TensorRT >= {needed[0]}.{needed[1]}"
            )
    if options.builder_opt_level is not None and not 0 <= options.builder_opt_level <= 5:
        raise BadInputError("--builder-opt-level must be 0..5")

    return BuildPlan(
        tensorrt_version=tensorrt_version,
        path="strongly typed" if strongly_typed else "weakly typed",
        precision=precision.value,
        source_onnx=str(path),
        source_precision=source_precision.value,
        network_onnx=network,
        prepare=prepare,
        network_flags=network_flags,
        builder_flags=builder_flags,
        profile=_profile(source, options),
        pinned_fp32_layers=pinned,
        options=asdict(options),
        notes=notes,
    )
