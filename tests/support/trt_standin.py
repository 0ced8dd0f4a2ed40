"""A stand-in `tensorrt` module with exactly one TensorRT release's Python API names, recording every use.

The names come from `tests/data/tensorrt_api_surface.json`: per release tag of github.com/NVIDIA/TensorRT, the
enums (with their value names), classes (with their members) and module attributes that the pybind11 sources
`python/src/**/*.cpp` define, cross-checked against the compiled bindings in the PyPI wheels (see
tests/data/README.md). A name the release does not define raises AttributeError, as the real module would, and
is recorded in `Recorder.missing`; setting an attribute that is not a member does the same. Calls, attribute
reads and writes on stand-in objects are recorded in order.

What running code against it proves: which TensorRT names the code (ours and Polygraphy's, unmodified) touches
for one release, in which order, with which arguments, and so what builder configuration it produces. What it
does not prove: anything TensorRT computes (parsing, tactic choice, precision, engine contents, speed).

Behaviour is faked only as far as the loader chain needs to continue, and every fake is listed here:
- `OnnxParser.parse_from_file`: one layer per ONNX node, named like the node (as the ONNX parser names them),
  network inputs/outputs from the graph; no operator is checked.
- `Builder.build_serialized_network`: returns a JSON payload recording the network and configuration it was
  given, not an engine; `Runtime.deserialize_cuda_engine` reads that payload back (from a buffer only: the
  stream-reader overloads of 10.x/11 are not modelled, the project does not use them); bytes that are not such a
  payload give None, as TensorRT returns for a plan it cannot load. With an INT8 calibrator
  set, it reads the calibrator's cache as TensorRT does and returns None (TensorRT's failed build) when there is
  none or its header is not `TRT-<this release's NV_TENSORRT_VERSION>-EntropyCalibration2`: the stand-in cannot
  calibrate.
- `EngineInspector.get_engine_information`: layer information in TensorRT's JSON format, in the layout of the
  release (8.x/10.x "Format/Datatype"; 11.x "Datatype" + "Format"), one layer per network layer in the
  precision the build asked for and on the device it would land on (`fake_layer_information` says how) unless a
  test passes its own JSON. This fakes TensorRT's result; it lets the audit path run, it does not test TensorRT.
- `tensorrt.__version__`: the release key ("10.3.0", as the PyPI wheels write it) or the full version a test
  passes ("10.3.0.30", as JetPack's packages write it).
- `IBuilderConfig.set_timing_cache` refuses (False) a cache whose bytes start with b"STALE" (TensorRT refuses one
  from another device or release);
- `Builder.num_DLA_cores` is 2 (an AGX Orin); enum values are ordinals (the data has names only, so code that
  depends on numeric values is not checked).
Names added to the data, each defined by the real module outside the `py::class_`/`py::enum_` declarations the
data was parsed from:
- `__version__` (set in `tensorrt/__init__.py`);
- `ILogger` with its `Severity` values INTERNAL_ERROR..VERBOSE (pyCore.cpp binds `ILogger` without members and
  its `Severity` enum nested in it; `tensorrt/__init__.py` copies the values onto `Logger`);
- `init_libnvinfer_plugins(logger, namespace)` (`m.def` in pyPlugin.cpp; Polygraphy calls it before parsing and
  deserializing);
- `__enter__`/`__exit__` of the classes `tensorrt/__init__.py` adds them to (Polygraphy uses `with
  timing_cache.serialize() as buffer`).
`IHostMemory` derives from `bytes`: the real object exposes the buffer protocol, which pure Python cannot
implement on 3.11; its bytes methods (decode, hex, ...) are hidden so that using them is recorded as missing.
"""

from __future__ import annotations

import enum
import json
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import onnx

