"""TensorRT readiness lint and attention memory estimates, in pure Python (no TensorRT needed).

Rules come from onnx-tensorrt's operator notes (10.x) and the TensorRT developer guide's MHA fusion
rules; a finding says which TensorRT version it applies to and what to do.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from danet_deploy.artifact import InputSpec
from danet_deploy.graph.cleanup import cleanup
from danet_deploy.graph.editor import GraphEditor, attribute, opset_of
from danet_deploy.graph.pam import value_heads
from danet_deploy.graph.shapes import all_static, elem_type, infer_shapes, with_input_shape
from danet_deploy.graph.sites import AttentionSite, find_light_sites, find_sites
from danet_deploy.graph.targets import Target, get_target
from danet_deploy.progress import format_bytes

MAX_ELEMENTS = 2**31
SOFTMAX_OUTER_LIMIT = 65536
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners", "tf_half_pixel_for_nn"}
MAX_OPSET = {(8, 6): 17}  # TensorRT 8.6's parser takes opsets up to 17


@dataclass
class Finding:
    level: str  # "error": the parser rejects it; "warning": builds but risky or slow; "info"
    code: str
    message: str


@dataclass
class SiteReport:
    kind: str
    form: str
    node: str
    seq_len: int | None = None  # N = H/8 * W/8
    channels: int | None = None
    mha_fusable: bool | None = None
    mha_reasons: list[str] = field(default_factory=list)


@dataclass
class MemoryEstimate:
    form: str
    bytes: int
    note: str


@dataclass
class LintReport:
    target: str
    input_shape: list[int]
    op_histogram: dict[str, int]
    sites: list[SiteReport]
    findings: list[Finding]
    memory: list[MemoryEstimate]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]


def _check_ops(model: onnx.ModelProto, target: Target) -> list[Finding]:
    findings: list[Finding] = []
    trt = target.tensorrt
    if trt is None:
        return findings
    opset = opset_of(model)
    if trt in MAX_OPSET and opset > MAX_OPSET[trt]:
        findings.append(
            Finding(
                "error",
                "opset",
                f"opset {opset}: TensorRT {trt[0]}.{trt[1]} parses opsets up to "
                f"{MAX_OPSET[trt]}; export with --opset {MAX_OPSET[trt]}",
            )
        )
    ed = GraphEditor(model)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding("error", "custom-op", f"{node.name}: custom op {node.domain}::{node.op_type}"))
        if node.op_type == "Attention" and trt < (10, 14):
            findings.append(
                Finding(
                    "error",
                    "attention-op",
                    f"{node.name}: ONNX Attention is parsed from TensorRT 10.14; use --attention mha for this target",
                )
            )
        if node.op_type == "GroupNormalization":
            findings += _group_normalization_findings(node, trt, opset)
        if node.op_type == "Scan":
            findings.append(
                Finding(
                    "warning",
                    "scan",
                    f"{node.name}: Scan (blocked attention) is meant for ONNX "
                    "Runtime; for TensorRT use --attention mha or onnx-attention",
                )
            )
        if node.op_type == "Resize":
            mode = _text(attribute(node, "mode", b"nearest"))
            coords = _text(attribute(node, "coordinate_transformation_mode", b"half_pixel"))
            if mode not in RESIZE_MODES:
                findings.append(
                    Finding("error", "resize-mode", f"{node.name}: Resize mode {mode!r} (TensorRT: nearest, linear)")
                )
            if coords not in RESIZE_COORDINATES:
                findings.append(
                    Finding("error", "resize-coordinates", f"{node.name}: Resize coordinate mode {coords!r}")
                )
            if attribute(node, "antialias", 0):
                findings.append(Finding("error", "resize-antialias", f"{node.name}: Resize antialias is not supported"))
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero_point = ed.constant(node.input[2])
            if zero_point is None or np.any(zero_point != 0):
                findings.append(
                    Finding(
                        "error",
                        "qdq-zero-point",
                        f"{node.name}: {node.op_type} zero point must be 0 (symmetric quantization) for TensorRT",
                    )
                )
    return findings


def _group_normalization_findings(node: onnx.NodeProto, trt: tuple[int, int], opset: int) -> list[Finding]:
    findings = []
    if trt < (10, 0):
        findings.append(
            Finding(
                "error",
                "group-norm",
                f"{node.name}: GroupNormalization needs TensorRT >= 10.0; use --group-norm decomposed for this target",
            )
        )
    elif opset >= 21 and trt < (10, 9):
        findings.append(
            Finding(
                "error",
                "group-norm",
                f"{node.name}: opset-21 GroupNormalization (per-channel scale) "
                "is parsed from TensorRT 10.9; use opset 18 or --group-norm decomposed",
            )
        )
    if attribute(node, "num_groups") == 1:
        message = (
            f"{node.name}: num_groups=1 normalizes per channel in TensorRT 10.16 (TensorRT issue 4756): check "
            "parity or use --group-norm decomposed"
        )
        findings.append(Finding("warning", "group-norm", message))
    return findings


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mha_rules(site: AttentionSite, d: int | None, value_head: int | None, n: int | None, dtype: int) -> list[str]:
    """Reasons TensorRT's MHA fusion would not take this site (empty: meets the documented rules)."""
    if site.form == "naive":
        return ["3-D bmm with a value head of all C channels (> 256); rewrite with --attention mha"]
    if site.form == "blocked":
        return ["blocked (Scan) form is not an MHA pattern; it targets ONNX Runtime"]
    reasons = []
    for what, size in (("query/key head size", d), ("value head size", value_head)):
        if size is not None and not (16 <= size <= 256 and size % 8 == 0):
            reasons.append(f"{what} {size} must be 16..256 and a multiple of 8")
    if dtype not in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
        reasons.append(
            "matmul inputs are FP32: fusion needs FP16/BF16 (weakly typed: --fp16; strongly typed: an FP16 ONNX)"
        )
    if n is not None and n > 512:
        reasons.append(f"(INT8 MHA only: sequence {n} > 512 and head size in 16/32/64; FP16 fusion is unaffected)")
    return reasons


