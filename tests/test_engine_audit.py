"""Engine precision audit: TensorRT's layer information JSON (hand-written fixtures in the documented format, see
tests/data/README.md) parsed and judged against what the build asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from danet_deploy.engine.audit import EngineAudit, audit_engine, parse_layer_information, tensor_type
from danet_deploy.report.text import engine_audit_line

DATA = Path(__file__).parent / "data"


def layers(name: str):
    return parse_layer_information((DATA / f"engine_layers_{name}.json").read_text())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Row major linear FP32", "FP32"),
        ("Row major linear FP16 format", "FP16"),
        ("Channel major FP16 format where channel % 8 == 0", "FP16"),
        ("Thirty-two wide channel vectorized row major Int8 format", "INT8"),
        ("Channel major INT8 format where channel % 16 == 0", "INT8"),
        ("Row major linear BFloat16 format", "BF16"),
        ("Row major linear Int32", "INT32"),
        ("Unknown format", None),
    ],
)
def test_tensor_types_from_format_strings(text: str, expected: str | None) -> None:
    assert tensor_type(text) == expected


def test_fp16_engine_with_pinned_cam() -> None:
    parsed = layers("fp16_trt10")
    assert [layer.layer_type for layer in parsed][:2] == ["Reformat", "CaskConvolution"]
    assert parsed[1].onnx_nodes == ("/backbone/conv1/Conv", "/backbone/relu/Relu")
    pinned = ["/head/cam/MatMul", "/head/cam/Softmax", "/head/cam/MatMul_1"]
    audit = audit_engine(parsed, "fp16", pinned)
    assert audit.compute_layers == {"FP16": 4, "FP32": 2} and audit.total_layers == 8  # reformats not counted
    assert audit.pinned_fp32 == {"/head/cam/MatMul": "FP32", "/head/cam/Softmax": "FP32"}
    assert audit.pinned_unchecked == ["/head/cam/MatMul_1"]  # fused with unpinned nodes into a Myelin region
    assert audit.failures == []
    assert audit.summary() == "FP16 4, FP32 2 compute layers; pinned FP32 2/3 confirmed"


def test_int8_engine_has_int8_layers() -> None:
    audit = audit_engine(layers("int8_trt10"), "int8", ["/head/cam/MatMul"])
    assert audit.compute_layers == {"FP32": 2, "INT8": 2, "FP16": 1} and audit.failures == []
    # The same engine is no FP16 engine: an fp16 request would need an FP16 layer, and it has one.
    assert audit_engine(layers("int8_trt10"), "fp16").failures == []


def test_silent_fp32_engine_fails_the_audit() -> None:
    parsed = layers("silent_fp32_trt11")
    fp16 = audit_engine(parsed, "fp16")
    assert fp16.failures == ["the fp16 engine has no FP16 layer (compute layers: FP32 3)"]
    assert audit_engine(parsed, "int8").failures == ["the int8 engine has no INT8 layer (compute layers: FP32 3)"]
    assert audit_engine(parsed, "fp32").failures == []


def test_pinned_layer_that_is_not_fp32_fails_the_audit_without_metadata() -> None:
    """TensorRT 8.6 has no "Metadata": fused layers are found by their joined names."""
    audit = audit_engine(layers("fp16_trt86"), "fp16", ["node_bmm_2", "node_softmax_1", "node_bmm_3"])
    assert audit.pinned_fp32 == {"node_bmm_2": "FP32", "node_softmax_1": "FP16"}
    assert audit.pinned_unchecked == ["node_bmm_3"]  # fused with node_mul, which is not pinned
    assert audit.failures == ["pinned layer node_softmax_1 runs in FP16 (engine layer 'node_softmax_1')"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ((DATA / "engine_layers_names_only.json").read_text(), "ProfilingVerbosity.DETAILED"),
        ("{not json", "not JSON"),
        ('{"Bindings": []}', 'no "Layers" list'),
    ],
)
def test_layer_information_that_cannot_be_audited(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_layer_information(text)


def test_audit_round_trips_through_the_sidecar_dict_and_reads_as_a_line() -> None:
    from .test_engine import _sidecar

    audit = audit_engine(layers("fp16_trt10"), "fp16", ["/head/cam/MatMul"])
    assert EngineAudit.from_dict(audit.to_dict()) == audit
    sidecar = _sidecar(engine_layers=audit.to_dict())
    assert engine_audit_line("tensorrt:m.engine", sidecar) == (
        "tensorrt:m.engine: fp16 engine (weakly typed, TensorRT 10.3.0), audited: FP16 4, FP32 2 compute layers; "
        "pinned FP32 1/1 confirmed"
    )
    assert "not audited" in engine_audit_line("tensorrt:old.engine", _sidecar())
