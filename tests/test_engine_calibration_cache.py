"""TensorRT calibration cache for implicit INT8 (DLA, TensorRT 8.6): the format checked against real caches."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from danet_deploy.engine.calibration_cache import (
    activation_scales,
    calibration_cache_text,
    read_calibration_cache,
    tensorrt_version_number,
)
from danet_deploy.errors import BadInputError

# Lines of real caches TensorRT wrote, as published (an NVDLA tutorial's MNIST cache, TensorRT 7.2.2, and a TensorFlow
# model's cache under a TRT-100300 header): the header, then "<tensor>: <float32 bits as 8 hex digits>". Names may
# hold ':' (TensorFlow names): trtexec splits at the last one.
REAL_CACHE = """TRT-7202-EntropyCalibration2
data: 3c008912
conv1: 3c60dd38
(Unnamed Layer* 4) [Fully Connected]_output: 3d65992f
input_1:0: 3c010a14
"""


def test_reads_a_real_cache_as_trtexec_does() -> None:
    header, scales = read_calibration_cache(REAL_CACHE)
    assert header == "TRT-7202-EntropyCalibration2"
    assert list(scales) == ["data", "conv1", "(Unnamed Layer* 4) [Fully Connected]_output", "input_1:0"]
    # 0x3c008912 is 1/127.44: an input in [0, 1] quantized with amax 1 (scale = amax / 127)
    assert scales["data"] == pytest.approx(struct.unpack(">f", bytes.fromhex("3c008912"))[0])
    assert scales["data"] == pytest.approx(1 / 127, rel=0.01)


@pytest.mark.parametrize(
    ("version", "number"),
    [((8, 6, 1), 8601), ((8, 6, 2), 8602), ((10, 3, 0), 100300), ((10, 3, 0, 26), 100300), ((11, 4, 1), 110401)],
)
def test_header_carries_tensorrts_own_version_number(version: tuple[int, ...], number: int) -> None:
    """NV_TENSORRT_VERSION: major*1000+minor*100+patch in 8.x (8601), major*10000+... from 10 (100300, as in
    NVIDIA TAO's published caches); a cache with another release's header is refused by TensorRT."""
    assert tensorrt_version_number(version) == number
    assert calibration_cache_text({"x": 0.5}, version).splitlines()[0] == f"TRT-{number}-EntropyCalibration2"


def test_written_scales_read_back_bit_for_bit() -> None:
    scales = {"image": 1 / 127, "/backbone/conv1/Conv_output_0": 0.0421, "name:with:colons": 3.5e-5}
    text = calibration_cache_text(scales, (10, 3, 0))
    assert all(len(line.rsplit(": ", 1)[1]) == 8 for line in text.splitlines()[1:])  # trtexec reads 8 hex digits
    _, read = read_calibration_cache(text)
    assert read == {name: float(np.float32(value)) for name, value in scales.items()}
    with pytest.raises(BadInputError, match="no per-tensor activation scale"):
        calibration_cache_text({}, (10, 3, 0))


def test_activation_scales_of_a_qdq_model_leave_weights_out() -> None:
    """Per-tensor activation scales by the quantized tensor's name (the FP32 network's tensor); weights are
    quantized by TensorRT itself in implicit INT8, per-channel scales are not activation scales."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dqx"),
        helper.make_node("QuantizeLinear", ["w", "sw", "zw"], ["wq"], name="qw", axis=0),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], name="dqw", axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"),
        helper.make_node("Constant", [], ["sy"], value=numpy_helper.from_array(np.array(0.25, np.float32))),
        helper.make_node("QuantizeLinear", ["y", "sy"], ["yq"], name="qy"),
        helper.make_node("DequantizeLinear", ["yq", "sy"], ["out"], name="dqy"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "sx"),
        numpy_helper.from_array(np.array(0, np.int8), "zx"),
        numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "sw"),
        numpy_helper.from_array(np.zeros(2, np.int8), "zw"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    scales = activation_scales(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    assert scales == {"x": pytest.approx(0.02), "y": 0.25}
