"""What precision (and device) an engine really runs in, read from TensorRT's layer information.

A build can succeed and still not be what was asked for: TensorRT 11 ignores precision flags, a weakly typed
build may fall back to FP32 for every layer, and a DLA build with GPU fallback may leave the DLA. After each build
the engine's layer information (`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`, complete
with `ProfilingVerbosity.DETAILED`) is parsed here and judged against the plan.

The JSON is TensorRT's (developer guide, "Engine Inspector"; real examples in tests/data/layer_info_*.json):
`{"Layers": [...], "Bindings": [...]}`, each layer with "Name", "LayerType", "Inputs"/"Outputs", "TacticName" and,
from TensorRT 8.6, "Metadata" naming the ONNX nodes a layer came from ("[ONNX Layer: /head/cam/MatMul]", several
joined by \\x1e when layers were fused). Each tensor names its type in one of two layouts:
- TensorRT 8.x / 10.x: one string, "Format/Datatype": "Row major linear FP32", "Thirty-two wide channel
  vectorized row major Int8 format", ...;
- TensorRT 11: "Datatype" and "Format" apart (TensorRT 11.0 migration guide; Polygraphy 0.53.6
  `tools/inspect/subtool/model/extractors/_trt.py` reads both), with data type words such as Float, Half, Int8.
Entries that are not layers (no "Inputs": the signal/wait entries of multi-stream engines) are skipped, as
NVIDIA's engine explorer (TREx, `trex/parser.py`) skips them.

A layer's precision, counted per device, is that of its first input, as TREx reads it; layers that only move or
convert data (Reformat, NoOp, DLA's copies to and from its memory) are not counted as compute. A pinned layer is
judged by what it computes: the types of all its float inputs (TensorRT chooses the output type of a pinned layer
freely), a layer without inputs by its outputs.

Devices: TensorRT names DLA subgraphs "{ForeignNode[...]}" and its copies "<tensor> to nvm" / "<tensor> from nvm"
(TensorRT issue 3143, build logs). A layer counts as a DLA layer when its LayerType or TacticName mentions DLA.
No real DLA layer information was available to check this rule against (unconfirmed; see tests/data/README.md).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Data type words inside tensor type strings (either layout) -> our names; a leading "k" (kFLOAT) is allowed.
_TYPE_WORDS = {
    "fp32": "FP32",
    "float": "FP32",
    "float32": "FP32",
    "fp16": "FP16",
    "half": "FP16",
    "float16": "FP16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "fp8": "FP8",
    "float8e4m3": "FP8",
    "e4m3": "FP8",
    "int8": "INT8",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "bool": "BOOL",
    "int4": "INT4",
    "fp4": "FP4",
    "float4": "FP4",
}
_TYPE_PATTERN = re.compile(
    r"\bk?(" + "|".join(sorted(_TYPE_WORDS, key=len, reverse=True)) + r")(?![a-z0-9])", re.IGNORECASE
)
FLOAT_TYPES = {"FP32", "FP16", "BF16", "FP8", "INT8", "FP4", "INT4"}  # types a compute layer may run in
DATA_MOVEMENT = {"Reformat", "NoOp", "signal", "wait"}
_NVM_COPY = re.compile(r" (to|from) nvm$| copy finish$")  # DLA's copies between GPU memory and its own
_DLA = re.compile(r"dla", re.IGNORECASE)


def tensor_type(text: str) -> str | None:
    """'Row major linear FP16 format' or 'Half' -> 'FP16'; None when no type word is found."""
    found = _TYPE_PATTERN.search(text or "")
    return _TYPE_WORDS[found.group(1).lower()] if found else None


def _tensor_type_of(tensor: Any) -> str | None:
    """The data type of one tensor entry in either layout (10.x "Format/Datatype", 11.x "Datatype" + "Format")."""
    if not isinstance(tensor, dict):
        return None
    if "Format/Datatype" in tensor:
        return tensor_type(str(tensor["Format/Datatype"]))
    return tensor_type(str(tensor.get("Datatype") or "")) or tensor_type(str(tensor.get("Format") or ""))


@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str
    precision: str | None  # type of the first input; None for layers without inputs (constants)
    output_types: tuple[str | None, ...]
    onnx_nodes: tuple[str, ...]  # from "Metadata" (TensorRT >= 8.6), else ()
    input_types: tuple[str | None, ...] = ()
    tactic: str = ""
    device: str = "GPU"  # "GPU" or "DLA"

    @property
    def computes(self) -> bool:
        return self.layer_type not in DATA_MOVEMENT and not _NVM_COPY.search(self.name)

    @property
    def computed_type(self) -> str | None:
        """What the layer computes in: the lowest float input type (INT8 < FP16 < FP32), else its output type."""
        floats = [t for t in self.input_types if t in FLOAT_TYPES] or [t for t in self.output_types if t in FLOAT_TYPES]
        for reduced in ("FP4", "INT4", "FP8", "INT8", "FP16", "BF16"):
            if reduced in floats:
                return reduced
        return "FP32" if floats else self.precision


def parse_layer_information(text: str) -> list[EngineLayer]:
    """TensorRT's engine information JSON (8.x/10.x or 11.x layout) -> layers; ValueError when it is not detailed
    layer information."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"engine layer information is not JSON ({exc.msg})") from None
    raw_layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(raw_layers, list):
        raise ValueError('engine layer information has no "Layers" list')
    detailed = [raw for raw in raw_layers if isinstance(raw, dict)]
    if raw_layers and not detailed:
        raise ValueError(
            "engine layer information lists layer names only: the engine was not built with ProfilingVerbosity.DETAILED"
        )
    layers = []
    for raw in detailed:
        layer_type = str(raw.get("LayerType", ""))
        if "Inputs" not in raw or layer_type in ("signal", "wait"):
            continue  # not a layer: TREx skips these too
        inputs = raw.get("Inputs") or []
        outputs = raw.get("Outputs") or []
        input_types = tuple(_tensor_type_of(t) for t in inputs)
        tactic = str(raw.get("TacticName") or "")
        metadata = str(raw.get("Metadata") or "")
        layers.append(
            EngineLayer(
                name=str(raw.get("Name", "")),
                layer_type=layer_type,
                precision=input_types[0] if input_types else None,
                output_types=tuple(_tensor_type_of(t) for t in outputs),
                onnx_nodes=tuple(re.findall(r"\[ONNX Layer: ([^\]]+)\]", metadata)),
                input_types=input_types,
                tactic=tactic,
                device="DLA" if _DLA.search(layer_type) or _DLA.search(tactic) else "GPU",
            )
        )
    return layers


