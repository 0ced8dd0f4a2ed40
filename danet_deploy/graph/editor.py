"""Small helpers for editing an ONNX graph in place: lookups, fresh names, constants, topological order."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphEditor:
    """Producer/consumer lookups over `model.graph` plus helpers to add nodes and initializers.

    Rewrites add their nodes with `add`, remove what they replace with `remove`, and call `commit`, which
    drops nodes whose outputs nobody uses and restores a topological order.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self._counter = itertools.count()
        self._names = {n.name for n in self.graph.node} | {o for n in self.graph.node for o in n.output}
        self._names |= {i.name for i in self.graph.initializer} | {i.name for i in self.graph.input}
        self._initializers = {i.name: i for i in self.graph.initializer}

    # lookups ---------------------------------------------------------------------------------------------
    def producer(self, tensor: str) -> onnx.NodeProto | None:
        for node in self.graph.node:
            if tensor in node.output:
                return node
        return None

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if tensor in n.input or tensor in _subgraph_inputs(n)]

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output, else None."""
        if tensor in self._initializers:
            return numpy_helper.to_array(self._initializers[tensor])
        node = self.producer(tensor)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def is_graph_output(self, tensor: str) -> bool:
        return any(o.name == tensor for o in self.graph.output)

    # building --------------------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        while True:
            name = f"{base}_{next(self._counter)}"
            if name not in self._names:
                self._names.add(name)
                return name

    def const(self, base: str, value: np.ndarray | Sequence[int] | float) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.fresh(base)
        tensor = numpy_helper.from_array(array, name)
        self.graph.initializer.append(tensor)
        self._initializers[name] = tensor
        return name

    # attrs: ONNX attribute values (ints, floats, strings, tensors, graphs or lists of them), as make_node takes them.
    def add(self, op_type: str, inputs: Sequence[str], base: str, n_outputs: int = 1, **attrs: Any) -> list[str]:
        outputs = [self.fresh(f"{base}_out") for _ in range(n_outputs)]
        node = helper.make_node(op_type, list(inputs), outputs, name=self.fresh(base), **attrs)
        self.graph.node.append(node)
        return outputs

    def add1(self, op_type: str, inputs: Sequence[str], base: str, **attrs: object) -> str:
        return self.add(op_type, inputs, base, 1, **attrs)[0]

    def replace_uses(self, old: str, new: str) -> None:
        """Point every consumer of `old` at `new` (attention outputs are never graph outputs)."""
        if self.is_graph_output(old):
            raise ValueError(f"cannot rewire graph output {old!r}")
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def remove(self, nodes: Iterable[onnx.NodeProto]) -> None:
        drop = {id(n) for n in nodes}
        keep = [n for n in self.graph.node if id(n) not in drop]
        del self.graph.node[:]
        self.graph.node.extend(keep)

    def commit(self) -> None:
        toposort(self.graph)  # first: new nodes were appended after their consumers
        remove_dead_nodes(self.graph)
        used = {i for n in self.graph.node for i in [*n.input, *_subgraph_inputs(n)]}
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        # value_info of removed tensors would mislead shape inference; it is recomputed by consumers.
        del self.graph.value_info[:]


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names a node's subgraphs (Scan/Loop/If bodies) read."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            produced = (
                {o for n in g.node for o in n.output} | {i.name for i in g.input} | {i.name for i in g.initializer}
            )
            for n in g.node:
                names |= {i for i in [*n.input, *_subgraph_inputs(n)] if i and i not in produced}
    return names


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    alive: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed |= set(node.input) | _subgraph_inputs(node)
    del graph.node[:]
    graph.node.extend(reversed(alive))


def toposort(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(i in available for i in [*node.input, *_subgraph_inputs(node)]):
                ordered.append(node)
                available |= set(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            missing = sorted({i for n in rest for i in n.input if i not in available})[:5]
            raise ValueError(f"graph has a cycle or dangling inputs: {missing}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def float_attribute(node: onnx.NodeProto, name: str, default: float) -> float:
    """A FLOAT attribute (epsilon, alpha, ...), or `default` when the node does not set it."""
    value = attribute(node, name, default)
    return float(value) if isinstance(value, (int, float)) else default


def ints_attribute(node: onnx.NodeProto, name: str) -> list[int] | None:
    """An INTS attribute (perm, axes, ...), or None when the node does not set it."""
    value = attribute(node, name)
    return [int(v) for v in value] if isinstance(value, list) else None


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