SURFACE = json.loads((Path(__file__).parent.parent / "data" / "tensorrt_api_surface.json").read_text())
# tensorrt.__version__ -> release tag in the data
RELEASES = {
    "8.6.1": "v8.6.1",
    "10.3.0": "v10.3.0",
    "10.13.3": "v10.13.3",
    "10.14.1": "v10.14",
    "11.0.0": "v11.0",
    "11.1.0": "v11.1",
    # The data has no v11.4 tag: its 11.4 check was the 11.1 source against the 11.4.0.106 wheel's compiled
    # bindings (shared/reference/tensorrt-api/README.md), so 11.4 is modelled with the 11.1 names.
    "11.4.0": "v11.1",
    "11.4.1": "v11.1",
}

ENGINE_MAGIC = b"STANDIN-ENGINE\n"
SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
CONTEXT_MANAGED = (
    "ILogger",
    "ICudaEngine",
    "IExecutionContext",
    "Runtime",
    "IHostMemory",
    "Builder",
    "INetworkDefinition",
    "OnnxParser",
    "IBuilderConfig",
)
# Module attributes that alias DataType values (names from the data's "attrs").
DTYPE_ALIASES = {
    "float32": "FLOAT",
    "float16": "HALF",
    "bfloat16": "BF16",
    "int8": "INT8",
    "int32": "INT32",
    "int64": "INT64",
    "int4": "INT4",
    "uint8": "UINT8",
    "bool": "BOOL",
    "fp8": "FP8",
    "fp4": "FP4",
    "e8m0": "E8M0",
}
ONNX_LAYER_TYPES = {
    "Conv": "CONVOLUTION",
    "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY",
    "Softmax": "SOFTMAX",
    "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE",
    "Relu": "ACTIVATION",
    "Sigmoid": "ACTIVATION",
    "Add": "ELEMENTWISE",
    "Mul": "ELEMENTWISE",
    "Sub": "ELEMENTWISE",
    "Div": "ELEMENTWISE",
    "Max": "ELEMENTWISE",
    "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE",
    "ReduceMax": "REDUCE",
    "ReduceMean": "REDUCE",
    "Resize": "RESIZE",
    "Cast": "CAST",
    "Concat": "CONCATENATION",
    "MaxPool": "POOLING",
    "Constant": "CONSTANT",
}
JSON_FORMATS = {  # TensorRT 8.x/10.x, as in the real layer information in tests/data/layer_info_*.json
    "FP32": "Row major linear FP32",
    "FP16": "Row major linear FP16 format",
    "INT8": "Thirty-two wide channel vectorized row major Int8 format",
}
JSON_DATATYPES_11 = {"FP32": "Float", "FP16": "Half", "INT8": "Int8"}
JSON_LAYOUTS_11 = {"FP32": "Row major linear", "FP16": "Row major linear", "INT8": "Thirty-two wide channel vectorized"}


class StandInGap(Exception):
    """The code used a name the release has but the stand-in gives no behaviour: extend BEHAVIOUR (not a
    TensorRT error; never caught by `except AttributeError`)."""


@dataclass
class Recorder:
    """Everything the code did with the stand-in, in order."""

    version: str
    events: list[tuple[str, str, Any]] = field(default_factory=list)  # (kind, qualified name, detail)
    missing: list[str] = field(default_factory=list)  # names the release does not have, in order of use
    gaps: list[str] = field(default_factory=list)  # real names the stand-in has no behaviour for (StandInGap)
    instances: dict[str, list[Any]] = field(default_factory=dict)

    def record(self, kind: str, name: str, detail: Any = None) -> None:
        self.events.append((kind, name, detail))

    def miss(self, name: str) -> None:
        self.missing.append(name)
        self.record("missing", name)

    def calls(self, name: str) -> list[Any]:
        """(args, kwargs) of every call of `Class.member`."""
        return [detail for kind, qualname, detail in self.events if kind == "call" and qualname == name]

    def last(self, cls: str) -> Any:
        return self.instances[cls][-1]


def _attr_error(owner: str, name: str) -> AttributeError:
    return AttributeError(f"'{owner}' object has no attribute '{name}'")