@dataclass
class EngineAudit:
    """Layers per precision (and per device) and the pinned-layer check, as recorded in the sidecar."""

    compute_layers: dict[str, int]  # precision -> compute layers (first-input type)
    total_layers: int
    pinned_fp32: dict[str, str] = field(default_factory=dict)  # pinned ONNX node -> engine precision found
    # Not checkable: fused with unpinned nodes (the layer's type then says nothing about the pinned part) or
    # removed by TensorRT (folded constants). A pin that names no network layer fails the build before this.
    pinned_unchecked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    devices: dict[str, dict[str, int]] = field(default_factory=dict)  # "GPU"/"DLA" -> precision -> compute layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineAudit:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def device_summary(self) -> str:
        """'GPU: FP16 4, FP32 2; DLA: INT8 30' ('' for sidecars from before devices were recorded)."""
        parts = []
        for device, counts in sorted(self.devices.items(), key=lambda kv: kv[0] != "GPU"):
            text = ", ".join(f"{p} {n}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            parts.append(f"{device}: {text or 'no compute layers'}")
        return "; ".join(parts)

    def summary(self) -> str:
        """'FP16 212, FP32 14 compute layers; pinned FP32 5/5 confirmed', with layers per device on DLA builds."""
        counts = ", ".join(f"{p} {n}" for p, n in sorted(self.compute_layers.items(), key=lambda kv: -kv[1]))
        text = f"{counts or 'no'} compute layers"
        if set(self.devices) - {"GPU"}:  # layers per device matter once a DLA is involved
            text += f" ({self.device_summary()})"
        if self.pinned_fp32 or self.pinned_unchecked:
            ok = sum(1 for p in self.pinned_fp32.values() if p == "FP32")
            text += f"; pinned FP32 {ok}/{len(self.pinned_fp32) + len(self.pinned_unchecked)} confirmed"
        return text


def _pinned_layer(layers: list[EngineLayer], node: str, pinned: set[str]) -> EngineLayer | None:
    """The engine layer that computes only pinned nodes, `node` among them; None when there is no such layer."""
    for layer in (layer for layer in layers if layer.computes):
        # TensorRT >= 8.6 names the ONNX nodes of a layer in its metadata; older ones join them in the name.
        nodes = set(layer.onnx_nodes) or {part.strip() for part in layer.name.split(" + ")}
        if node in nodes:
            return layer if nodes <= pinned else None
    return None


def audit_engine(
    layers: list[EngineLayer],
    precision: str,
    pinned: list[str] | tuple[str, ...] = (),
    dla: bool = False,
    gpu_fallback: bool = False,
) -> EngineAudit:
    """Judge the layers against the requested precision: an fp16 engine needs an FP16 layer, an int8 engine an
    INT8 layer, every pinned layer that can be found must compute in FP32, and on a DLA build the layers in the
    requested precision must run on the DLA unless GPU fallback was asked for."""
    compute = [layer for layer in layers if layer.computes and layer.precision is not None]
    counts = Counter(str(layer.precision) for layer in compute)
    devices: dict[str, dict[str, int]] = {}
    for layer in compute:
        per_device = devices.setdefault(layer.device, {})
        per_device[str(layer.precision)] = per_device.get(str(layer.precision), 0) + 1
    audit = EngineAudit(compute_layers=dict(counts), total_layers=len(layers), devices=devices)
    wanted = {"fp16": "FP16", "int8": "INT8"}.get(precision)
    if wanted and not counts.get(wanted):
        found = ", ".join(f"{p} {n}" for p, n in counts.items()) or "none"
        audit.failures.append(f"the {precision} engine has no {wanted} layer (compute layers: {found})")
    if dla and wanted:
        on_dla = devices.get("DLA", {}).get(wanted, 0)
        off_dla = devices.get("GPU", {}).get(wanted, 0)
        if off_dla and not gpu_fallback:
            audit.failures.append(
                f"{off_dla} of {on_dla + off_dla} {wanted} layers did not land on the DLA (without GPU fallback)"
            )
        elif not on_dla and not gpu_fallback:
            audit.failures.append(f"no {wanted} layer runs on the DLA")
    for node in pinned:
        match = _pinned_layer(layers, node, set(pinned))
        if match is None:
            audit.pinned_unchecked.append(node)
            continue
        computed = match.computed_type
        audit.pinned_fp32[node] = computed or "unknown"
        if computed not in ("FP32", None):
            audit.failures.append(f"pinned layer {node} runs in {computed} (engine layer {match.name!r})")
    return audit
