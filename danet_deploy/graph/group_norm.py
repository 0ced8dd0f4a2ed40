"""GroupNorm in the form each runtime runs well (Shuffle Attention's spatial half). Both forms are exact.

- `group-normalization`: one ONNX GroupNormalization (opset >= 18; TensorRT 10.x's parser and ONNX Runtime
  run it). Opset 18-20 scale per *group*, opset 21 per *channel* (the spec changed): per-channel affines are
  written into the node only where they mean the same in both (opset >= 21, or one group per channel, as in
  Shuffle Attention); otherwise the node gets a unit affine and a per-channel Mul -> Add follows.
- `decomposed`: mean and biased variance with ReduceMean, then (x - mean) / sqrt(var + eps): what an opset-17
  parser (TensorRT 8.6) takes, with no reliance on its InstanceNormalization plugin.

Either way the per-channel affines that follow the norm (GroupNorm's own, Shuffle Attention's gate weights) are
composed into the one scale and bias.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from danet_deploy.graph.editor import GraphEditor, opset_of
from danet_deploy.graph.shapes import infer_shapes
from danet_deploy.graph.sites import AttentionSite, find_light_sites

GROUP_NORMALIZATION_OPSET = 18
PER_CHANNEL_SCALE_OPSET = 21


def group_norm_sites(model: onnx.ModelProto) -> list[AttentionSite]:
    return [s for s in find_light_sites(model) if s.kind == "group-norm"]


def _affine(ed: GraphEditor, y: str, site: AttentionSite, rank: int) -> str:
    """y * scale + bias per channel; identity parts are left out."""
    shape = (site.params["channels"],) + (1,) * (rank - 2)
    scale, bias = site.params["scale"], site.params["bias"]
    if not np.all(scale == 1):
        y = ed.add1("Mul", [y, ed.const("gn_scale", scale.reshape(shape))], "gn_scale")
    if not np.all(bias == 0):
        y = ed.add1("Add", [y, ed.const("gn_bias", bias.reshape(shape))], "gn_bias")
    return y


def _reduce_mean(ed: GraphEditor, x: str, axes: list[int], opset: int) -> str:
    if opset >= 18:  # axes became an input in opset 18
        return ed.add1("ReduceMean", [x, ed.const("gn_axes", np.array(axes, np.int64))], "gn_mean", keepdims=1)
    return ed.add1("ReduceMean", [x], "gn_mean", axes=axes, keepdims=1)


def _rank(shapes: dict, tensor: str) -> int:
    return len(shapes.get(tensor) or [0, 0, 0, 0])


def _rewrite_sites(
    model: onnx.ModelProto, form: str, emit: Callable[[GraphEditor, AttentionSite, int, int], str]
) -> tuple[onnx.ModelProto, int]:
    """Replace every GroupNorm site not yet in `form` by `emit(editor, site, opset, rank)`'s output tensor."""
    opset = opset_of(model)
    sites = [s for s in group_norm_sites(model) if s.form != form]
    shapes = infer_shapes(model)
    ed = GraphEditor(model)
    for site in sites:
        assert site.input and site.output
        ed.replace_uses(site.output, emit(ed, site, opset, _rank(shapes, site.input)))
    ed.commit()
    return model, len(sites)


def _group_normalization(ed: GraphEditor, site: AttentionSite, opset: int, rank: int) -> str:
    assert site.input
    groups, channels = site.params["groups"], site.params["channels"]
    per_channel = opset >= PER_CHANNEL_SCALE_OPSET or groups == channels
    scale = site.params["scale"] if per_channel else np.ones(groups, np.float32)
    bias = site.params["bias"] if per_channel else np.zeros(groups, np.float32)
    y = ed.add1(
        "GroupNormalization",
        [site.input, ed.const("gn_scale", scale), ed.const("gn_bias", bias)],
        "group_norm",
        num_groups=groups,
        epsilon=site.params["epsilon"],
    )
    return y if per_channel else _affine(ed, y, site, rank)


def _decomposition(ed: GraphEditor, site: AttentionSite, opset: int, rank: int) -> str:
    assert site.input
    groups, channels = site.params["groups"], site.params["channels"]
    x, axes = site.input, list(range(2, rank))
    if groups != channels:  # normalize each group's C/G channels together, as [B, G, -1]
        x = ed.add1("Reshape", [x, ed.const("gn_groups", np.array([0, groups, -1], np.int64))], "gn_groups")
        axes = [2]
    centered = ed.add1("Sub", [x, _reduce_mean(ed, x, axes, opset)], "gn_centered")
    variance = _reduce_mean(ed, ed.add1("Mul", [centered, centered], "gn_square"), axes, opset)
    epsilon = ed.const("gn_epsilon", np.array(site.params["epsilon"], np.float32))
    std = ed.add1("Sqrt", [ed.add1("Add", [variance, epsilon], "gn_variance_eps")], "gn_std")
    y = ed.add1("Div", [centered, std], "gn_normalized")
    if groups != channels:
        y = ed.add1("Reshape", [y, ed.add1("Shape", [site.input], "gn_shape")], "gn_ungroup")
    return _affine(ed, y, site, rank)


def to_group_normalization(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Every GroupNorm site (as exported or decomposed) as one ONNX GroupNormalization node."""
    if opset_of(model) < GROUP_NORMALIZATION_OPSET:
        raise ValueError(f"GroupNormalization needs opset >= 18; this model is opset {opset_of(model)}")
    return _rewrite_sites(model, "group-normalization", _group_normalization)


def to_decomposed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Every GroupNorm site (as exported or as GroupNormalization) in elementary ops, any opset."""
    return _rewrite_sites(model, "decomposed", _decomposition)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker, accepting opset-18 GroupNormalization.

    ONNX >= 1.18 marks GroupNormalization-18 deprecated and its checker rejects every opset-18 model that uses
    it (onnx/onnx#7939), although ONNX Runtime and TensorRT 10.x run it and TensorRT < 10.9 parses no other
    version. The rest of the model is still checked: each such node is checked as InstanceNormalization, which
    has the same inputs and output types.
    """
    if opset_of(model) < PER_CHANNEL_SCALE_OPSET and any(n.op_type == "GroupNormalization" for n in model.graph.node):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for node in model.graph.node:
            if node.op_type == "GroupNormalization":
                node.op_type = "InstanceNormalization"
                kept = [a for a in node.attribute if a.name == "epsilon"]
                del node.attribute[:]
                node.attribute.extend(kept)
    onnx.checker.check_model(model)