class _PybindEnum(enum.Enum):
    """pybind11 enums: named values, int() and hashing by value, compared within their type only."""

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return int(self.value)

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _enum(name: str, values: list[str], recorder: Recorder) -> type:
    class RecordingEnumType(type(_PybindEnum)):  # type: ignore[misc]
        def __getattr__(cls, attr: str) -> Any:
            if attr.startswith("_"):
                raise AttributeError(attr)
            recorder.miss(f"{cls.__name__}.{attr}")
            raise AttributeError(f"type object '{cls.__name__}' has no attribute '{attr}'")

    namespace = RecordingEnumType.__prepare__(name, (_PybindEnum,))
    for i, value in enumerate(values):
        namespace[value] = i
    return RecordingEnumType(name, (_PybindEnum,), namespace)


@dataclass(frozen=True)
class Method:
    fn: Callable[..., Any]


@dataclass(frozen=True)
class Prop:
    """A property: `get(self)` reads it; a write stores the value (read back by later reads)."""

    get: Callable[[Any], Any]


def value(default: Any) -> Prop:
    return Prop(lambda self: default)


class StandIn:
    """Base of every generated class: members from the data, behaviour from BEHAVIOUR, everything recorded."""

    _name: str = ""
    _members: frozenset[str] = frozenset()
    _behaviour: ClassVar[dict[str, Any]] = {}
    _recorder: Recorder | None = None
    _trt: Any = None

    def __init__(self, *args: Any, **kwargs: Any):
        cls = self._surface_class()
        object.__setattr__(self, "_state", {})
        self._recorder.record("call", f"{cls._name}()", (args, kwargs))
        self._recorder.instances.setdefault(cls._name, []).append(self)
        init = cls._behaviour.get("__init__")
        if init is not None:
            init(self, *args, **kwargs)

    @classmethod
    def _surface_class(cls) -> type:
        return next(c for c in cls.__mro__ if c.__dict__.get("_generated"))

    def _stored(self) -> dict[str, Any]:
        if "_state" not in self.__dict__:  # a subclass that did not call the binding's __init__
            object.__setattr__(self, "_state", {})
        return self.__dict__["_state"]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        cls = self._surface_class()
        qualname = f"{cls._name}.{name}"
        if name not in cls._members:
            cls._recorder.miss(qualname)
            raise _attr_error(cls._name, name)
        spec = cls._behaviour.get(name)
        if spec is None:
            cls._recorder.gaps.append(qualname)
            raise StandInGap(qualname)
        if isinstance(spec, Method):

            def call(*args: Any, **kwargs: Any) -> Any:
                cls._recorder.record("call", qualname, (args, kwargs))
                return spec.fn(self, *args, **kwargs)

            return call
        stored = self._stored()
        result = stored[name] if name in stored else spec.get(self)
        cls._recorder.record("get", qualname, result)
        return result

    def __setattr__(self, name: str, value: Any) -> None:
        cls = self._surface_class()
        if name not in cls._members:
            if type(self) is not cls:  # Python subclasses (loggers, monitors, allocators) get a __dict__
                object.__setattr__(self, name, value)
                return
            cls._recorder.miss(f"{cls._name}.{name}")
            raise _attr_error(cls._name, name)
        cls._recorder.record("set", f"{cls._name}.{name}", value)
        self._stored()[name] = value


class _HostMemory(bytes):
    """IHostMemory: the payload bytes through the buffer protocol; members as the data lists them."""

    _hidden = frozenset(name for name in dir(bytes) if not name.startswith("_"))

    def __getattribute__(self, name: str) -> Any:
        if name in type(self)._hidden:
            type(self)._recorder.miss(f"IHostMemory.{name}")
            raise _attr_error("IHostMemory", name)
        if name in ("nbytes", "dtype"):
            return len(self) if name == "nbytes" else type(self)._trt.DataType.UINT8
        return super().__getattribute__(name)

    def __enter__(self) -> _HostMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


# --- behaviour: the least TensorRT-like logic that lets the chain continue ------------------------------------


def _members_of(enum_type: type) -> dict[str, Any]:
    return dict(enum_type.__members__)  # never a recorded lookup


