"""Running a model in consecutive pieces, to fetch many of its intermediate tensors in bounded memory.

Fetching a tensor from ONNX Runtime makes it a graph output, and graph outputs live until the run ends: asking
for every activation of DANet-R50 at 1024x2048 at once holds about 6 GiB. Here the nodes (in graph order) are
cut into segments whose fetched tensors fit a byte budget; each segment is a model of its own whose inputs are
the tensors it reads from earlier segments, and one image runs through them in turn. Only the tensors that
cross a cut (a block output or two) and one segment's fetched tensors are held at a time; the weights are split
between the segments, so they exist once. The values are those of the whole model (the same nodes run on the
same inputs; a fetched tensor cannot be fused away in either case).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from danet_deploy.artifact import onnxruntime_session
from danet_deploy.bounded_ort.query_blocks import ITEMSIZE
from danet_deploy.graph.editor import _subgraph_inputs
from danet_deploy.graph.shapes import all_static, infer_shapes_and_types


@dataclass
class Segment:
    nodes: list[onnx.NodeProto]
    inputs: list[str]  # tensors it reads from the feed or from earlier segments
    outputs: list[str]  # tensors it passes on (read later, or graph outputs) plus the fetched ones
    fetched: list[str]  # the caller's tensors produced here
    release: list[str] = field(default_factory=list)  # held tensors no later segment reads
    session: Any = None


def _reads(node: onnx.NodeProto) -> list[str]:
    return [i for i in [*node.input, *sorted(_subgraph_inputs(node))] if i]


def split(model: onnx.ModelProto, fetch: list[str], max_bytes: int) -> list[Segment]:
    """Cut `model`'s nodes into segments whose fetched tensors (of `fetch`) take at most `max_bytes` each (a
    single node's outputs may exceed it). Tensors of unknown size count as `max_bytes`."""
    shapes, types = infer_shapes_and_types(model)
    wanted = set(fetch)
    initializers = {i.name for i in model.graph.initializer}

    def size(tensor: str) -> int:
        shape = shapes.get(tensor)
        if not shape or not all_static(shape):
            return max_bytes
        return math.prod(shape) * ITEMSIZE.get(types.get(tensor, onnx.TensorProto.FLOAT), 4)

    groups: list[list[onnx.NodeProto]] = [[]]
    held = 0
    for node in model.graph.node:
        produced = sum(size(o) for o in node.output if o in wanted)
        if groups[-1] and held + produced > max_bytes:
            groups.append([])
            held = 0
        groups[-1].append(node)
        held += produced
    graph_outputs = [o.name for o in model.graph.output]
    later_reads: list[set[str]] = []
    needed = set(graph_outputs)
    for nodes in reversed(groups):  # what each segment's successors read
        later_reads.insert(0, set(needed))
        needed |= {i for n in nodes for i in _reads(n)}
    segments = []
    for nodes, after in zip(groups, later_reads):
        written = {o for n in nodes for o in n.output if o}
        inputs = sorted({i for n in nodes for i in _reads(n) if i not in written and i not in initializers})
        fetched = [o for n in nodes for o in n.output if o in wanted]
        outputs = [o for n in nodes for o in n.output if o and (o in after or o in wanted)]
        segments.append(Segment(nodes, inputs, outputs, fetched))
    available: set[str] = {i.name for i in model.graph.input}
    for index, segment in enumerate(segments):  # drop held tensors once no later segment reads them
        available |= set(segment.outputs)
        later = set().union(*(s.inputs for s in segments[index + 1 :]))
        segment.release = sorted(t for t in available if t not in later)
        available -= set(segment.release)
    return segments


def _segment_model(model: onnx.ModelProto, segment: Segment, types: dict[str, int], shapes: dict) -> onnx.ModelProto:
    used = {i for n in segment.nodes for i in _reads(n)}
    initializers = [i for i in model.graph.initializer if i.name in used]

    def value(name: str) -> onnx.ValueInfoProto:
        shape = shapes.get(name)
        return helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), shape)

    graph = helper.make_graph(
        list(segment.nodes),
        "segment",
        [value(i) for i in segment.inputs],
        [value(o) for o in segment.outputs],
        initializers,
    )
    part = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    part.functions.extend(model.functions)
    return part


class SegmentedRun:
    """`fetch` tensors of `model`, segment by segment (see the module doc). `session(model_bytes)` makes each
    segment's session (default: ONNX Runtime CPU, no arena)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        fetch: list[str],
        max_bytes: int,
        session: Callable[[bytes], Any] = lambda data: onnxruntime_session(data, arena=False),
    ) -> None:
        self.input_names = [i.name for i in model.graph.input]
        self.fetch_inputs = [name for name in fetch if name in self.input_names]
        self.segments = split(model, fetch, max_bytes)
        shapes, types = infer_shapes_and_types(model)
        for segment in self.segments:
            data = _segment_model(model, segment, types, shapes).SerializeToString()
            segment.session = session(data)
            segment.nodes = []  # the sessions hold what they need; do not keep the model's weights alive
            del data

    def run(self, feed: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """One input: yields, per segment, {tensor: value} of the fetched tensors produced there (the feed's own
        fetched inputs first). Drop each dict before asking for the next to keep memory bounded."""
        if self.fetch_inputs:
            yield {name: feed[name] for name in self.fetch_inputs}
        live: dict[str, np.ndarray] = dict(feed)
        for segment in self.segments:
            values = segment.session.run(segment.outputs, {name: live[name] for name in segment.inputs})
            produced = dict(zip(segment.outputs, values))
            del values
            live.update(produced)
            fetched = {name: produced[name] for name in segment.fetched}
            del produced
            for name in segment.release:
                live.pop(name, None)
            yield fetched
            del fetched
