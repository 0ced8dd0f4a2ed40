"""Find DANet's attention sites in an ONNX graph and tell which form each is in.

PAM (position attention), by form:
- `naive`: MatMul(Q [B,N,d], K [B,d,N]) -> Softmax -> Transpose -> MatMul(V [B,C,N], S^T), as exported;
- `mha`: 4-D MatMul(Q4, Transpose(K4)) -> Softmax -> MatMul(., V4) on [B, heads, N, H];
- `onnx-attention`: one ONNX `Attention` node;
- `blocked`: a `Scan` over query blocks whose body holds the MatMul -> Softmax -> MatMul.
CAM (channel attention): `rowmax` (Softmax(Expand(ReduceMax(E)) - E), as trained) or `clean`
(MatMul(Neg(X), X^T) -> Softmax -> MatMul).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from .editor import GraphEditor, attribute


@dataclass
class AttentionSite:
    kind: str  # "pam" or "cam"
    form: str
    softmax: str  # node name (for Attention / Scan sites: that node's name)
    nodes: list[str] = field(default_factory=list)  # names of the nodes that make up the site
    # PAM naive form only: the tensors a rewrite starts from.
    query: str | None = None  # [B, N, d]
    key: str | None = None  # [B, d, N]
    value: str | None = None  # [B, C, N]
    output: str | None = None  # [B, C, N]


def _transpose_perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None or node.op_type != "Transpose":
        return None
    perm = attribute(node, "perm")
    return list(perm) if perm is not None else None


def _body_has_softmax(node: onnx.NodeProto) -> bool:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH and any(n.op_type == "Softmax" for n in attr.g.node):
            return True
    return False


def find_sites(model: onnx.ModelProto) -> list[AttentionSite]:
    ed = GraphEditor(model)
    sites: list[AttentionSite] = []
    for node in model.graph.node:
        if node.op_type == "Attention":
            sites.append(AttentionSite("pam", "onnx-attention", node.name, [node.name]))
        elif node.op_type == "Scan" and _body_has_softmax(node):
            sites.append(AttentionSite("pam", "blocked", node.name, [node.name]))
        elif node.op_type == "Softmax":
            site = _softmax_site(ed, node)
            if site is not None:
                sites.append(site)
    return sites


def _softmax_site(ed: GraphEditor, softmax: onnx.NodeProto) -> AttentionSite | None:
    source = ed.producer(softmax.input[0])
    consumers = ed.consumers(softmax.output[0])
    if source is None or len(consumers) != 1:
        return None
    after = consumers[0]
    if source.op_type == "Sub":
        # CAM as trained: Softmax(Expand(ReduceMax(E)) - E), E = MatMul(X, X^T).
        energy = ed.producer(source.input[1])
        rowmax = ed.producer(source.input[0])
        if rowmax is not None and rowmax.op_type == "Expand":
            rowmax = ed.producer(rowmax.input[0])
        if energy is not None and energy.op_type == "MatMul" and rowmax is not None and rowmax.op_type == "ReduceMax":
            nodes = [energy.name, rowmax.name, source.name, softmax.name, after.name]
            return AttentionSite("cam", "rowmax", softmax.name, nodes)
        return None
    if source.op_type != "MatMul":
        return None
    first_a = ed.producer(source.input[0])
    if first_a is not None and first_a.op_type == "Neg" and after.op_type == "MatMul":
        return AttentionSite("cam", "clean", softmax.name, [first_a.name, source.name, softmax.name, after.name])
    if after.op_type == "MatMul" and after.input[0] == softmax.output[0]:
        # S @ V4 directly (no transpose of S): the 4-D multi-head form. Its K transpose may have been
        # folded by a simplifier, so it is not part of the match.
        return AttentionSite("pam", "mha", softmax.name, [source.name, softmax.name, after.name])
    if _transpose_perm(after) == [0, 2, 1]:
        transposed = ed.consumers(after.output[0])
        if len(transposed) == 1 and transposed[0].op_type == "MatMul" and transposed[0].input[1] == after.output[0]:
            out = transposed[0]
            return AttentionSite(
                "pam", "naive", softmax.name, [source.name, softmax.name, after.name, out.name],
                query=source.input[0], key=source.input[1], value=out.input[0], output=out.output[0],
            )  # fmt: skip
    return None