def _new(owner: StandIn, cls_name: str, *args: Any) -> Any:
    """A stand-in object created by the stand-in itself (not a constructor call by the code under test)."""
    cls = getattr(owner._surface_class()._trt, cls_name)
    obj = cls.__new__(cls)
    object.__setattr__(obj, "_state", {})
    owner._recorder.instances.setdefault(cls_name, []).append(obj)
    init = cls._behaviour.get("__init__")
    if init is not None:
        init(obj, *args)
    return obj


def _state(obj: Any) -> dict[str, Any]:
    return obj.__dict__["_state"]


def _onnx_dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


def _parse_from_file(parser: Any, path: str) -> bool:
    trt = parser._surface_class()._trt
    network = _state(parser)["network"]
    model = onnx.load(path, load_external_data=False)
    dtypes = {
        onnx.TensorProto.FLOAT: "FLOAT",
        onnx.TensorProto.FLOAT16: "HALF",
        onnx.TensorProto.UINT8: "UINT8",
        onnx.TensorProto.INT64: "INT64",
        onnx.TensorProto.INT32: "INT32",
    }
    data_types = _members_of(trt.DataType)
    layer_types = _members_of(trt.LayerType)
    initializers = {init.name for init in model.graph.initializer}
    net = _state(network)
    for inp in model.graph.input:
        if inp.name not in initializers:
            dtype = data_types[dtypes.get(inp.type.tensor_type.elem_type, "FLOAT")]
            net["inputs"].append(_new(parser, "ITensor", inp.name, _onnx_dims(inp), dtype, True))
    for out in model.graph.output:
        net["outputs"].append(_new(parser, "ITensor", out.name, _onnx_dims(out), data_types["FLOAT"], False))
    for i, node in enumerate(model.graph.node):
        kind = layer_types.get(ONNX_LAYER_TYPES.get(node.op_type, ""), layer_types.get("IDENTITY"))
        outputs = [_new(parser, "ITensor", name, (), data_types["FLOAT"], False) for name in node.output]
        net["layers"].append(_new(parser, "ILayer", node.name or f"node_{i}", kind, outputs, node.op_type))
    float16 = onnx.TensorProto.FLOAT16
    net["onnx_fp16"] = any(init.data_type == float16 for init in model.graph.initializer) or any(
        a.name == "to" and a.i == float16 for node in model.graph.node if node.op_type == "Cast" for a in node.attribute
    )
    return True


def _flag_names(flags: set[Any]) -> list[str]:
    return sorted(flag.name for flag in flags)


def _build(builder: Any, network: Any, config: Any) -> _HostMemory:
    """The payload standing in for an engine: what the build was asked to do."""
    net, conf = _state(network), _state(config)
    stored = config.__dict__["_state"]
    layers = [
        {
            "name": _state(layer)["name"],
            "op": _state(layer)["op"],
            "precision": getattr(_state(layer).get("precision"), "name", None),
        }
        for layer in net["layers"]
    ]
    scales = _read_calibration(builder, config, conf)
    if scales is None:
        return None  # TensorRT logs the error and returns no engine
    payload = {
        "version": builder._recorder.version,
        "calibration_scales": scales,
        "network_flags": _flag_names(net["flag_set"]),
        "builder_flags": _flag_names(conf["flag_set"]),
        "onnx_fp16": net["onnx_fp16"],
        "layers": layers,
        "inputs": [(_state(t)["name"], list(_state(t)["shape"])) for t in net["inputs"]],
        "outputs": [_state(t)["name"] for t in net["outputs"]],
        "profiles": [_state(p)["shapes"] for p in conf["profiles"]],
        "device_type": getattr(stored.get("default_device_type"), "name", "GPU"),
        "dla_core": stored.get("DLA_core", -1),
    }
    host_memory = builder._surface_class()._trt.IHostMemory
    return host_memory(ENGINE_MAGIC + json.dumps(payload).encode())


