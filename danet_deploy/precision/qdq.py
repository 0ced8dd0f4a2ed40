"""Q/DQ helpers: what a quantized model holds (`qdq_summary`), whether TensorRT takes its Q/DQ (`check_qdq`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from danet_deploy.bounded_ort.query_blocks import QDQ_OPS
from danet_deploy.errors import CheckFailedError

QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class QdqSummary:
    """What the Q/DQ model holds; `check_qdq` fails on anything TensorRT would reject."""

    quantize_nodes: int
    dequantize_nodes: int
    per_channel_weights: int  # weights with one scale per output channel
    per_tensor_weights: int
    quantized_layers: list[str]  # Conv/MatMul/Gemm nodes fed by a DequantizeLinear


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _constant(name: str, inits: dict[str, np.ndarray], constants: dict[str, np.ndarray]) -> np.ndarray | None:
    return inits[name] if name in inits else constants.get(name)


def _op(node: onnx.NodeProto | None) -> str:
    return node.op_type if node is not None else ""


def qdq_summary(
    model: onnx.ModelProto, inits: dict[str, np.ndarray] | None = None, constants: dict[str, np.ndarray] | None = None
) -> QdqSummary:
    """Count Q/DQ nodes and per-channel weight scales; list the Conv/MatMul/Gemm nodes fed by a DequantizeLinear."""
    inits = _initializers(model) if inits is None else inits
    constants = _constants(model) if constants is None else constants
    producers = {o: n for n in model.graph.node for o in n.output}
    per_channel = per_tensor = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = producers.get(node.input[0])
        weight = node.input[0] in inits or (
            source is not None and source.op_type == "QuantizeLinear" and source.input[0] in inits
        )
        if weight:
            scale = _constant(node.input[1], inits, constants)
            if scale is not None and scale.size > 1:
                per_channel += 1
            else:
                per_tensor += 1
    layers = [
        n.name
        for n in model.graph.node
        if n.op_type in QUANTIZED_OPS and any(_op(producers.get(i)) == "DequantizeLinear" for i in n.input)
    ]
    return QdqSummary(
        quantize_nodes=sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        dequantize_nodes=sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
        per_channel_weights=per_channel,
        per_tensor_weights=per_tensor,
        quantized_layers=layers,
    )


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        n.output[0]: numpy_helper.to_array(a.t)
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }


def check_qdq(model: onnx.ModelProto, where: str) -> QdqSummary:
    """Every Q/DQ is INT8 with zero point 0 (TensorRT rejects others); then the summary."""
    inits, constants = _initializers(model), _constants(model)
    bad: list[str] = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        zero = _constant(node.input[2], inits, constants) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            # An absent zero point defaults to uint8 0: TensorRT needs INT8.
            bad.append(f"{node.name} has no INT8 zero point")
        elif zero.dtype != np.int8 or np.any(zero != 0):
            bad.append(f"{node.name} zero point {zero.dtype} {zero.ravel()[:3].tolist()}")
    if bad:
        raise CheckFailedError(f"{where}: Q/DQ not TensorRT-ready: {'; '.join(bad[:3])} ({len(bad)} in all)")
    return qdq_summary(model, inits, constants)
