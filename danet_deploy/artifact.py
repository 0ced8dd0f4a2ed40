"""The ONNX model artifact every stage after export takes and returns: loaded once from a path.

`OnnxModel.load(path)` reads the graph and the danet-deploy metadata once and answers what later stages
need: the model config, provenance, the input spec (the one owner of input names, layout, dtype and
static or dynamic size), the precision (our metadata first; the graph is read only for foreign files),
the content hash, and ONNX Runtime sessions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from danet_deploy.config import ModelConfig
from danet_deploy.data.preprocess import normalize
from danet_deploy.errors import BadInputError
from danet_deploy.files import sha256_file

META_CONFIG = "danet_deploy.model_config"
META_PROVENANCE = "danet_deploy.provenance"
META_IO = "danet_deploy.io"
META_GRAPH = "danet_deploy.graph"
META_PRECISION = "danet_deploy.precision"
_META_KEYS = {
    META_CONFIG: "model_config",
    META_PROVENANCE: "provenance",
    META_IO: "io",
    META_GRAPH: "graph",
    META_PRECISION: "precision",
}

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.UINT8: "uint8"}


class Precision(str, Enum):
    """What a model computes in; selects verify thresholds and the engine build path."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


# Who an INT8 model was quantized for (its precision metadata's "target"): the Q/DQ placement differs.
INT8_TARGETS = {"tensorrt": "TensorRT", "onnxruntime": "ONNX Runtime"}


def precision_label(precision: Precision | str, quantized_for: str | None = None) -> str:
    """'fp16', 'int8 (TensorRT)', 'int8 (ONNX Runtime)': what tables show for a backend."""
    name = Precision(precision).value
    return f"{name} ({INT8_TARGETS[quantized_for]})" if quantized_for in INT8_TARGETS else name