def _read_calibration(builder: Any, config: Any, conf: dict[str, Any]) -> dict[str, str] | None:
    """Implicit INT8: TensorRT asks the calibrator for its cache and uses it when the header names this release and
    the calibrator's algorithm (a cache for another release is refused, seen with 8.6 caches on 10.x); the
    stand-in refuses where TensorRT would need calibration batches, which it cannot compute. {} without one."""
    calibrator = conf.get("int8_calibrator")
    if calibrator is None or builder._trt.BuilderFlag.__members__["INT8"] not in conf["flag_set"]:
        return {}
    cache = calibrator.read_calibration_cache()
    if not cache:
        return None
    header, *rows = bytes(cache).decode().splitlines()
    major, minor, patch = (int(p) for p in builder._recorder.version.split(".")[:3])
    number = major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch
    if header != f"TRT-{number}-EntropyCalibration2":
        return None
    return dict(row.rsplit(": ", 1) for row in rows)


def _set_timing_cache(config: Any, cache: Any, ignore_mismatch: bool) -> bool:
    """TensorRT refuses (returns False) a cache made on another device or release; the stand-in's stale cache is
    one whose bytes start with b"STALE"."""
    if _state(cache)["data"].startswith(b"STALE") and not ignore_mismatch:
        return False
    _state(config).update(cache=cache)
    return True


def _deserialize(runtime: Any, buffer: Any) -> Any:
    data = bytes(memoryview(buffer))  # TypeError for anything that is not a buffer, as pybind11 raises
    if not data.startswith(ENGINE_MAGIC):
        return None  # TensorRT logs an error and returns None for bytes that are not an engine
    return _new(runtime, "ICudaEngine", json.loads(data[len(ENGINE_MAGIC) :]))


def _tensor_entry(name: str, precision: str, version: str) -> dict[str, Any]:
    """One tensor of the layer information in the layout of `version`: TensorRT 11 splits "Format/Datatype" into
    "Datatype" and "Format" (TensorRT 11.0 migration guide); the 11.x spellings are the stand-in's assumption."""
    entry: dict[str, Any] = {"Name": name, "Location": "Device", "Dimensions": [1]}
    if int(version.split(".")[0]) >= 11:
        entry.update(Datatype=JSON_DATATYPES_11[precision], Format=JSON_LAYOUTS_11[precision])
    else:
        entry["Format/Datatype"] = JSON_FORMATS[precision]
    return entry


DLA_OPS = {"Conv", "Relu", "Add", "Mul", "MaxPool", "Concat", "Resize", "Sigmoid", "Sub"}  # ops the fake puts on DLA


def fake_layer_information(payload: dict[str, Any]) -> str:
    """Layer information JSON in TensorRT's format, in the layout of the payload's release, for the payload: each
    layer in the precision the build asked for and on the device it would land on. A fake of TensorRT's result
    (see the module docstring): INT8 for Conv/MatMul of an INT8 build (explicit Q/DQ, or implicit from a
    calibration cache TensorRT read), FP16 for an FP16 build, pinned layers in their pinned type; on a DLA build the
    DLA-capable ops that are not pinned FP32 run on the DLA (TacticName "DlaLayer"), except explicitly quantized
    ones on weakly typed releases, which leave it (TensorRT issue 2222: DLA runs INT8 only by implicit
    quantization)."""
    flags = set(payload["builder_flags"])
    strongly = "STRONGLY_TYPED" in payload["network_flags"]
    has_qdq = any(layer["op"] == "DequantizeLinear" for layer in payload["layers"])
    implicit = bool(payload.get("calibration_scales"))
    int8 = ("INT8" in flags and (has_qdq or implicit)) or (strongly and has_qdq)
    fp16 = "FP16" in flags or (strongly and (payload["onnx_fp16"] or has_qdq))
    dla = payload["device_type"] == "DLA"
    pinned_types = {"FLOAT": "FP32", "HALF": "FP16", "INT8": "INT8"}
    layers = []
    for layer in payload["layers"]:
        if layer["precision"]:
            precision = pinned_types[layer["precision"]]
        elif int8 and layer["op"] in ("Conv", "MatMul", "Gemm"):
            precision = "INT8"
        else:
            precision = "FP16" if fp16 else "FP32"
        on_dla = dla and layer["op"] in DLA_OPS and precision != "FP32"
        if on_dla and has_qdq and not strongly and precision == "INT8":
            on_dla = False  # explicit Q/DQ regions leave the DLA
        tensor = _tensor_entry(f"{layer['name']}_out", precision, payload["version"])
        entry = {
            "Name": layer["name"],
            "LayerType": layer["op"],
            "Inputs": [tensor],
            "Outputs": [tensor],
            "Metadata": f"[ONNX Layer: {layer['name']}]",
            "TacticName": "DlaLayer" if on_dla else f"standin_{precision.lower()}",
        }
        layers.append(entry)
    return json.dumps({"Layers": layers, "Bindings": [name for name, _ in payload["inputs"]] + payload["outputs"]})


