"""Tensor shapes by ONNX shape inference, optionally with the input fixed to a concrete size."""

from __future__ import annotations

import copy

import onnx

Dim = int | str | None


def with_input_shape(model: onnx.ModelProto, shape: list[int]) -> onnx.ModelProto:
    """A copy whose first input has the given concrete shape (outputs' dims cleared for re-inference)."""
    fixed = copy.deepcopy(model)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, shape):
        dim.Clear()
        dim.dim_value = int(value)
    for output in fixed.graph.output:
        for dim in output.type.tensor_type.shape.dim:
            dim.Clear()
    del fixed.graph.value_info[:]
    return fixed


def infer_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """name -> dims (int, symbolic name, or None when unknown) for every tensor shape inference reaches."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best-effort; a partial result is still useful
        inferred = model
    shapes: dict[str, list[Dim]] = {}
    g = inferred.graph
    for value in [*g.input, *g.value_info, *g.output]:
        t = value.type.tensor_type
        if t.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
            ]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def elem_type(model: onnx.ModelProto, name: str) -> int:
    """The element type of a tensor (FLOAT when unknown)."""
    g = model.graph
    for value in [*g.input, *g.value_info, *g.output]:
        if value.name == name and value.type.tensor_type.elem_type:
            return value.type.tensor_type.elem_type
    for init in g.initializer:
        if init.name == name:
            return init.data_type
    return onnx.TensorProto.FLOAT
