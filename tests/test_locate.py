"""verify --locate: the layer where a reduced-precision model goes wrong, found by comparing its intermediate
tensors with the FP32 model's at the same node names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from danet_deploy.artifact import OnnxModel, Precision
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.evaluate.locate import LayerError, exclude_pattern, find_jumps, locate_onnx
from danet_deploy.options import Int8Options


def _feeds(path: Path, count: int = 1) -> list[dict[str, np.ndarray]]:
    model = OnnxModel.load(path, external_data=False)
    spec = model.input_spec
    return [{spec.input_name: spec.prepare(generate_scene(seed, 64, 128).image, model.config)} for seed in range(count)]


def _break_conv(path: Path, out: Path, node_name: str, factor: float = -2.0) -> None:
    """Scale the weights the Conv `node_name` computes with: the stored float weight behind any Cast or Q/DQ pair, or
    the scale of the DequantizeLinear in front of a stored integer weight."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    tensor = next(n for n in model.graph.node if n.name == node_name).input[1]
    dequantize = None
    while tensor not in inits:  # back through Cast / DequantizeLinear / QuantizeLinear to the stored weight
        producer = producers[tensor]
        dequantize = producer if producer.op_type == "DequantizeLinear" else dequantize
        tensor = producer.input[0]
    if numpy_helper.to_array(inits[tensor]).dtype.kind in "iu":
        assert dequantize is not None
        tensor = dequantize.input[1]
    value = numpy_helper.to_array(inits[tensor])
    inits[tensor].CopyFrom(numpy_helper.from_array((value * factor).astype(value.dtype), tensor))
    onnx.save(model, str(out))


def _middle_conv(path: Path) -> str:
    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    return convs[len(convs) // 2]


def test_jump_rule_picks_the_node_that_adds_the_error() -> None:
    layers = [
        LayerError("a", "Conv", "a", 0.01, 0.0, 0.1),
        LayerError("b", "Conv", "b", 0.012, 0.01, 0.1),
        LayerError("broken", "Conv", "c", 0.8, 0.012, 3.0),
        LayerError("after", "Relu", "d", 0.85, 0.8, 3.0),
    ]
    jumps, largest = find_jumps(layers)
    assert [j.node for j in jumps] == ["broken"] and largest[0].node == "broken"
    assert exclude_pattern("/layer3/layer3.0/conv1/Conv") == r"/layer3/layer3\.0/conv1/Conv$"


@pytest.mark.slow
def test_locate_finds_a_broken_node_in_an_fp16_model(fp32_onnx: Path, tmp_path: Path) -> None:
    from danet_deploy.precision import convert_fp16

    fp16, _ = convert_fp16(fp32_onnx, tmp_path / "fp16.onnx")
    target = _middle_conv(fp16)
    _break_conv(fp16, tmp_path / "broken.onnx", target)
    result = locate_onnx("fp16", tmp_path / "broken.onnx", fp32_onnx, Precision.FP16, _feeds(fp32_onnx), ["scene"])
    assert result.jumps and result.jumps[0].node == target, result.lines()
    assert result.exclude[0] == exclude_pattern(target) and result.compared > 20
    healthy = locate_onnx("fp16", fp16, fp32_onnx, Precision.FP16, _feeds(fp32_onnx), ["scene"])
    assert all(layer.node != target for layer in healthy.jumps)


@pytest.mark.slow
def test_locate_finds_a_broken_node_in_an_int8_model(fp32_onnx: Path, tmp_path: Path) -> None:
    from danet_deploy.precision import quantize_int8

    calib = tmp_path / "calib"
    calib.mkdir()
    for seed in range(4):
        Image.fromarray(generate_scene(100 + seed, 64, 128).image).save(calib / f"{seed}.png")
    int8, _ = quantize_int8(
        fp32_onnx, tmp_path / "int8.onnx", Int8Options(calib=calib, method="max", cache_dir=tmp_path / "cache")
    )
    target = _middle_conv(int8)
    _break_conv(int8, tmp_path / "broken.onnx", target)
    result = locate_onnx("int8", tmp_path / "broken.onnx", fp32_onnx, Precision.INT8, _feeds(fp32_onnx), ["scene"])
    assert result.jumps and result.jumps[0].node == target, result.lines()
    assert f"--exclude '{exclude_pattern(target)}'" in result.lines()[-1]


@pytest.mark.slow
def test_failed_fp16_backend_is_located_by_verify(fp32_onnx: Path, city_data: Path, tmp_path: Path) -> None:
    """The CLI as a user meets it: a failed FP16 backend is located without asking, the layers and the exclude
    patterns are printed and written in the JSON report; --locate on a passing one prints nothing alarming."""
    import json

    from danet_deploy.precision import convert_fp16

    from .test_cli import run

    fp16, _ = convert_fp16(fp32_onnx, tmp_path / "fp16.onnx")
    target = _middle_conv(fp16)
    _break_conv(fp16, tmp_path / "broken.onnx", target, factor=-4.0)
    result = run(
        "verify",
        "--onnx",
        fp32_onnx,
        "--onnx",
        tmp_path / "broken.onnx",
        "--data",
        city_data,
        "--json",
        tmp_path / "r.json",
    )
    assert result.returncode == 1, result.stderr + result.stdout
    assert f"error jumps at {target}" in result.stdout and f"--exclude '{exclude_pattern(target)}'" in result.stdout
    assert "thresholds in force" in result.stdout
    located = json.loads((tmp_path / "r.json").read_text())["located"]
    assert located[0]["jumps"][0]["node"] == target and located[0]["exclude"][0] == exclude_pattern(target)
    # The tiny random model's FP16 flips 0.25% of its near-tie labels: a looser agreement lets it pass.
    loose = ("--threshold", "fp16.min_pixel_agreement=0.99")
    healthy = run("verify", "--onnx", fp32_onnx, "--onnx", fp16, "--data", city_data, "--locate", *loose)
    assert healthy.returncode == 0 and "locate onnxruntime:fp16.onnx" in healthy.stdout, healthy.stderr


def test_tensorrt_locate_says_why_it_was_skipped_without_tensorrt(fp32_onnx: Path) -> None:
    """The TensorRT path (Polygraphy marks every layer output of the engine's source network) needs TensorRT and a
    GPU; without them it reports the reason instead of comparing anything."""
    pytest.importorskip("polygraphy")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: tests/test_tensorrt_gpu.py covers the real path")
    except ImportError:
        pass
    from danet_deploy.evaluate.locate import locate_tensorrt

    result = locate_tensorrt("tensorrt:m.engine", fp32_onnx, fp32_onnx, Precision.FP16, _feeds(fp32_onnx), ["scene"])
    assert result.skipped.startswith("TensorRT is not installed") and result.compared == 0
    assert result.lines() == [f"locate tensorrt:m.engine: skipped ({result.skipped})"]