def _network_init(network: Any, flags: int = 0) -> None:
    created_with = network._trt.NetworkDefinitionCreationFlag.__members__.values()
    _state(network).update(
        flags=flags,
        inputs=[],
        outputs=[],
        layers=[],
        onnx_fp16=False,
        flag_set={f for f in created_with if flags & 1 << f.value},
    )


def _engine_information(inspector: Any, fmt: Any) -> str:
    engine = _state(inspector)["engine"]
    return engine._surface_class()._layer_information(_state(engine)["payload"])


def _profile_set_shape(profile: Any, name: str, min: Any, opt: Any, max: Any) -> None:
    _state(profile)["shapes"][name] = [list(min), list(opt), list(max)]


def _io_tensors(engine: Any) -> list[str]:
    payload = _state(engine)["payload"]
    return [name for name, _ in payload["inputs"]] + payload["outputs"]


def _tensor_mode(engine: Any, name: str) -> Any:
    modes = _members_of(engine._surface_class()._trt.TensorIOMode)
    return modes["INPUT"] if name in dict(_state(engine)["payload"]["inputs"]) else modes["OUTPUT"]


def _init(**fields: Callable[..., Any]) -> Callable[..., None]:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        _state(self).update({k: make(*args, **kwargs) for k, make in fields.items()})

    return init