def lint(model: onnx.ModelProto, target: str, input_size: tuple[int, int] | None = None, batch: int = 1) -> LintReport:
    tgt = get_target(target)
    image = InputSpec.from_onnx(model)
    if input_size is None:
        input_size = image.static_size
        if input_size is None:
            raise ValueError("the model has dynamic height/width: give an input size (HxW) to lint at")
    shape = image.shape(image.batch or batch, input_size)
    findings = _check_ops(model, tgt)
    fixed = cleanup(with_input_shape(model, shape))
    shapes = infer_shapes(fixed)
    n = math.ceil(input_size[0] / 8) * math.ceil(input_size[1] / 8)
    b = shape[0]

    sites_found = find_sites(fixed)
    # Tensors inside an MHA pattern TensorRT can fuse are never materialized by the fused kernel.
    nodes = {node.name: node for node in fixed.graph.node}
    fusable = {t for x in sites_found if x.form == "mha" for t in [*nodes[x.softmax].input, *nodes[x.softmax].output]}
    for name, s in shapes.items():
        if not all_static(s) or math.prod(s) < MAX_ELEMENTS:
            continue
        message = f"tensor {name} {s} has {math.prod(s):,} elements (TensorRT limit 2^31)"
        if name in fusable:
            findings.append(Finding("warning", "tensor-size", message + " unless TensorRT fuses this MHA"))
        else:
            findings.append(Finding("error" if tgt.tensorrt else "warning", "tensor-size", message))
    for node in fixed.graph.node:
        if node.op_type == "Softmax" and tgt.tensorrt:
            s = shapes.get(node.input[0], [])
            if s and all_static(s):
                outer = math.prod(s) // s[-1]
                if outer >= SOFTMAX_OUTER_LIMIT:
                    message = (
                        f"{node.name}: softmax outer size {outer:,} >= 65536 (TensorRT 8.4 failed on these, "
                        "TensorRT issue 2021): check parity on your engine"
                    )
                    findings.append(Finding("warning", "softmax-outer", message))

    sites: list[SiteReport] = []
    memory: list[MemoryEstimate] = []
    for site in sites_found:
        report = SiteReport(site.kind, site.form, site.softmax)
        if site.kind == "pam":
            channels, d, dtype = _pam_dims(fixed, site, shapes)
            heads = value_heads(channels) if channels else None
            value_head = (channels // heads) if channels and heads else None
            qk_head = d
            report.seq_len, report.channels = n, channels
            if tgt.tensorrt:
                report.mha_reasons = _mha_rules(
                    site, qk_head, value_head if site.form != "naive" else channels, n, dtype
                )
                report.mha_fusable = not [r for r in report.mha_reasons if not r.startswith("(")]
            if channels and not memory:
                memory = attention_memory(b, n, channels, 2 if dtype == onnx.TensorProto.FLOAT16 else 4)
        sites.append(report)
    for site in find_light_sites(fixed, shapes):  # all O(N): no attention map, no memory estimate
        sites.append(SiteReport(site.kind, site.form, site.softmax, n, site.params.get("channels")))
    histogram = dict(Counter(node.op_type for node in model.graph.node).most_common())
    return LintReport(tgt.name, shape, histogram, sites, findings, memory)


def _pam_dims(model: onnx.ModelProto, site: AttentionSite, shapes: dict) -> tuple[int | None, int | None, int]:
    """(value channels C, query/key head size d, element type) of a PAM site in any form."""
    nodes = {n.name: n for n in model.graph.node}
    node = nodes.get(site.softmax)
    if site.form == "naive" and site.value and site.query:
        v, q = shapes.get(site.value, []), shapes.get(site.query, [])
        return (v[1] if len(v) == 3 else None), (q[2] if len(q) == 3 else None), elem_type(model, site.query)
    if site.form == "onnx-attention" and node is not None:
        q, v = shapes.get(node.input[0], []), shapes.get(node.input[2], [])
        c = v[1] * v[3] if len(v) == 4 and all(isinstance(x, int) for x in v) else None
        return c, (q[3] if len(q) == 4 else None), elem_type(model, node.input[0])
    if site.form == "mha" and node is not None:
        ed = GraphEditor(model)
        scores = ed.producer(node.input[0])
        context = ed.consumers(node.output[0])
        if scores is not None and context:
            q, v = shapes.get(scores.input[0], []), shapes.get(context[0].input[1], [])
            c = v[1] * v[3] if len(v) == 4 and all(isinstance(x, int) for x in v) else None
            return c, (q[3] if len(q) == 4 else None), elem_type(model, scores.input[0])
    if site.form == "blocked" and node is not None:
        body = next(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
        out = body.output[0].type.tensor_type
        q = body.input[0].type.tensor_type
        return out.shape.dim[-1].dim_value or None, q.shape.dim[-1].dim_value or None, q.elem_type
    return None, None, onnx.TensorProto.FLOAT


def attention_memory(batch: int, n: int, channels: int, itemsize: int = 4, block: int = 1024) -> list[MemoryEstimate]:
    """Peak bytes of one PAM site's attention intermediates, per form."""
    heads = value_heads(channels)
    head = channels // heads
    square = batch * n * n * itemsize
    return [
        MemoryEstimate("naive", 2 * square, "energy and softmax output alive together (N x N each)"),
        MemoryEstimate(
            "mha",
            2 * heads * square,
            f"unfused ({heads} heads); fused TensorRT MHA keeps O(N): "
            f"~{format_bytes(batch * heads * n * head * itemsize * 4)}",
        ),
        MemoryEstimate(
            "onnx-attention", heads * square, "ONNX Runtime CPU kernel (unbounded); TensorRT IAttention fused: O(N)"
        ),
        MemoryEstimate("blocked", 2 * batch * min(block, n) * n * itemsize, f"block {min(block, n)} queries x N keys"),
    ]
