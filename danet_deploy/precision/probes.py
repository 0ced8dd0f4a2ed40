"""Looking inside models on calibration images: intermediate tensors, and a low-precision model against FP32."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from danet_deploy.artifact import onnxruntime_session
from danet_deploy.bounded_ort.query_blocks import bounded_model
from danet_deploy.graph.shapes import infer_shapes_and_types
from danet_deploy.precision.calibration_data import CalibrationSet

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every top-level tensor whose type ONNX shape inference can tell (initializers included)."""
    return infer_shapes_and_types(model)[1]


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


class MagnitudeProbe:
    """max |value| of float activations of a model on each input, in bounded memory.

    The model computes each tensor's min and max itself (ReduceMin / ReduceMax outputs are scalars), so no
    intermediate tensor leaves ONNX Runtime and its memory planner frees each one as usual: one image at a time
    costs what one inference costs. Attention maps too large to hold are computed and reduced in query blocks
    (`bounded_ort.query_blocks`), so their magnitudes are measured too.
    """

    def __init__(self, model: onnx.ModelProto, tensors: list[str] | None = None, threads: int | None = None):
        self.tensors = activation_tensors(model) if tensors is None else list(tensors)
        probed, self.evaluation, maps = bounded_model(model, reduce_maps=True)
        if probed is model:
            probed = onnx.ModelProto()
            probed.CopyFrom(model)
        graph = probed.graph
        types = tensor_types(model)
        self.outputs: dict[str, list[str]] = {t: [maps[t]] for t in self.tensors if t in maps}
        wanted = set(self.tensors) - set(self.outputs)
        # Each pair right after its producer, and a session that runs nodes in that order (`in_order`).
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            nodes.append(node)
            for tensor in node.output:
                if tensor not in wanted:
                    continue
                pair = [f"{tensor}__max", f"{tensor}__min"]
                kind = types.get(tensor, onnx.TensorProto.FLOAT)
                for op, out in zip(("ReduceMax", "ReduceMin"), pair):
                    nodes.append(onnx.helper.make_node(op, [tensor], [out], name=f"{out}__probe", keepdims=0))
                    graph.output.append(onnx.helper.make_tensor_value_info(out, kind, []))
                self.outputs[tensor] = pair
        del graph.node[:]
        graph.node.extend(nodes)
        self.names = [name for pair in self.outputs.values() for name in pair]
        self.session = onnxruntime_session(probed, threads, arena=False, in_order=True)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, float]:
        """{tensor: max |value|} on one input (inf where the tensor holds NaN or inf)."""
        values = dict(zip(self.names, self.session.run(self.names, feed)))
        result = {}
        for tensor, names in self.outputs.items():
            peak = max(abs(float(values[n])) for n in names)
            result[tensor] = peak if np.isfinite(peak) else np.inf
        return result


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
    """Logits of two ONNX Runtime sessions on the first `images` calibration images (compared one class plane at a
    time: full-size logits are 150 MiB per image, and float64 copies of them would be the step's peak)."""
    agree = pixels = values = nonfinite = count = 0
    max_abs = sum_abs = 0.0
    for batch in first_batches(calib, images):
        feed = {calib.input_name: batch}
        ref, got = (s.run([s.get_outputs()[0].name], feed)[0] for s in (reference, candidate))
        finite = np.isfinite(got)
        nonfinite += int(got.size - np.count_nonzero(finite))
        for c in range(ref.shape[1]):
            diff = np.abs(np.where(finite[:, c], got[:, c], ref[:, c]) - ref[:, c])
            max_abs = max(max_abs, float(diff.max()))
            sum_abs += float(diff.sum(dtype=np.float64))
        values += ref.size
        # Non-finite logits never win the argmax, so they count as disagreement unless all are non-finite.
        got[~finite] = -np.inf
        del finite
        agree += int(np.count_nonzero(got.argmax(1) == ref.argmax(1)))
        pixels += ref.shape[0] * int(np.prod(ref.shape[2:]))
        count += batch.shape[0]
        del ref, got
    return Agreement(count, agree / max(pixels, 1), max_abs, sum_abs / max(values, 1), nonfinite)