BEHAVIOUR: dict[str, dict[str, Any]] = {
    "Builder": {
        "create_network": Method(lambda self, flags=0: _new(self, "INetworkDefinition", flags)),
        "create_builder_config": Method(lambda self: _new(self, "IBuilderConfig")),
        "create_optimization_profile": Method(lambda self: _new(self, "IOptimizationProfile")),
        "build_serialized_network": Method(_build),
        "num_DLA_cores": value(2),
    },
    "INetworkDefinition": {
        "__init__": _network_init,
        "num_inputs": Prop(lambda self: len(_state(self)["inputs"])),
        "get_input": Method(lambda self, i: _state(self)["inputs"][i]),
        "num_outputs": Prop(lambda self: len(_state(self)["outputs"])),
        "get_output": Method(lambda self, i: _state(self)["outputs"][i]),
        "num_layers": Prop(lambda self: len(_state(self)["layers"])),
        "get_layer": Method(lambda self, i: _state(self)["layers"][i]),
        "get_flag": Method(lambda self, flag: flag in _state(self)["flag_set"]),
        "has_implicit_batch_dimension": value(False),
    },
    "ITensor": {
        "__init__": lambda self, name, shape, dtype, is_input: _state(self).update(
            name=name, shape=shape, dtype=dtype, is_network_input=is_input
        ),
        "name": Prop(lambda self: _state(self)["name"]),
        "shape": Prop(lambda self: _state(self)["shape"]),
        "dtype": Prop(lambda self: _state(self)["dtype"]),
        "is_shape_tensor": value(False),
        "is_network_input": Prop(lambda self: _state(self)["is_network_input"]),
    },
    "ILayer": {
        "__init__": lambda self, name, kind, outputs, op: _state(self).update(
            name=name, type=kind, outputs=outputs, op=op
        ),
        "name": Prop(lambda self: _state(self)["name"]),
        "type": Prop(lambda self: _state(self)["type"]),
        "precision": Prop(lambda self: _state(self).get("precision", self._trt.DataType.FLOAT)),
        "precision_is_set": Prop(lambda self: "precision" in _state(self)),
        "num_outputs": Prop(lambda self: len(_state(self)["outputs"])),
        "get_output": Method(lambda self, i: _state(self)["outputs"][i]),
    },
    "OnnxParser": {
        "__init__": lambda self, network, logger: _state(self).update(network=network),
        "parse_from_file": Method(_parse_from_file),
        "num_errors": value(0),
    },
    "IOptimizationProfile": {
        "__init__": _init(shapes=dict),
        "set_shape": Method(_profile_set_shape),
        "get_shape": Method(lambda self, name: _state(self)["shapes"].get(name, [])),
    },
    "IBuilderConfig": {
        "__init__": _init(flag_set=set, pools=dict, profiles=list),
        "set_flag": Method(lambda self, flag: _state(self)["flag_set"].add(flag)),
        "clear_flag": Method(lambda self, flag: _state(self)["flag_set"].discard(flag)),
        "get_flag": Method(lambda self, flag: flag in _state(self)["flag_set"]),
        "set_memory_pool_limit": Method(lambda self, pool, size: _state(self)["pools"].__setitem__(pool, size)),
        "get_memory_pool_limit": Method(lambda self, pool: _state(self)["pools"].get(pool, 0)),
        "add_optimization_profile": Method(
            lambda self, profile: _state(self)["profiles"].append(profile) or len(_state(self)["profiles"]) - 1
        ),
        "num_optimization_profiles": Prop(lambda self: len(_state(self)["profiles"])),
        "create_timing_cache": Method(lambda self, data: _new(self, "ITimingCache", bytes(data))),
        "set_timing_cache": Method(_set_timing_cache),
        "get_timing_cache": Method(lambda self: _state(self).get("cache")),
        "get_tactic_sources": Method(lambda self: 0),
        "get_preview_feature": Method(lambda self, feature: False),
        "get_quantization_flag": Method(lambda self, flag: False),
        "DLA_core": value(-1),
        "default_device_type": Prop(lambda self: self._trt.DeviceType.GPU),
        "profiling_verbosity": Prop(lambda self: self._trt.ProfilingVerbosity.LAYER_NAMES_ONLY),
        "int8_calibrator": Prop(lambda self: _state(self).get("int8_calibrator")),
        "set_calibration_profile": Method(lambda self, profile: _state(self).update(calibration_profile=profile)),
        "get_calibration_profile": Method(lambda self: _state(self).get("calibration_profile")),
        "engine_capability": Prop(lambda self: next(iter(self._trt.EngineCapability.__members__.values()))),
        "builder_optimization_level": value(3),
        "hardware_compatibility_level": Prop(lambda self: self._trt.HardwareCompatibilityLevel.NONE),
        "progress_monitor": value(None),
    },
    "ITimingCache": {
        "__init__": lambda self, data: _state(self).update(data=data),
        "combine": Method(lambda self, other, ignore_mismatch: True),
        "serialize": Method(lambda self: self._trt.IHostMemory(b"standin timing cache")),
    },
    "Runtime": {
        "deserialize_cuda_engine": Method(_deserialize),
        "engine_host_code_allowed": value(False),
        "DLA_core": value(-1),
    },
    "ICudaEngine": {
        "__init__": lambda self, payload: _state(self).update(payload=payload),
        "create_engine_inspector": Method(lambda self: _new(self, "EngineInspector", self)),
        "create_execution_context": Method(lambda self, *strategy: _new(self, "IExecutionContext", self)),
        "num_io_tensors": Prop(lambda self: len(_io_tensors(self))),
        "get_tensor_name": Method(lambda self, i: _io_tensors(self)[i]),
        "get_tensor_mode": Method(_tensor_mode),
        "num_optimization_profiles": Prop(lambda self: len(_state(self)["payload"]["profiles"])),
    },
    "EngineInspector": {
        "__init__": lambda self, engine: _state(self).update(engine=engine),
        "get_engine_information": Method(_engine_information),
    },
    "IExecutionContext": {
        "__init__": lambda self, engine: _state(self).update(engine=engine),
        "engine": Prop(lambda self: _state(self)["engine"]),
        "set_all_tensors_debug_state": Method(lambda self, flag: None),
        "set_debug_listener": Method(lambda self, listener: True),
    },
}


