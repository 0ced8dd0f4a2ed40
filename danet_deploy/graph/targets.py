"""Deployment targets (TensorRT versions, ONNX Runtime) and the graph forms each runs best: pure data and rules,
read by `simplify` (which rewrites) and `lint` (which checks)."""

from __future__ import annotations

from dataclasses import dataclass

from danet_deploy.errors import BadInputError
from danet_deploy.graph.group_norm import GROUP_NORMALIZATION_OPSET
from danet_deploy.options import TARGET_NAMES


@dataclass(frozen=True)
class Target:
    name: str
    tensorrt: tuple[int, int] | None  # None: ONNX Runtime
    description: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("trt8.6", (8, 6), "TensorRT 8.6 (JetPack 6.0)"),
        Target("trt10.3", (10, 3), "TensorRT 10.3 (JetPack 6.1/6.2, Jetson Orin)"),
        Target("trt10.14", (10, 14), "TensorRT 10.14+ (JetPack 7.2, datacenter 10.x)"),
        Target("trt11", (11, 0), "TensorRT 11 (datacenter, JetPack 7.2.2+)"),
        Target("ort", None, "ONNX Runtime (CPU / edge)"),
    )
}
assert tuple(TARGETS) == TARGET_NAMES  # options.py names them without importing this module


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise BadInputError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return TARGETS[name]


def choose_attention(target: Target, static: bool) -> tuple[str, str]:
    """The PAM form for a target, and why."""
    if target.tensorrt is None:
        if static:
            return (
                "blocked",
                "ONNX Runtime materializes the full N x N map (also in its Attention kernel); blocks bound it",
            )
        return "naive", "the blocked form needs static shapes and this model is dynamic"
    if target.tensorrt >= (10, 14):
        return "onnx-attention", "TensorRT >= 10.14 parses ONNX Attention into its fused attention layer"
    return "mha", "TensorRT < 10.14 has no ONNX Attention; 4-D MatMul-Softmax-MatMul is what its MHA fusion matches"


def choose_group_norm(target: Target | None, opset: int) -> tuple[str, str]:
    """The GroupNorm form for a target and model opset, and why."""
    if opset < GROUP_NORMALIZATION_OPSET:
        return "decomposed", f"opset {opset} has no GroupNormalization (added in 18)"
    if target is not None and target.tensorrt is not None and target.tensorrt < (10, 0):
        return "decomposed", "TensorRT 8.6 parses opset <= 17, which has no GroupNormalization"
    where = "ONNX Runtime" if target is None or target.tensorrt is None else "TensorRT >= 10.0"
    return "group-normalization", f"{where} runs ONNX GroupNormalization natively"
