"""verify's library side: per-precision thresholds, precision detection, streaming evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from danet_deploy.data.datasets import open_dataset
from danet_deploy.errors import BadInputError
from danet_deploy.runners.onnxruntime import detect_precision
from danet_deploy.runners.pytorch import PyTorchRunner
from danet_deploy.verify import DEFAULT_THRESHOLDS, thresholds_with, verify

from .conftest import TINY


def test_threshold_overrides() -> None:
    t = thresholds_with(["fp16.min_pixel_agreement=0.5", "int8.max_abs_diff=2", "fp32.max_abs_diff=none"])
    assert t["fp16"].min_pixel_agreement == 0.5 and t["fp16"].max_miou_drop == DEFAULT_THRESHOLDS["fp16"].max_miou_drop
    assert t["int8"].max_abs_diff == 2.0 and t["fp32"].max_abs_diff is None
    for bad in ("fp64.max_abs_diff=1", "fp16.speed=1", "fp16.max_abs_diff", "int8.max_miou_drop=lots"):
        with pytest.raises(BadInputError, match="--threshold"):
            thresholds_with([bad])


def _save(tmp_path: Path, nodes: list, inits: list, name: str) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)  # fmt: skip
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_detect_precision(tmp_path: Path) -> None:
    fp32 = _save(tmp_path, [helper.make_node("Relu", ["image"], ["logits"])], [], "a.onnx")
    casts = [
        helper.make_node("Cast", ["image"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["logits"], to=TensorProto.FLOAT),
    ]
    fp16 = _save(tmp_path, casts, [], "b.onnx")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    qdq = [
        helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["logits"]),
    ]
    int8 = _save(tmp_path, qdq, [scale, zero], "c.onnx")
    assert [detect_precision(p) for p in (fp32, fp16, int8)] == ["fp32", "fp16", "int8"]


class NoisyRunner:
    """A backend whose logits differ from the reference by a fixed offset on one class."""

    def __init__(self, inner: PyTorchRunner, precision: str, offset: float):
        self.inner, self.precision, self.offset = inner, precision, offset
        self.name, self.input_size = f"noisy-{precision}", None

    def infer(self, image: np.ndarray) -> np.ndarray:
        out = self.inner.infer(image).copy()
        out[:, 0] += self.offset
        return out


def test_precision_selects_thresholds(tiny_model, city_data: Path) -> None:
    reference = PyTorchRunner(tiny_model, TINY)
    dataset = open_dataset(city_data)
    # A 0.01 logit shift fails fp32's 1e-3 logit tolerance but not fp16's label-based thresholds.
    report = verify(dataset, [reference, NoisyRunner(reference, "fp32", 0.01), NoisyRunner(reference, "fp16", 0.01)],
                    TINY)  # fmt: skip
    by_name = {b.name: b for b in report.backends}
    assert not by_name["noisy-fp32"].passed and "max abs diff" in by_name["noisy-fp32"].failures[0]
    assert by_name["noisy-fp16"].pixel_agreement > 0.999
    assert by_name["noisy-fp16"].passed == (by_name["noisy-fp16"].pixel_agreement >= 0.999)
    assert report.passed is False and report.labeled and report.images == 3