def make_tensorrt(
    version: str,
    layer_information: Callable[[dict[str, Any]], str] = fake_layer_information,
    full_version: str | None = None,
) -> tuple[types.ModuleType, Recorder]:
    """A fresh `tensorrt` module for `version` (a key of RELEASES) and the recorder of everything done with it.
    `__version__` is major.minor.patch as the PyPI wheels set it (tensorrt_bindings 8.6.1: "8.6.1";
    tensorrt_cu12_bindings 10.3.0: "10.3.0"), or `full_version` (JetPack's packages carry the build: "10.3.0.30")."""
    release = SURFACE[RELEASES[version]]
    recorder = Recorder(version)
    module = types.ModuleType("tensorrt")
    module.__version__ = version if full_version is None else full_version

    enums = {name: _enum(name, values, recorder) for name, values in release["enums"].items()}
    severity = _enum("Severity", list(SEVERITIES), recorder)
    for name, enum_type in enums.items():
        setattr(module, name, enum_type)

    classes: dict[str, type] = {}
    for name, members in {"ILogger": [], **release["classes"]}.items():
        attrs: dict[str, Any] = {
            "_generated": True,
            "_name": name,
            "_members": frozenset(members),
            "_behaviour": BEHAVIOUR.get(name, {}),
            "_recorder": recorder,
            "_trt": module,
            "_layer_information": staticmethod(layer_information),
        }
        spec = BEHAVIOUR.get(name, {})
        if "__len__" in members and "num_layers" in spec:
            attrs["__len__"] = lambda self: len(_state(self)["layers"])
        if "__getitem__" in members and name == "INetworkDefinition":
            attrs["__getitem__"] = lambda self, i: _state(self)["layers"][i]  # IndexError ends iteration
        if "__bool__" in members:
            attrs["__bool__"] = lambda self: bool(_state(self).get("shapes", True))
        if name in CONTEXT_MANAGED:
            attrs.update(__enter__=lambda self: self, __exit__=lambda self, *exc: None)
        if name in ("ILogger", "Logger"):
            attrs.update({s.name: s for s in severity}, Severity=severity)
        base: tuple[type, ...] = (classes["ILogger"],) if name == "Logger" else (StandIn,)  # as in the bindings
        if name == "IHostMemory":
            base, attrs = (_HostMemory,), {"_recorder": recorder, "_trt": module}
        classes[name] = type(name, base, attrs)
    for name, cls in classes.items():
        setattr(module, name, cls)

    data_types = enums["DataType"].__members__
    for attr in release["attrs"]:
        if attr in DTYPE_ALIASES and DTYPE_ALIASES[attr] in data_types:
            setattr(module, attr, data_types[DTYPE_ALIASES[attr]])
        elif attr in enums:
            setattr(module, attr, enums[attr])
        else:
            setattr(module, attr, object())

    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        recorder.record("call", "tensorrt.init_libnvinfer_plugins", ((logger, namespace), {}))
        return True

    module.init_libnvinfer_plugins = init_libnvinfer_plugins

    def module_getattr(name: str) -> Any:
        if not name.startswith("__"):
            recorder.miss(f"tensorrt.{name}")
        raise AttributeError(f"module 'tensorrt' has no attribute '{name}'")

    module.__getattr__ = module_getattr  # type: ignore[method-assign]
    return module, recorder
