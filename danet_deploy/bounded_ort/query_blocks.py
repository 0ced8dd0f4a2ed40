"""Evaluating a graph's attention in query blocks, so that checks run in bounded memory. The graph a user
deploys is never changed: checks build a bounded copy to run.

PAM attends over N = H/8 x W/8 positions; every form of it keeps N x N maps: 32,768 x 32,768 at 1024x2048,
4 GiB per map in FP32, two alive at once (energy and softmax), and the multi-head forms repeat them per head
(8 x for DANet's 512 channels in heads of 64). But attention rows are independent: row i of
softmax(Q K^T) V depends on query i alone, since the softmax runs over the keys of that row. So a graph's
attention can be evaluated one block of queries at a time with the graph's own ops: the nodes between the
queries and the attention output (MatMul -> [Cast/Identity] -> Softmax -> [Cast/Identity/Transpose] ->
MatMul, or one ONNX `Attention` node) move into the body of a `Scan` over query blocks, keys and values
stay outside, every other node runs as written and every tensor outside the attention keeps its name.
The result equals the graph as written up to float rounding, and only block x N maps exist at a time.

Checks run a graph as written when its attention fits `CHECK_ATTENTION_BYTES` (and say so), else this
way (and say that, with the block size and what the form as written would need).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from danet_deploy.artifact import OnnxModel, onnxruntime_session
from danet_deploy.graph.editor import GraphEditor, _subgraph_inputs, attribute, ints_attribute
from danet_deploy.graph.shapes import infer_shapes_and_types, structure_only, with_input_shape
from danet_deploy.model.danet import QUERY_CHUNK_BYTES
from danet_deploy.progress import format_bytes

CHECK_ATTENTION_BYTES = 1 << 30  # attention maps a check may hold as written, all sites together
BLOCK_BYTES = QUERY_CHUNK_BYTES  # one query block's attention map (per tensor), as PyTorch's reference blocks it
MAP_OPS = ("Cast", "Identity", "QuantizeLinear", "DequantizeLinear")  # elementwise ops on an attention map
ITEMSIZE: dict[int, int] = {  # ONNX element type -> bytes per element
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
}
AMAX_SUFFIX = "__absmax"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class AttentionRegion:
    """The nodes from the queries to an attention output whose intermediates are N x N maps."""

    nodes: list[onnx.NodeProto]  # in graph order
    query: str  # input whose axis -2 holds the queries ([..., M, d])
    output: str  # the attention output; its axis `output_axis` holds the queries
    output_axis: int  # absolute axis of the queries in `output`
    maps: list[str]  # the intermediate tensors (attention maps); empty for one `Attention` node
    queries: int  # M
    map_bytes: int  # bytes of one attention map as written (all heads)

    @property
    def bytes_as_written(self) -> int:
        """Two maps alive at once (energy and softmax, or the kernel's scores and probabilities)."""
        return 2 * self.map_bytes


@dataclass
class Evaluation:
    """How a check evaluates a model: as written, or with its attention in query blocks."""

    sites: int  # attention sites found
    blocked: int  # of which evaluated in query blocks
    block: int | None  # queries per block (the smallest over blocked sites)
    bytes_as_written: int  # estimated attention memory of the graph as written
    bytes_evaluated: int  # ... as evaluated

    quantized: bool = False  # Q/DQ model: ONNX Runtime's QDQ propagation is off (see `bounded_session`)

    def describe(self) -> str:
        if not self.blocked:
            return "as written"
        note = "; Q/DQ not propagated by ONNX Runtime" if self.quantized else ""
        return (
            f"attention in query blocks of {self.block} (exact; as written it needs "
            f"~{format_bytes(self.bytes_as_written)}{note})"
        )


# finding the regions -------------------------------------------------------------------------------------


def _static(shape: list | None) -> list[int] | None:
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return [int(d) for d in shape]


class _Graph:
    """Producer / consumer maps of the top-level graph (subgraph reads count as uses)."""

    def __init__(self, model: onnx.ModelProto):
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in {*node.input, *_subgraph_inputs(node)}:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
        self.outputs = {o.name for o in model.graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.initializers = {i.name: i for i in model.graph.initializer}

    def private(self, tensor: str) -> bool:
        """Used by exactly one node and not a graph output: it may move into a Scan body."""
        return self.uses.get(tensor, 0) == 1 and tensor not in self.outputs

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and self.private(tensor) else None

    def per_tensor(self, node: onnx.NodeProto) -> bool:
        """A Q/DQ node with a scalar scale (per-tensor): elementwise on an attention map."""
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            return True
        scale = self.initializers.get(node.input[1])
        return scale is not None and math.prod(scale.dims) == 1


def _softmax_region(g: _Graph, softmax: onnx.NodeProto, shapes: dict, types: dict) -> AttentionRegion | None:
    scores_shape = _static(shapes.get(softmax.input[0]))
    if scores_shape is None or len(scores_shape) < 3:
        return None
    rank = len(scores_shape)
    axis = attribute(softmax, "axis", -1)
    if axis not in (-1, rank - 1):
        return None
    before: list[onnx.NodeProto] = []
    tensor = softmax.input[0]
    node = g.producer.get(tensor)
    while node is not None and node.op_type in MAP_OPS and g.private(tensor) and g.per_tensor(node):
        before.insert(0, node)
        tensor = node.input[0]
        node = g.producer.get(tensor)
    if node is None or node.op_type != "MatMul" or not g.private(tensor):
        return None
    score = node
    after: list[onnx.NodeProto] = []
    query_axis = rank - 2
    tensor = softmax.output[0]
    node = g.only_consumer(tensor)
    while node is not None and (node.op_type in MAP_OPS or node.op_type == "Transpose") and g.per_tensor(node):
        if node.op_type == "Transpose":
            perm = ints_attribute(node, "perm")
            query_axis = (list(range(rank - 1, -1, -1)) if perm is None else perm).index(query_axis)
        after.append(node)
        tensor = node.output[0]
        node = g.only_consumer(tensor)
    if node is None or node.op_type != "MatMul":
        return None
    context = node
    if context.input[0] == tensor and query_axis == rank - 2:
        output_axis = rank - 2
    elif context.input[1] == tensor and query_axis == rank - 1 and context.input[0] != tensor:
        output_axis = rank - 1
    else:
        return None
    query_shape = _static(shapes.get(score.input[0]))
    output_shape = _static(shapes.get(context.output[0]))
    if query_shape is None or output_shape is None or len(query_shape) != rank or len(output_shape) != rank:
        return None
    nodes = [score, *before, softmax, *after, context]
    maps = [n.output[0] for n in nodes[:-1]]
    itemsize = max(ITEMSIZE.get(types.get(t, onnx.TensorProto.FLOAT), 4) for t in maps)
    return AttentionRegion(
        nodes,
        score.input[0],
        context.output[0],
        output_axis,
        maps,
        scores_shape[-2],
        math.prod(scores_shape) * itemsize,
    )


def _attention_node_region(g: _Graph, node: onnx.NodeProto, shapes: dict, types: dict) -> AttentionRegion | None:
    """One ONNX `Attention` node with 4-D Q [B, heads, M, d], K [B, kv_heads, N, d] (no cache outputs used)."""
    if any((name and g.uses.get(name, 0)) or name in g.outputs for name in node.output[1:]):
        return None
    q = _static(shapes.get(node.input[0]))
    k = _static(shapes.get(node.input[1]))
    out = _static(shapes.get(node.output[0]))
    if q is None or k is None or out is None or len(q) != 4 or len(k) != 4 or len(out) != 4:
        return None
    itemsize = ITEMSIZE.get(types.get(node.input[0], onnx.TensorProto.FLOAT), 4)
    return AttentionRegion([node], node.input[0], node.output[0], 2, [], q[2], q[0] * q[1] * q[2] * k[2] * itemsize)


def find_regions(model: onnx.ModelProto, inferred: tuple[dict, dict] | None = None) -> list[AttentionRegion]:
    """Every attention whose maps could be computed in query blocks (static shapes needed). `inferred`: the
    model's (shapes, element types) when already known."""
    shapes, types = infer_shapes_and_types(model) if inferred is None else inferred
    g = _Graph(model)
    regions = []
    for node in model.graph.node:
        region = None
        if node.op_type == "Softmax":
            region = _softmax_region(g, node, shapes, types)
        elif node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            region = _attention_node_region(g, node, shapes, types)
        if region is not None:
            regions.append(region)
    return regions


# blocking -----------------------------------------------------------------------------------------------


def _block_size(region: AttentionRegion, block_bytes: int) -> tuple[int, int]:
    """(queries per block, padded query count): a divisor of M when a good one exists, else padding."""
    per_query = max(1, region.map_bytes // region.queries)
    target = max(1, min(region.queries, block_bytes // per_query))
    divisor = max(d for d in range(1, target + 1) if region.queries % d == 0)
    if divisor * 2 >= target:
        return divisor, region.queries
    return target, math.ceil(region.queries / target) * target


def _element_type(types: dict[str, int], name: str) -> int:
    return types.get(name) or onnx.TensorProto.FLOAT


def _block_region(
    ed: GraphEditor, region: AttentionRegion, shapes: dict, types: dict, block_bytes: int, reduce_maps: bool
) -> dict[str, str]:
    """Replace the region by a Scan over query blocks; returns {map tensor: its absmax tensor} (`reduce_maps`)."""
    block, padded = _block_size(region, block_bytes)
    query_shape = [int(d) for d in shapes[region.query]]
    output_shape = [int(d) for d in shapes[region.output]]
    rank = len(query_shape)
    qaxis, oaxis = rank - 2, region.output_axis
    blocks = padded // block
    query = region.query
    if padded != region.queries:  # pad the queries; the extra rows are sliced off the output
        pads = [0] * (2 * rank)
        pads[rank + qaxis] = padded - region.queries
        query = ed.add1("Pad", [query, ed.const("bounded_pads", np.array(pads, np.int64))], "bounded_pad")
    split = np.array([0] * qaxis + [blocks, block, -1], np.int64)
    q_blocks = ed.add1("Reshape", [query, ed.const("bounded_split", split)], "bounded_split")

    renamed = {region.query: ed.fresh("bounded_q")}
    renamed.update({t: ed.fresh(f"bounded_{t}") for n in region.nodes for t in n.output if t})
    body_nodes = []
    for node in region.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = ed.fresh(f"bounded_{node.name or node.op_type}")
        copy.input[:] = [renamed.get(i, i) for i in node.input]
        copy.output[:] = [renamed.get(o, o) if o else o for o in node.output]
        body_nodes.append(copy)
    body_query_shape = list(query_shape)
    body_query_shape[qaxis] = block
    body_output_shape = list(output_shape)
    body_output_shape[oaxis] = block
    body_outputs = [
        helper.make_tensor_value_info(renamed[region.output], _element_type(types, region.output), body_output_shape)
    ]
    amax: dict[str, str] = {}
    if reduce_maps:  # max |value| of each map per block, as extra scan outputs
        for tensor in region.maps:
            magnitude = ed.fresh(f"bounded_abs_{tensor}")
            peak = ed.fresh(f"bounded_peak_{tensor}")
            body_nodes.append(helper.make_node("Abs", [renamed[tensor]], [magnitude], name=ed.fresh("bounded_abs")))
            body_nodes.append(
                helper.make_node("ReduceMax", [magnitude], [peak], name=ed.fresh("bounded_reduce"), keepdims=0)
            )
            body_outputs.append(helper.make_tensor_value_info(peak, onnx.TensorProto.FLOAT, []))
            amax[tensor] = peak
    body = helper.make_graph(
        body_nodes,
        ed.fresh("bounded_body"),
        [helper.make_tensor_value_info(renamed[region.query], _element_type(types, region.query), body_query_shape)],
        body_outputs,
    )
    out_names = [ed.fresh("bounded_stacked")] + [ed.fresh(f"bounded_blocks_{t}") for t in amax]
    scan = helper.make_node(
        "Scan",
        [q_blocks],
        out_names,
        name=ed.fresh("bounded_scan"),
        body=body,
        num_scan_inputs=1,
        scan_input_axes=[qaxis],
        scan_output_axes=[oaxis] + [0] * len(amax),
    )
    ed.graph.node.append(scan)
    merged_shape = list(output_shape)
    merged_shape[oaxis] = padded
    merge = ed.const("bounded_merge", np.array(merged_shape, np.int64))
    if padded == region.queries:
        ed.graph.node.append(
            helper.make_node("Reshape", [out_names[0], merge], [region.output], name=ed.fresh("bounded_merge"))
        )
    else:
        merged = ed.add1("Reshape", [out_names[0], merge], "bounded_merge")
        starts, ends, axes = (
            ed.const(f"bounded_slice_{k}", np.array([v], np.int64))
            for k, v in (("start", 0), ("end", region.queries), ("axis", oaxis))
        )
        ed.graph.node.append(
            helper.make_node("Slice", [merged, starts, ends, axes], [region.output], name=ed.fresh("bounded_unpad"))
        )
    result = {}
    for (tensor, _), stacked in zip(amax.items(), out_names[1:]):
        result[tensor] = f"{tensor}{AMAX_SUFFIX}"
        ed.graph.node.append(
            helper.make_node("ReduceMax", [stacked], [result[tensor]], name=ed.fresh("bounded_amax"), keepdims=0)
        )
    ed.remove(region.nodes)
    return result


def _limits(limit: int | None, block_bytes: int | None) -> tuple[int, int]:
    """The module's limits, read at call time (tests lower them to exercise blocking on small models)."""
    return (CHECK_ATTENTION_BYTES if limit is None else limit, BLOCK_BYTES if block_bytes is None else block_bytes)


def _plan(regions: list[AttentionRegion], limit: int, block_bytes: int) -> tuple[list[AttentionRegion], Evaluation]:
    """Which regions a check blocks, and the resulting Evaluation (before any editing)."""
    as_written = sum(r.bytes_as_written for r in regions)
    chosen = [r for r in regions if as_written > limit and r.map_bytes > block_bytes]
    if not chosen:
        return [], Evaluation(len(regions), 0, None, as_written, as_written)
    blocks = [_block_size(r, block_bytes)[0] for r in chosen]
    evaluated = as_written - sum(r.bytes_as_written - 2 * r.map_bytes * b // r.queries for r, b in zip(chosen, blocks))
    return chosen, Evaluation(len(regions), len(chosen), min(blocks), as_written, evaluated)


def plan_evaluation(
    model: onnx.ModelProto,
    input_shape: list[int] | None = None,
    limit: int | None = None,
    block_bytes: int | None = None,
) -> Evaluation:
    """How a check would evaluate `model` (see `bounded_model`), without building anything: for memory plans."""
    limit, block_bytes = _limits(limit, block_bytes)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if input_shape is not None and not all(d.HasField("dim_value") for d in dims):
        model = with_input_shape(structure_only(model), input_shape)
    return _plan(find_regions(model), limit, block_bytes)[1]


def bounded_model(
    model: onnx.ModelProto,
    input_shape: list[int] | None = None,
    limit: int | None = None,
    block_bytes: int | None = None,
    reduce_maps: bool = False,
    copy: bool = True,
) -> tuple[onnx.ModelProto, Evaluation, dict[str, str]]:
    """The model a check runs: as written when its attention fits `limit`, else with each attention whose
    maps exceed `block_bytes` evaluated in query blocks. `input_shape` fixes a dynamic input (blocking needs
    static shapes). With `reduce_maps` the max |value| of each blocked map becomes a graph output
    `<map>__absmax` (returned as {map: output}), so probes see magnitudes of tensors they cannot fetch.
    The input model is not modified unless `copy` is False. `limit` / `block_bytes` default to
    `CHECK_ATTENTION_BYTES` / `BLOCK_BYTES`.
    """
    limit, block_bytes = _limits(limit, block_bytes)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if input_shape is not None and not all(d.HasField("dim_value") for d in dims):
        model, copy = with_input_shape(model, input_shape), False
    shapes, types = infer_shapes_and_types(model)
    chosen, plan = _plan(find_regions(model, (shapes, types)), limit, block_bytes)
    if not chosen:
        return model, plan, {}
    if copy:
        copied = onnx.ModelProto()
        copied.CopyFrom(model)
        model = copied
        chosen = _plan(find_regions(model, (shapes, types)), limit, block_bytes)[0]  # the same, on the copy's nodes
    ed = GraphEditor(model)
    amax: dict[str, str] = {}
    for region in chosen:
        amax.update(_block_region(ed, region, shapes, types, block_bytes, reduce_maps))
    model.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, []) for name in amax.values())
    ed.commit()
    return model, plan, amax


def bounded_session(
    model: OnnxModel | onnx.ModelProto | str | os.PathLike[str] | bytes,
    input_shape: list[int] | None = None,
    threads: int | None = None,
    optimize: bool = True,
    flush_denormals: bool = False,
    limit: int | None = None,
    owned: bool = False,
    layout: bool = True,
) -> tuple[Any, Evaluation]:
    """An ONNX Runtime CPU session for a check (see `bounded_model`) and how it evaluates the model.

    A file whose attention fits is opened by ONNX Runtime from its path (no second copy of the weights; an
    OnnxModel is not parsed again). A ModelProto is copied before editing unless `owned` (the caller's throw-away
    copy). The session's activations go back to the system after each run (no arena). `layout` False: without
    ONNX Runtime's NCHWc layout pass (`onnxruntime_session`)."""
    path, own = None, True
    if isinstance(model, OnnxModel):
        path, model, own = model.path, model.proto, False
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        model = onnx.load(str(path))
    elif isinstance(model, bytes):
        model = onnx.load_from_string(model)
    else:
        own = owned
    checked, evaluation, _ = bounded_model(model, input_shape, limit, copy=not own)
    if not evaluation.blocked and path is not None and checked is model:
        del model, checked  # (an OnnxModel keeps its proto: no copy was made)
        return onnxruntime_session(path, threads, optimize, flush_denormals, arena=False, layout=layout), evaluation
    # ONNX Runtime 1.24's QDQ propagation (moving DequantizeLinear past Reshape / Transpose, an exact rewrite that
    # only changes which kernels run) aborts the process when the tensors it moves feed a Scan; leave it out there.
    evaluation.quantized = evaluation.blocked > 0 and any(n.op_type in QDQ_OPS for n in checked.graph.node)
    disabled = ["QDQPropagationTransformer"] if evaluation.quantized else None
    data = checked.SerializeToString()
    del model, checked
    return onnxruntime_session(
        data, threads, optimize, flush_denormals, arena=False, disabled_optimizers=disabled, layout=layout
    ), evaluation
