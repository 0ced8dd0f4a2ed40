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


# --- real layer information (TensorRT's own, from NVIDIA's engine explorer; see tests/data/README.md) ----------

REAL = {
    "layer_info_mobilenet_v2_qat_int8_trt8": ({"INT8": 53, "FP16": 1}, 58),
    "layer_info_tf_resnet_qat_int8_trt8": ({"INT8": 58, "FP32": 2}, 63),
}


def _real(name: str) -> dict:
    import json

    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_layer_information_in_the_8x_10x_layout(name: str) -> None:
    import json

    counts, total = REAL[name]
    parsed = parse_layer_information(json.dumps(_real(name)))
    audit = audit_engine(parsed, "int8")
    assert audit.compute_layers == counts and audit.total_layers == total and audit.failures == []
    assert audit.devices == {"GPU": counts}
    assert bool(audit_engine(parsed, "fp16").failures) == ("FP16" not in counts)


@pytest.mark.parametrize("spelling", ["enum", "words", "short"])
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_layer_information_rewritten_in_the_trt11_layout_reads_the_same(name: str, spelling: str) -> None:
    """TensorRT 11 splits "Format/Datatype": the same engine must audit the same (it read as all-unknown before)."""
    import json

    from .support.layer_info import to_trt11_layout

    old = parse_layer_information(json.dumps(_real(name)))
    rewritten = to_trt11_layout(_real(name), spelling)
    assert all("Format/Datatype" not in t for layer in rewritten["Layers"] for t in layer["Inputs"])
    new = parse_layer_information(json.dumps(rewritten))
    assert [(layer.precision, layer.output_types) for layer in new] == [
        (layer.precision, layer.output_types) for layer in old
    ]
    assert audit_engine(new, "int8") == audit_engine(old, "int8")


def test_entries_that_are_not_layers_are_skipped() -> None:
    """Signal/wait entries of multi-stream engines have no "Inputs" (TREx skips them); they are not layers."""
    import json

    data = _real("layer_info_tf_resnet_qat_int8_trt8")
    data["Layers"][3:3] = [{"Name": "signal 0", "LayerType": "signal"}, {"Name": "wait 0", "LayerType": "wait"}]
    parsed = parse_layer_information(json.dumps(data))
    assert len(parsed) == 63 and audit_engine(parsed, "int8").failures == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Half", "FP16"), ("Float", "FP32"), ("kHALF", "FP16"), ("FLOAT", "FP32"), ("Int8", "INT8"), ("BFloat16", "BF16")],
)
def test_data_type_words_as_tensorrt_11_spells_them(text: str, expected: str) -> None:
    assert tensor_type(text) == expected


def _layer(name: str, inputs: list[str], outputs: list[str], layer_type: str = "gemm", **extra: str) -> dict:
    def tensors(types: list[str]) -> list[dict]:
        return [{"Name": f"{name}_{i}", "Datatype": t, "Format": "Row major linear"} for i, t in enumerate(types)]

    return {"Name": name, "LayerType": layer_type, "Inputs": tensors(inputs), "Outputs": tensors(outputs), **extra}


def test_pinned_layer_is_judged_by_all_its_inputs_not_the_first() -> None:
    """A pinned MatMul whose second operand is FP16 computes in FP16 although its first input is FP32."""
    import json

    layers = [
        _layer("/cam/MatMul", ["Float", "Half"], ["Float"]),
        _layer("/cam/Softmax", ["Float"], ["Half"], "SoftMax"),  # FP32 compute, output type free
        _layer("/conv", ["Half"], ["Half"], "CaskConvolution"),
    ]
    parsed = parse_layer_information(json.dumps({"Layers": layers}))
    audit = audit_engine(parsed, "fp16", ["/cam/MatMul", "/cam/Softmax"])
    assert audit.pinned_fp32 == {"/cam/MatMul": "FP16", "/cam/Softmax": "FP32"}
    assert audit.failures == ["pinned layer /cam/MatMul runs in FP16 (engine layer '/cam/MatMul')"]


def test_dla_layers_are_counted_per_device_and_int8_off_the_dla_fails_without_fallback() -> None:
    import json

    layers = [
        _layer("input to nvm", ["Float"], ["Int8"], "Reformat"),
        _layer("{ForeignNode[/conv1/Conv.../conv9/Conv]}", ["Int8"], ["Int8"], "DLA", TacticName="DlaLayer"),
        _layer("/head/conv", ["Int8"], ["Float"], "CaskConvolution"),
        _layer("/head/cam/MatMul", ["Float", "Float"], ["Float"]),
    ]
    parsed = parse_layer_information(json.dumps({"Layers": layers}))
    assert [layer.device for layer in parsed] == ["GPU", "DLA", "GPU", "GPU"]
    strict = audit_engine(parsed, "int8", dla=True)
    assert strict.devices == {"DLA": {"INT8": 1}, "GPU": {"INT8": 1, "FP32": 1}}
    assert strict.failures == ["1 of 2 INT8 layers did not land on the DLA (without GPU fallback)"]
    assert audit_engine(parsed, "int8", dla=True, gpu_fallback=True).failures == []
    assert "DLA: INT8 1" in strict.summary()
