"""Channel shuffle (Shuffle Attention's last step) in its cheapest exact form.

A shuffle is a fixed channel permutation. When its only consumer is a Conv with constant weights (in the
DANet head: the position branch's output conv), the permutation moves into the Conv's input-channel order and
the shuffle disappears. Otherwise it becomes one 4-D Reshape -> Transpose -> Reshape (the exporter writes 5-D,
and may merge Shuffle Attention's regrouping reshape into it).
"""

from __future__ import annotations

import numpy as np
import onnx

from danet_deploy.graph.editor import GraphEditor, attribute
from danet_deploy.graph.shapes import infer_shapes
from danet_deploy.graph.sites import AttentionSite, find_light_sites


def shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """perm with shuffled[:, i] = x[:, perm[i]]."""
    return np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)


def shuffle_sites(model: onnx.ModelProto) -> list[AttentionSite]:
    return [s for s in find_light_sites(model) if s.kind == "channel-shuffle"]


def _as_output_layout(ed: GraphEditor, site: AttentionSite) -> str:
    """The shuffle's input as [B, C, H, W]."""
    assert site.input
    if site.params["x_is_output_layout"]:
        return site.input
    return ed.add1("Reshape", [site.input, site.params["out_shape"]], "shuffle_input")


def _foldable_conv(ed: GraphEditor, site: AttentionSite) -> tuple[onnx.NodeProto, np.ndarray] | None:
    """The Conv that alone reads the shuffle, with its constant weight, if the shuffle can fold into it."""
    assert site.output
    users = ed.consumers(site.output)
    if len(users) != 1 or users[0].op_type != "Conv" or ed.is_graph_output(site.output):
        return None
    conv = users[0]
    weight = ed.constant(conv.input[1])
    if conv.input[0] != site.output or weight is None or attribute(conv, "group", 1) != 1:
        return None
    return (conv, weight) if weight.shape[1] == site.params["channels"] else None


def simplify_shuffles(model: onnx.ModelProto, fold: bool = True) -> tuple[onnx.ModelProto, int, int]:
    """(model, shuffles folded into a Conv, shuffles rewritten as one 4-D reshape/transpose)."""
    sites = shuffle_sites(model)
    shapes = infer_shapes(model)
    ed = GraphEditor(model)
    folded = reshaped = 0
    for site in sites:
        assert site.output
        channels, groups = site.params["channels"], site.params["groups"]
        foldable = _foldable_conv(ed, site) if fold else None
        if foldable is not None:
            conv, weight = foldable
            # conv(x[:, perm]) == conv'(x) with conv' reading input channel perm[i] through weight[:, i].
            inverse = np.argsort(shuffle_permutation(channels, groups))
            permuted = np.ascontiguousarray(weight[:, inverse])
            conv.input[1] = ed.const(f"{conv.name}_unshuffled_weight", permuted)
            conv.input[0] = _as_output_layout(ed, site)
            folded += 1
            continue
        if site.form == "4-d" and site.params["x_is_output_layout"]:
            continue
        out_shape = shapes.get(site.output) or []
        x = _as_output_layout(ed, site)
        split = ed.const("shuffle_split", np.array([0, groups, channels // groups, -1], np.int64))
        grouped = ed.add1("Reshape", [x, split], "shuffle_split")
        swapped = ed.add1("Transpose", [grouped], "shuffle_transpose", perm=[0, 2, 1, 3])
        if all(isinstance(d, int) for d in out_shape):
            merge = ed.const("shuffle_merge", np.array(out_shape, np.int64))
        else:
            merge = ed.add1("Shape", [x], "shuffle_shape")
        ed.replace_uses(site.output, ed.add1("Reshape", [swapped, merge], "shuffle_merge"))
        reshaped += 1
    ed.commit()
    return model, folded, reshaped


__all__ = ["shuffle_permutation", "shuffle_sites", "simplify_shuffles"]
