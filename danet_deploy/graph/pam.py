"""PAM rewrites: the same attention in the form each runtime runs best. All are exact reformulations.

PAM's attention weights S = softmax(Q^T K) are shared by every value channel, so E = V S^T equals
multi-head attention with Q and K repeated for every head and V split into heads:
- `mha`: 4-D [B, heads, N, H] MatMul -> Softmax -> MatMul, the pattern TensorRT 8.6/10.x fuse into
  flash-style MHA kernels (value heads of 64 by default, Q/K head size = C/8 = 64 for DANet);
- `onnx-attention`: the same as one ONNX `Attention` node (opset 23, scale 1: PAM has no 1/sqrt(d));
- `blocked`: queries in blocks inside a `Scan`, so only a block x N slice of S exists at a time
  (peak memory O(N x block) instead of O(N^2)); needs static shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from danet_deploy.graph.editor import GraphEditor, opset_of
from danet_deploy.graph.shapes import all_static, elem_type, infer_shapes
from danet_deploy.graph.sites import AttentionSite, find_sites
from danet_deploy.options import DEFAULT_BLOCK

ATTENTION_OPSET = 23
DEFAULT_VALUE_HEAD = 64


class RewriteError(ValueError):
    """The graph cannot take this rewrite (e.g. dynamic shapes for `blocked`)."""


def value_heads(channels: int, head_size: int = DEFAULT_VALUE_HEAD) -> int:
    """Number of value heads: C / 64 when it divides, else the fewest heads of size <= head_size."""
    for heads in range(max(1, channels // head_size), channels + 1):
        if channels % heads == 0 and channels // heads <= head_size:
            return heads
    return channels


def _naive_sites(model: onnx.ModelProto) -> list[AttentionSite]:
    return [s for s in find_sites(model) if s.kind == "pam" and s.form == "naive"]


def _static(shape: list, index: int, what: str) -> int:
    value = shape[index] if shape and len(shape) > index else None
    if not isinstance(value, int) or value <= 0:
        raise RewriteError(f"{what}: dimension {index} is not static (shape {shape})")
    return value


def _heads_inputs(ed: GraphEditor, site: AttentionSite, channels: int, heads: int) -> tuple[str, str, str]:
    """Q4, K4 [B, heads, N, d] (repeated) and V4 [B, heads, N, C/heads] from the naive site's tensors."""
    assert site.query and site.key and site.value
    repeat = ed.const("pam_heads_repeat", np.array([1, heads, 1, 1], np.int64))
    axis1 = ed.const("pam_axis1", np.array([1], np.int64))
    q4 = ed.add1("Expand", [ed.add1("Unsqueeze", [site.query, axis1], "pam_q_unsqueeze"), repeat], "pam_q_heads")
    key_nd = ed.add1("Transpose", [site.key], "pam_k_transpose", perm=[0, 2, 1])  # [B, N, d]
    k4 = ed.add1("Expand", [ed.add1("Unsqueeze", [key_nd, axis1], "pam_k_unsqueeze"), repeat], "pam_k_heads")
    split = ed.const("pam_v_split", np.array([0, heads, channels // heads, -1], np.int64))
    v_split = ed.add1("Reshape", [site.value, split], "pam_v_split")  # [B, heads, H, N]
    v4 = ed.add1("Transpose", [v_split], "pam_v_heads", perm=[0, 1, 3, 2])  # [B, heads, N, H]
    return q4, k4, v4


def _merge_heads(ed: GraphEditor, site: AttentionSite, out4: str, channels: int) -> None:
    """[B, heads, N, H] -> [B, C, N], replacing the naive site's output."""
    assert site.output
    transposed = ed.add1("Transpose", [out4], "pam_out_transpose", perm=[0, 1, 3, 2])  # [B, heads, H, N]
    merge = ed.const("pam_out_merge", np.array([0, channels, -1], np.int64))
    ed.replace_uses(site.output, ed.add1("Reshape", [transposed, merge], "pam_out_merge"))


def _value_channels(shapes: dict, site: AttentionSite) -> int:
    assert site.value
    return _static(shapes.get(site.value, []), 1, f"PAM value channels of {site.softmax}")


def _rewrite_as_heads(
    model: onnx.ModelProto, heads: int | None, attend: Callable[[GraphEditor, str, str, str], str]
) -> tuple[onnx.ModelProto, int]:
    """Replace each naive PAM site by `attend(editor, Q4, K4, V4)` on [B, heads, N, H] tensors."""
    sites = _naive_sites(model)
    shapes = infer_shapes(model)
    ed = GraphEditor(model)
    for site in sites:
        channels = _value_channels(shapes, site)
        h = heads or value_heads(channels)
        if channels % h:
            raise RewriteError(f"{h} heads do not divide the {channels} PAM value channels")
        q4, k4, v4 = _heads_inputs(ed, site, channels, h)
        _merge_heads(ed, site, attend(ed, q4, k4, v4), channels)
    ed.commit()
    return model, len(sites)


def _matmul_softmax_matmul(ed: GraphEditor, q4: str, k4: str, v4: str) -> str:
    k4_t = ed.add1("Transpose", [k4], "pam_mha_k_t", perm=[0, 1, 3, 2])
    scores = ed.add1("MatMul", [q4, k4_t], "pam_mha_scores")
    probs = ed.add1("Softmax", [scores], "pam_mha_softmax", axis=-1)
    return ed.add1("MatMul", [probs, v4], "pam_mha_context")


def _attention_node(ed: GraphEditor, q4: str, k4: str, v4: str) -> str:
    return ed.add1("Attention", [q4, k4, v4], "pam_attention", scale=1.0)  # PAM has no 1/sqrt(d)


def pam_to_mha(model: onnx.ModelProto, heads: int | None = None) -> tuple[onnx.ModelProto, int]:
    return _rewrite_as_heads(model, heads, _matmul_softmax_matmul)


def pam_to_onnx_attention(model: onnx.ModelProto, heads: int | None = None) -> tuple[onnx.ModelProto, int]:
    if opset_of(model) < ATTENTION_OPSET:
        model = onnx.version_converter.convert_version(model, ATTENTION_OPSET)
    return _rewrite_as_heads(model, heads, _attention_node)


def pam_to_blocked(model: onnx.ModelProto, block: int = DEFAULT_BLOCK) -> tuple[onnx.ModelProto, int]:
    sites = _naive_sites(model)
    shapes = infer_shapes(model)
    ed = GraphEditor(model)
    for site in sites:
        assert site.query and site.key and site.value and site.output
        q_shape = shapes.get(site.query, [])
        if len(q_shape) != 3 or not all_static(q_shape) or min(q_shape) <= 0:
            raise RewriteError(
                f"the blocked PAM form needs static shapes, but the query of {site.softmax} has shape {q_shape}; "
                "export with --static (and --input-size) first"
            )
        batch, n, d = q_shape
        channels = _value_channels(shapes, site)
        b = min(block, n)
        blocks = math.ceil(n / b)
        dtype = elem_type(model, site.query)
        query = site.query
        if blocks * b != n:  # pad queries; the extra rows are sliced off after the Scan
            pads = ed.const("pam_block_pads", np.array([0, 0, 0, 0, blocks * b - n, 0], np.int64))
            query = ed.add1("Pad", [query, pads], "pam_block_pad")
        shape = ed.const("pam_block_shape", np.array([batch, blocks, b, d], np.int64))
        q_blocks = ed.add1(
            "Transpose",
            [ed.add1("Reshape", [query, shape], "pam_block_reshape")],
            "pam_block_scan_axis",
            perm=[1, 0, 2, 3],
        )
        value_t = ed.add1("Transpose", [site.value], "pam_block_value_t", perm=[0, 2, 1])  # [B, N, C], once
        # Scan body: one query block against all keys; K and V^T come from the outer scope.
        q_in, scores, probs, out = (ed.fresh(f"pam_block_{s}") for s in ("q", "scores", "probs", "context"))
        body = helper.make_graph(
            [
                helper.make_node("MatMul", [q_in, site.key], [scores], name=ed.fresh("pam_block_matmul_qk")),
                helper.make_node("Softmax", [scores], [probs], name=ed.fresh("pam_block_softmax"), axis=-1),
                helper.make_node("MatMul", [probs, value_t], [out], name=ed.fresh("pam_block_matmul_v")),
            ],
            ed.fresh("pam_block_body"),
            [helper.make_tensor_value_info(q_in, dtype, [batch, b, d])],
            [helper.make_tensor_value_info(out, dtype, [batch, b, channels])],
        )
        stacked = ed.add1("Scan", [q_blocks], "pam_blocked_scan", body=body, num_scan_inputs=1)  # [nb, B, b, C]
        merged = ed.add1("Transpose", [stacked], "pam_block_merge_t", perm=[1, 3, 0, 2])  # [B, C, nb, b]
        flat = ed.add1(
            "Reshape", [merged, ed.const("pam_block_flat", np.array([batch, channels, blocks * b]))], "pam_block_flat"
        )
        if blocks * b != n:
            starts, ends, axes = (
                ed.const(f"pam_block_slice_{k}", np.array([v], np.int64))
                for k, v in (("start", 0), ("end", n), ("axis", 2))
            )
            flat = ed.add1("Slice", [flat, starts, ends, axes], "pam_block_unpad")
        ed.replace_uses(site.output, flat)
    ed.commit()
    return model, len(sites)
