"""Looking inside models on calibration images: intermediate tensors, and a low-precision model against FP32."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..export.artifact import onnxruntime_session
from .calibration_data import CalibrationSet

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every top-level tensor whose type ONNX shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference fails on some custom ops; fall back to what the file declares
        inferred = model
    graph = inferred.graph
    types = {}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types.setdefault(init.name, init.data_type)
    return types


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Float node outputs of the top-level graph, in node order (tensors inside Scan bodies are not reachable)."""
    types = tensor_types(model)
    names = [o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o]
    return [n for n in names if types.get(n) in FLOAT_TYPES]


class ActivationProbe:
    """An ONNX Runtime CPU session that also returns the given intermediate tensors.

    Memory: every probed tensor of one batch is alive at once (a few GiB for DANet-R101 at 512x1024).
    """

    def __init__(self, model: onnx.ModelProto, tensors: list[str], threads: int | None = None):
        probed = onnx.ModelProto()
        probed.CopyFrom(model)
        types = tensor_types(probed)
        present = {o.name for o in probed.graph.output}
        for name in tensors:
            if name not in present:
                probed.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                present.add(name)
        self.tensors = list(tensors)
        self.session = onnxruntime_session(probed, threads)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.tensors, feed)
        return dict(zip(self.tensors, values))


@dataclass
class Agreement:
    """A low-precision model against the FP32 one on some calibration images."""

    images: int
    label_agreement: float  # fraction of pixels with the same argmax label
    max_abs_diff: float  # over finite logits
    mean_abs_diff: float
    nonfinite: int  # NaN/Inf logits in the low-precision model


def first_batches(calib: CalibrationSet, images: int) -> Iterator[np.ndarray]:
    """The batches holding the first `images` calibration images (decoding no more than that)."""
    return itertools.islice(calib.batches(), -(-images // calib.batch))


def compare_models(reference: Any, candidate: Any, calib: CalibrationSet, images: int) -> Agreement:
    """Logits of two ONNX Runtime sessions on the first `images` calibration images."""
    agree = pixels = values = nonfinite = count = 0
    max_abs = sum_abs = 0.0
    for batch in first_batches(calib, images):
        feed = {calib.input_name: batch}
        ref, got = (s.run([s.get_outputs()[0].name], feed)[0].astype(np.float64) for s in (reference, candidate))
        finite = np.isfinite(got)
        nonfinite += int(got.size - finite.sum())
        diff = np.abs(np.where(finite, got, ref) - ref)
        max_abs = max(max_abs, float(diff.max()))
        sum_abs += float(diff.sum())
        values += diff.size
        # Non-finite logits never win the argmax, so they count as disagreement unless all are non-finite.
        agree += int((np.where(finite, got, -np.inf).argmax(1) == ref.argmax(1)).sum())
        pixels += ref.shape[0] * int(np.prod(ref.shape[2:]))
        count += batch.shape[0]
    return Agreement(count, agree / max(pixels, 1), max_abs, sum_abs / max(values, 1), nonfinite)
