"""Tensor shapes by ONNX shape inference, optionally with the input fixed to a concrete size."""

from __future__ import annotations

import copy
from typing import TypeGuard

import onnx

Dim = int | str | None


def all_static(shape: list[Dim]) -> TypeGuard[list[int]]:
    """Whether every dim of `shape` is a concrete int (no symbolic name, no unknown)."""
    return all(isinstance(d, int) for d in shape)


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


SMALL_INITIALIZER = 4096  # elements; larger float initializers (weights) are not needed to infer shapes


def structure_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without its weights: large float initializers become typed graph inputs (shape inference needs
    their shapes, not their values), so inferring shapes of a 250 MB model does not copy 250 MB twice."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    inputs = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        size = 1
        for d in init.dims:
            size *= d
        if init.data_type in floats and size > SMALL_INITIALIZER:
            if init.name not in inputs:
                g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            g.initializer.append(init)
    return light


def infer_shapes_and_types(model: onnx.ModelProto) -> tuple[dict[str, list[Dim]], dict[str, int]]:
    """(name -> dims (int, symbolic name, or None when unknown), name -> element type) for every tensor shape
    inference reaches; initializers included."""
    try:
        inferred = onnx.shape_inference.infer_shapes(structure_only(model), data_prop=True)
    except Exception:  # inference is best-effort; a partial result is still useful
        inferred = model
    shapes: dict[str, list[Dim]] = {}
    types: dict[str, int] = {}
    g = inferred.graph
    for value in [*g.input, *g.value_info, *g.output]:
        t = value.type.tensor_type
        if t.elem_type:
            types[value.name] = t.elem_type
        if t.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
            ]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
        types[init.name] = init.data_type
    return shapes, types


def infer_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """name -> dims (int, symbolic name, or None when unknown) for every tensor shape inference reaches."""
    return infer_shapes_and_types(model)[0]


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
