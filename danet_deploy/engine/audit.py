"""What precision an engine really runs in, read from TensorRT's layer information.

A build can succeed and still not be what was asked for: TensorRT 11 ignores precision flags, and a weakly
typed build may fall back to FP32 for every layer. After each build the engine's layer information
(`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`, complete with
`ProfilingVerbosity.DETAILED`) is parsed here and judged against the plan.

The JSON is TensorRT's documented format (developer guide, "Engine Inspector"): `{"Layers": [...],
"Bindings": [...]}`, each layer with "Name", "LayerType", "Inputs"/"Outputs" (each with "Name", "Dimensions",
"Format/Datatype", e.g. "Row major linear FP16 format", "Channel major FP16 format where channel % 8 == 0",
"Thirty-two wide channel vectorized row major Int8 format") and, from TensorRT 10, "Metadata" naming the ONNX
nodes a layer came from ("[ONNX Layer: /head/cam/MatMul]", several joined by \\x1e when layers were fused).
A layer's precision is that of its first input, as NVIDIA's engine explorer (TREx) reads it; layers that only
move or convert data (Reformat, NoOp) are not counted as compute.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Data type words inside "Format/Datatype" strings -> our names.
_TYPE_WORDS = {
    "fp32": "FP32",
    "float": "FP32",
    "fp16": "FP16",
    "half": "FP16",
    "bfloat16": "BF16",
    "fp8": "FP8",
    "int8": "INT8",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "bool": "BOOL",
    "int4": "INT4",
    "fp4": "FP4",
}
_TYPE_PATTERN = re.compile(r"\b(" + "|".join(_TYPE_WORDS) + r")\b", re.IGNORECASE)
DATA_MOVEMENT = {"Reformat", "NoOp"}


def tensor_type(format_datatype: str) -> str | None:
    """'Row major linear FP16 format' -> 'FP16'; None when no type word is found."""
    found = _TYPE_PATTERN.search(format_datatype or "")
    return _TYPE_WORDS[found.group(1).lower()] if found else None


@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str
    precision: str | None  # type of the first input; None for layers without inputs (constants)
    output_types: tuple[str | None, ...]
    onnx_nodes: tuple[str, ...]  # from "Metadata" (TensorRT >= 10), else ()

    @property
    def computes(self) -> bool:
        return self.layer_type not in DATA_MOVEMENT


def parse_layer_information(text: str) -> list[EngineLayer]:
    """TensorRT's engine information JSON -> layers; ValueError when it is not detailed layer information."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"engine layer information is not JSON ({exc.msg})") from None
    raw_layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(raw_layers, list):
        raise ValueError('engine layer information has no "Layers" list')
    layers = []
    for raw in raw_layers:
        if not isinstance(raw, dict) or "Inputs" not in raw:
            raise ValueError(
                "engine layer information lists layer names only: the engine was not built with "
                "ProfilingVerbosity.DETAILED"
            )
        inputs, outputs = raw.get("Inputs") or [], raw.get("Outputs") or []
        metadata = str(raw.get("Metadata") or "")
        nodes = tuple(re.findall(r"\[ONNX Layer: ([^\]]+)\]", metadata))
        layers.append(
            EngineLayer(
                name=str(raw.get("Name", "")),
                layer_type=str(raw.get("LayerType", "")),
                precision=tensor_type(str(inputs[0].get("Format/Datatype", ""))) if inputs else None,
                output_types=tuple(tensor_type(str(o.get("Format/Datatype", ""))) for o in outputs),
                onnx_nodes=nodes,
            )
        )
    return layers


@dataclass
class EngineAudit:
    """Layers per precision and the pinned-layer check, as recorded in the sidecar."""

    compute_layers: dict[str, int]  # precision -> compute layers (first-input type)
    total_layers: int
    pinned_fp32: dict[str, str] = field(default_factory=dict)  # pinned ONNX node -> engine precision found
    # Not checkable: fused with unpinned nodes (the layer's type then says nothing about the pinned part) or not
    # named in the layer information at all.
    pinned_unchecked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineAudit:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def summary(self) -> str:
        """'FP16 212, FP32 14 compute layers; pinned FP32 5/5'."""
        counts = ", ".join(f"{p} {n}" for p, n in sorted(self.compute_layers.items(), key=lambda kv: -kv[1]))
        text = f"{counts or 'no'} compute layers"
        if self.pinned_fp32 or self.pinned_unchecked:
            ok = sum(1 for p in self.pinned_fp32.values() if p == "FP32")
            text += f"; pinned FP32 {ok}/{len(self.pinned_fp32) + len(self.pinned_unchecked)} confirmed"
        return text


def _pinned_layer(layers: list[EngineLayer], node: str, pinned: set[str]) -> EngineLayer | None:
    """The engine layer that computes only pinned nodes, `node` among them; None when there is no such layer."""
    for layer in (layer for layer in layers if layer.computes):
        # TensorRT >= 10 names the ONNX nodes of a layer in its metadata; older ones join them in the name.
        nodes = set(layer.onnx_nodes) or {part.strip() for part in layer.name.split(" + ")}
        if node in nodes:
            return layer if nodes <= pinned else None
    return None


def audit_engine(layers: list[EngineLayer], precision: str, pinned: list[str] = ()) -> EngineAudit:
    """Judge the layers against the requested precision: an fp16 engine needs an FP16 layer, an int8 engine an
    INT8 layer, and every pinned layer that can be found must run in FP32."""
    compute = [layer for layer in layers if layer.computes and layer.precision is not None]
    counts = Counter(layer.precision for layer in compute)
    audit = EngineAudit(compute_layers=dict(counts), total_layers=len(layers))
    wanted = {"fp16": "FP16", "int8": "INT8"}.get(precision)
    if wanted and not counts.get(wanted):
        found = ", ".join(f"{p} {n}" for p, n in counts.items()) or "none"
        audit.failures.append(f"the {precision} engine has no {wanted} layer (compute layers: {found})")
    for node in pinned:
        layer = _pinned_layer(layers, node, set(pinned))
        if layer is None:
            audit.pinned_unchecked.append(node)
            continue
        audit.pinned_fp32[node] = layer.precision or "unknown"
        if layer.precision not in ("FP32", None):
            audit.failures.append(f"pinned layer {node} runs in {layer.precision} (engine layer {layer.name!r})")
    return audit