@dataclass(frozen=True)
class InputSpec:
    """The image input and the outputs of a model: names, layout, dtype and (static or dynamic) shape.

    Layout "NCHW": float RGB normalized with the model config's mean/std, or with `normalized` False float RGB
    0-255 with the normalization inside the graph (export's `rgb255_input`, DeepStream's exact form). Layout
    "NHWC": uint8 RGB 0-255 with the preprocessing baked into the graph. A None dim is dynamic.
    """

    input_name: str = "image"
    output_names: tuple[str, ...] = ("logits",)
    layout: str = "NCHW"
    dtype: str = "float32"
    batch: int | None = None
    height: int | None = None
    width: int | None = None
    normalized: bool = True  # NCHW float input: False when it takes RGB 0-255 and the graph normalizes

    @property
    def uint8(self) -> bool:
        return self.layout == "NHWC"

    @property
    def static_size(self) -> tuple[int, int] | None:
        """(H, W) when fixed in the graph, else None."""
        return (self.height, self.width) if self.height and self.width else None

    def size_or(self, default: tuple[int, int]) -> tuple[int, int]:
        """The static (H, W), each dynamic dim taken from `default` (usually the model config's size)."""
        return (self.height or default[0], self.width or default[1])

    def shape(self, batch: int, size: tuple[int, int]) -> list[int]:
        return [batch, size[0], size[1], 3] if self.uint8 else [batch, 3, size[0], size[1]]

    def prepare(self, image: np.ndarray, config: ModelConfig) -> np.ndarray:
        """H x W x 3 uint8 RGB -> a batch of one in this input's layout and dtype."""
        if self.uint8:
            return np.ascontiguousarray(image[None])
        if not self.normalized:
            return np.ascontiguousarray(image.transpose(2, 0, 1)[None]).astype(self.dtype)
        return normalize(image, config).astype(self.dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_names"] = list(self.output_names)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(**{**data, "output_names": tuple(data.get("output_names", ("logits",)))})

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, where: str = "model") -> InputSpec:
        if len(model.graph.input) < 1:
            raise BadInputError(f"{where}: the ONNX graph has no input")
        value = model.graph.input[0]
        tensor = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(tensor.elem_type)
        if dtype is None:
            raise BadInputError(f"{where}: input {value.name!r} has unsupported element type {tensor.elem_type}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if len(dims) != 4:
            raise BadInputError(f"{where}: input {value.name!r} has rank {len(dims)}, expected 4")
        uint8 = dtype == "uint8"
        h, w = dims[1:3] if uint8 else dims[2:4]
        outputs = tuple(o.name for o in model.graph.output)
        return cls(value.name, outputs, "NHWC" if uint8 else "NCHW", dtype, dims[0], h, w)


def read_metadata(model: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, Any]:
    """The danet-deploy metadata of an ONNX model: {'model_config', 'provenance', 'io', ...} (missing absent)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return {name: json.loads(props[key]) for key, name in _META_KEYS.items() if key in props}


def write_metadata(model: onnx.ModelProto, entries: dict[str, Any]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in entries.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if key in existing:
            existing[key].value = text
        else:
            model.metadata_props.add(key=key, value=text)


def graph_precision(model: onnx.ModelProto) -> Precision:
    """Precision read from the graph (for files without our metadata): Q/DQ nodes int8, float16 compute fp16."""
    if {n.op_type for n in model.graph.node} & {"QuantizeLinear", "DequantizeLinear"}:
        return Precision.INT8
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in model.graph.node
    ):
        return Precision.FP16
    return Precision.FP32


def onnxruntime_session(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto,
    threads: int | None = None,
    optimize: bool = True,
    flush_denormals: bool = False,
    arena: bool = True,
    disabled_optimizers: list[str] | None = None,
    in_order: bool = False,
    layout: bool = True,
) -> Any:
    """An ONNX Runtime CPU session from a path, serialized bytes or a ModelProto; quiet logging.

    `flush_denormals`: the session's pool threads treat denormal floats as zero (the calling thread needs the
    same: `runners.onnxruntime.denormals_flushed`). `arena` False: activations go back to the system after each
    run (ONNX Runtime's CPU arena keeps a session's peak for its lifetime, which adds up when several sessions
    are open, as in checks and verify). `disabled_optimizers`: ONNX Runtime graph transformers not to run.
    `in_order`: run nodes in graph order when their inputs are ready (ONNX Runtime's priority-based order, and no
    NCHWc layout pass, which appends its nodes): a model whose every tensor also feeds a small probe node (a
    ReduceMin, say) otherwise runs the probes last and holds every tensor until then (4 GiB for DANet-R50 at
    512x1024 instead of 1). `layout` False: no NCHWc layout pass either (`simplify`'s checks: see there)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: failures arrive as exceptions, reported as one line by the caller
    opts.enable_cpu_mem_arena = arena
    if threads:
        opts.intra_op_num_threads = threads
    if flush_denormals:
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif in_order or not layout:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if in_order:
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else str(model)
    if isinstance(source, str) and not _utf8(source):
        raise BadInputError(f"{source}: ONNX Runtime cannot open a file whose name is not UTF-8; rename the file")
    extra = {"disabled_optimizers": disabled_optimizers} if disabled_optimizers else {}
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"], **extra)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8 (os.fsdecode's lone surrogates)
        return False
    return True


# Operator domains ONNX Runtime implements besides the default one (its contrib ops, classical ML).
ORT_DOMAINS = ("com.microsoft", "ai.onnx.ml", "com.microsoft.nchwc")


@dataclass
class OnnxModel:
    """An ONNX file and what danet-deploy knows about it, read once."""

    path: Path
    proto: onnx.ModelProto = field(repr=False)
    metadata: dict[str, Any]
    input_spec: InputSpec
    precision: Precision
    precision_source: str  # "metadata" (written by danet-deploy) or "graph" (read from a foreign file)

    @classmethod
    def load(cls, path: str | os.PathLike[str], external_data: bool = True) -> OnnxModel:
        """Load and validate; one-line BadInputError for a missing, unreadable or unusable file."""
        where = Path(path)
        if not where.is_file():
            raise BadInputError(f"{where}: no such ONNX file")
        try:
            proto = onnx.load(str(where), load_external_data=external_data)
        except Exception as exc:  # onnx raises several types for corrupt files
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise BadInputError(
                f"{where}: not a readable ONNX model ({type(exc).__name__}{': ' * bool(detail)}{detail})"
            ) from None
        return cls.from_proto(proto, where)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, path: str | os.PathLike[str]) -> OnnxModel:
        where = Path(path)
        try:
            metadata = read_metadata(proto)
        except ValueError:
            raise BadInputError(f"{where}: the danet-deploy metadata is not valid JSON") from None
        entry = metadata.get("precision")
        recorded = entry.get("precision") if isinstance(entry, dict) else None
        if recorded in {p.value for p in Precision}:
            precision, source = Precision(recorded), "metadata"
        else:
            precision, source = graph_precision(proto), "graph"
        spec = InputSpec.from_onnx(proto, str(where))
        layout = metadata.get("io", {}).get("inputs", {}).get(spec.input_name, {}).get("layout", "")
        if not spec.uint8 and isinstance(layout, str) and "0-255" in layout:  # export's rgb255_input
            spec = replace(spec, normalized=False)
        return cls(where, proto, metadata, spec, precision, source)

    @property
    def quantized_for(self) -> str | None:
        """An INT8 model's target, 'tensorrt' or 'onnxruntime', from our metadata (files quantized before targets
        existed are TensorRT's); None for other precisions and foreign files."""
        entry = self.metadata.get("precision")
        if self.precision is not Precision.INT8 or self.precision_source != "metadata" or not isinstance(entry, dict):
            return None
        target = entry.get("target", "tensorrt")
        return target if target in INT8_TARGETS else None

    def require_runnable(self) -> None:
        """One-line BadInputError when a node's operator is in no domain ONNX Runtime runs (ONNX's registry for the
        default domain; Microsoft's contrib and ai.onnx.ml are left to ONNX Runtime): a custom or misspelled op
        would otherwise fail deep inside a stage as an internal error."""
        for node in self.proto.graph.node:
            domain = node.domain or ""
            if domain in ORT_DOMAINS:
                continue
            if domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type, ""):
                op = f"{domain}::{node.op_type}" if domain else node.op_type
                raise BadInputError(
                    f"{self.path}: node {node.name!r} uses operator {op!r}, which ONNX Runtime does "
                    "not have (a custom or unknown op); this stage runs the model"
                )

    @property
    def has_config(self) -> bool:
        return "model_config" in self.metadata

    @cached_property
    def config(self) -> ModelConfig:
        if not self.has_config:
            raise BadInputError(
                f"{self.path}: no danet-deploy model config in the ONNX metadata (export it with danet-deploy)"
            )
        try:
            config = ModelConfig.from_dict(self.metadata["model_config"])
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{self.path}: invalid model config in the ONNX metadata ({exc})") from None
        dims = self.proto.graph.output[0].type.tensor_type.shape.dim if self.proto.graph.output else []
        if len(dims) > 1 and dims[1].HasField("dim_value") and dims[1].dim_value != config.num_classes:
            raise BadInputError(
                f"{self.path}: invalid model config in the ONNX metadata (num_classes {config.num_classes}, "
                f"but the model's logits have {dims[1].dim_value} channels)"
            )
        return config

    @property
    def input_size(self) -> tuple[int, int]:
        """The size the model runs at by default: its static size, else the model config's."""
        return self.input_spec.static_size or self.input_spec.size_or(self.config.input_size)

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def opset(self) -> int | None:
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), None)

    def session(self, threads: int | None = None, optimize: bool = True) -> Any:
        """An ONNX Runtime CPU session of the file (ONNX Runtime reads the path itself, weights included)."""
        return onnxruntime_session(self.path, threads, optimize)


PRECISION_TAGS = ("fp32", "fp16", "int8")


def output_beside(source: str | os.PathLike[str], tag: str | None, suffix: str) -> Path:
    """The default output of a step: beside its input, named after it, e.g. `danet.onnx` + ("int8", ".engine") ->
    `danet.int8.engine`. A precision tag the input already carries is not repeated (`danet.fp16.onnx` + fp16 ->
    `danet.fp16.engine`), and a tag of another precision is replaced (`danet.fp16.onnx` + int8 -> `danet.int8...`)."""
    path = Path(source)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    parts = stem.split(".")
    if tag and tag.split(".")[0] in PRECISION_TAGS:
        while len(parts) > 1 and parts[-1] in (*PRECISION_TAGS, "ort"):
            parts.pop()
    if tag:
        parts.append(tag)
    return path.with_name(".".join(parts) + suffix)
