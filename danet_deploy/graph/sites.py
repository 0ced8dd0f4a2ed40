"""Find DANet's attention sites in an ONNX graph and tell which form each is in.

PAM (position attention), by form:
- `naive`: MatMul(Q [B,N,d], K [B,d,N]) -> Softmax -> Transpose -> MatMul(V [B,C,N], S^T), as exported;
- `mha`: 4-D MatMul(Q4, Transpose(K4)) -> Softmax -> MatMul(., V4) on [B, heads, N, H];
- `onnx-attention`: one ONNX `Attention` node;
- `blocked`: a `Scan` over query blocks whose body holds the MatMul -> Softmax -> MatMul.
CAM (channel attention): `rowmax` (Softmax(Expand(ReduceMax(E)) - E), as trained) or `clean`
(MatMul(Neg(X), X^T) -> Softmax -> MatMul).

The light variants' sites (`find_light_sites`):
- `group-norm` (Shuffle Attention's spatial half): `instance-norm` (Reshape [B, G, -1] -> InstanceNormalization ->
  Reshape back, as both torch exporters write GroupNorm), `group-normalization` (one ONNX GroupNormalization)
  or `decomposed` (ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div); each with the per-channel affine Mul -> Add
  pairs that follow it (GroupNorm's own and Shuffle Attention's gate weights);
- `channel-shuffle`: `5-d` (Reshape [B, g, C/g, H, W] -> Transpose -> Reshape, as exported) or `4-d`
  (Reshape [B, g, C/g, H*W] -> Transpose -> Reshape);
- `se`: mean over H, W -> Conv -> Relu -> Conv -> Sigmoid -> Mul; `spatial-gate`: 1-channel Conv -> Sigmoid -> Mul.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from danet_deploy.graph.editor import GraphEditor, attribute, float_attribute, ints_attribute


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
    # Light sites: the input and output tensor and what a rewrite needs (groups, epsilon, affine, ...).
    input: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _transpose_perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None or node.op_type != "Transpose":
        return None
    return ints_attribute(node, "perm")


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
                "pam",
                "naive",
                softmax.name,
                [source.name, softmax.name, after.name, out.name],
                query=source.input[0],
                key=source.input[1],
                value=out.input[0],
                output=out.output[0],
            )
    return None


# --- light variants --------------------------------------------------------------------------------------


def find_light_sites(model: onnx.ModelProto, shapes: dict[str, list] | None = None) -> list[AttentionSite]:
    """GroupNorm, channel shuffle, SE and spatial-gate sites (see the module docstring)."""
    from danet_deploy.graph.shapes import infer_shapes

    shapes = shapes if shapes is not None else infer_shapes(model)
    ed = GraphEditor(model)
    sites: list[AttentionSite] = []
    for node in model.graph.node:
        site: AttentionSite | None = None
        if node.op_type == "InstanceNormalization":
            site = _instance_norm_site(ed, node, shapes)
        elif node.op_type == "GroupNormalization":
            site = _group_normalization_site(ed, node, shapes)
        elif node.op_type == "Sqrt":
            site = _decomposed_norm_site(ed, node, shapes)
        elif node.op_type == "Transpose":
            site = _shuffle_site(ed, node, shapes)
        elif node.op_type == "Sigmoid":
            site = _gate_site(ed, node, shapes)
        if site is not None:
            sites.append(site)
    return sites


def _channels(shapes: dict[str, list], tensor: str) -> int | None:
    shape = shapes.get(tensor) or []
    return shape[1] if len(shape) >= 2 and isinstance(shape[1], int) else None


def _per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """A constant that broadcasts along the channel axis of an [N, C, ...] tensor only, as a [C] vector."""
    if value is None or value.ndim > 4 or not np.issubdtype(value.dtype, np.floating):
        return None
    padded: np.ndarray = value.reshape((1,) * (4 - value.ndim) + value.shape)
    if padded.shape[0] != 1 or padded.shape[2:] != (1, 1) or padded.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,)).astype(np.float32)


def _other_input(node: onnx.NodeProto, tensor: str) -> str | None:
    if len(node.input) != 2 or tensor not in node.input:
        return None
    return node.input[1] if node.input[0] == tensor else node.input[0]


def _absorb_affine(ed: GraphEditor, site: AttentionSite, channels: int) -> None:
    """Extend a norm site over the per-channel Mul -> Add pairs after it: y = y * a + b, composed."""
    scale, bias = site.params["scale"], site.params["bias"]
    while True:
        users = ed.consumers(site.output or "")
        if len(users) != 1 or users[0].op_type != "Mul" or ed.is_graph_output(site.output or ""):
            return
        mul = users[0]
        a = _per_channel(ed.constant(_other_input(mul, site.output or "") or ""), channels)
        adds = ed.consumers(mul.output[0])
        if a is None or len(adds) != 1 or adds[0].op_type != "Add" or ed.is_graph_output(mul.output[0]):
            return
        b = _per_channel(ed.constant(_other_input(adds[0], mul.output[0]) or ""), channels)
        if b is None:
            return
        scale, bias = scale * a, bias * a + b
        site.nodes += [mul.name, adds[0].name]
        site.output = adds[0].output[0]
        site.params.update(scale=scale, bias=bias)


def _norm_site(
    ed: GraphEditor,
    form: str,
    anchor: onnx.NodeProto,
    nodes: list[onnx.NodeProto],
    x: str,
    out: str,
    groups: int,
    epsilon: float,
    group_scale: np.ndarray,
    group_bias: np.ndarray,
    channels: int,
) -> AttentionSite | None:
    if channels % groups or group_scale.size not in (1, groups, channels):
        return None
    per_group = channels // groups
    if group_scale.size == channels:  # opset-21 GroupNormalization: already per channel
        scale, bias = group_scale.astype(np.float32), group_bias.astype(np.float32)
    else:
        scale = np.repeat(np.broadcast_to(group_scale, (groups,)), per_group).astype(np.float32)
        bias = np.repeat(np.broadcast_to(group_bias, (groups,)), per_group).astype(np.float32)
    site = AttentionSite(
        "group-norm",
        form,
        anchor.name,
        [n.name for n in nodes],
        input=x,
        output=out,
        params={"groups": groups, "channels": channels, "epsilon": epsilon, "scale": scale, "bias": bias},
    )
    _absorb_affine(ed, site, channels)
    return site


def _instance_norm_site(ed: GraphEditor, node: onnx.NodeProto, shapes: dict[str, list]) -> AttentionSite | None:
    pre = ed.producer(node.input[0])
    users = ed.consumers(node.output[0])
    if pre is None or pre.op_type != "Reshape" or len(users) != 1 or users[0].op_type != "Reshape":
        return None
    target = ed.constant(pre.input[1])
    scale, bias = ed.constant(node.input[1]), ed.constant(node.input[2])
    channels = _channels(shapes, pre.input[0])
    if target is None or target.size != 3 or int(target[1]) <= 0 or scale is None or bias is None or not channels:
        return None
    post = users[0]
    epsilon = float_attribute(node, "epsilon", 1e-5)
    return _norm_site(
        ed,
        "instance-norm",
        node,
        [pre, node, post],
        pre.input[0],
        post.output[0],
        int(target[1]),
        epsilon,
        scale,
        bias,
        channels,
    )


def _group_normalization_site(ed: GraphEditor, node: onnx.NodeProto, shapes: dict[str, list]) -> AttentionSite | None:
    scale, bias = ed.constant(node.input[1]), ed.constant(node.input[2])
    channels = _channels(shapes, node.input[0])
    groups = attribute(node, "num_groups")
    if scale is None or bias is None or not channels or not isinstance(groups, int):
        return None
    epsilon = float_attribute(node, "epsilon", 1e-5)
    return _norm_site(
        ed, "group-normalization", node, [node], node.input[0], node.output[0], groups, epsilon, scale, bias, channels
    )


def _decomposed_norm_site(ed: GraphEditor, sqrt: onnx.NodeProto, shapes: dict[str, list]) -> AttentionSite | None:
    """Div(d, Sqrt(ReduceMean(d * d) + eps)), d = x - ReduceMean(x): our decomposition (G == C, or reshaped)."""
    add = ed.producer(sqrt.input[0])
    divs = [n for n in ed.consumers(sqrt.output[0]) if n.op_type == "Div"]
    if add is None or add.op_type != "Add" or len(divs) != 1:
        return None
    producers = [p for p in (ed.producer(i) for i in add.input) if p is not None]
    var = producers[0] if producers else None
    eps = next((c for c in (ed.constant(i) for i in add.input) if c is not None), None)
    square = ed.producer(var.input[0]) if var is not None and var.op_type == "ReduceMean" else None
    if square is None or square.op_type != "Mul" or square.input[0] != square.input[1] or eps is None:
        return None
    sub = ed.producer(square.input[0])
    mean = ed.producer(sub.input[1]) if sub is not None and sub.op_type == "Sub" else None
    if sub is None or mean is None or mean.op_type != "ReduceMean" or divs[0].input[0] != sub.output[0]:
        return None
    assert var is not None
    nodes = [mean, sub, square, var, add, sqrt, divs[0]]
    x, out = sub.input[0], divs[0].output[0]
    groups = None  # G == C: normalized over H, W directly
    if (pre := ed.producer(x)) is not None and pre.op_type == "Reshape":  # G < C: normalized as [B, G, -1]
        users = ed.consumers(out)
        target = ed.constant(pre.input[1])
        if len(users) == 1 and users[0].op_type == "Reshape" and target is not None and target.size == 3:
            nodes, x, out, groups = [pre, *nodes, users[0]], pre.input[0], users[0].output[0], int(target[1])
    channels = _channels(shapes, x)
    if not channels:
        return None
    epsilon = float(eps.reshape(-1)[0])
    return _norm_site(
        ed, "decomposed", sqrt, nodes, x, out, groups or channels, epsilon, np.ones(1), np.zeros(1), channels
    )


def _shuffle_site(ed: GraphEditor, node: onnx.NodeProto, shapes: dict[str, list]) -> AttentionSite | None:
    """Reshape -> Transpose(swap dims 1, 2) -> Reshape back to [B, C, H, W]. The first Reshape may start from
    another layout of the same elements (the exporter merges Shuffle Attention's regrouping reshape into it)."""
    perm = _transpose_perm(node)
    pre = ed.producer(node.input[0])
    users = ed.consumers(node.output[0])
    if perm not in ([0, 2, 1, 3, 4], [0, 2, 1, 3]) or pre is None or pre.op_type != "Reshape":
        return None
    if len(users) != 1 or users[0].op_type != "Reshape":
        return None
    split = shapes.get(node.input[0]) or []
    x, post = pre.input[0], users[0]
    out_shape = shapes.get(post.output[0]) or []
    channels = _channels(shapes, post.output[0])
    if len(out_shape) != 4 or len(split) != len(perm) or not isinstance(split[1], int) or not channels:
        return None
    if channels % split[1] or (len(perm) == 4 and split[1] * split[2] != channels):
        return None
    # x already [B, C, H, W]? Otherwise a rewrite first reshapes it with the old output's shape tensor.
    x_is_output_layout = (shapes.get(x) or [])[:2] == out_shape[:2]
    form = "5-d" if len(perm) == 5 else "4-d"
    params = {
        "groups": split[1],
        "channels": channels,
        "out_shape": post.input[1],
        "x_is_output_layout": x_is_output_layout,
    }
    return AttentionSite(
        "channel-shuffle",
        form,
        node.name,
        [pre.name, node.name, post.name],
        input=x,
        output=post.output[0],
        params=params,
    )


def _gate_site(ed: GraphEditor, sigmoid: onnx.NodeProto, shapes: dict[str, list]) -> AttentionSite | None:
    """SE (pooled -> Conv -> Relu -> Conv -> Sigmoid -> Mul) or spatial gate (Conv to 1 channel -> Sigmoid -> Mul)."""
    conv = ed.producer(sigmoid.input[0])
    users = ed.consumers(sigmoid.output[0])
    if conv is None or conv.op_type != "Conv" or len(users) != 1 or users[0].op_type != "Mul":
        return None
    mul = users[0]
    gated = _other_input(mul, sigmoid.output[0])
    if gated is None:
        return None
    relu = ed.producer(conv.input[0])
    first = ed.producer(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
    pool = ed.producer(first.input[0]) if first is not None and first.op_type == "Conv" else None
    if pool is not None and pool.op_type in ("ReduceMean", "GlobalAveragePool") and pool.input[0] == gated:
        assert relu is not None and first is not None
        nodes = [pool.name, first.name, relu.name, conv.name, sigmoid.name, mul.name]
        return AttentionSite(
            "se",
            "gate",
            sigmoid.name,
            nodes,
            input=gated,
            output=mul.output[0],
            params={"channels": _channels(shapes, gated)},
        )
    if conv.input[0] == gated and _channels(shapes, conv.output[0]) == 1:
        return AttentionSite(
            "spatial-gate",
            "gate",
            sigmoid.name,
            [conv.name, sigmoid.name, mul.name],
            input=gated,
            output=mul.output[0],
            params={"channels": _channels(shapes, gated)},
        )
    return None
