"""Where a reduced-precision model goes wrong: its intermediate tensors against the FP32 model's at the same node
names, on the images it failed, the way Polygraphy's `run --onnx-outputs mark all` comparison works, in bounded
memory.

Both models run segment by segment (`bounded_ort.segments`: each segment's fetched tensors fit a byte budget),
side by side, and each tensor pair is compared as soon as both sides produced it and then dropped, so at most a
segment's tensors of each model are held at once (attention too large to hold runs in query blocks, as in every
check). FP16 models run with FP16 rounding (`precision.fp16.fp16_rounding_model`), INT8 Q/DQ models as ONNX
Runtime runs them.

For each node the error is the relative L2 distance of its output, ||out - ref|| / ||ref||, the worst over the
images. The error a node *adds* is its error less the largest error among the compared tensors it reads; nodes
whose added error is large (at least JUMP_SHARE of the largest added error, and at least twice what they
inherit) are where the error jumps. The first of them in graph order are reported, with the `quantize --exclude`
patterns (anchored regular expressions of their names) that keep them in higher precision.

TensorRT engines: `locate_tensorrt` marks every layer output of a network built from the engine's source ONNX
with the engine's precision through Polygraphy (`ModifyNetworkOutputs`, `mark all`) and compares the same names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from danet_deploy.artifact import Precision, onnxruntime_session
from danet_deploy.errors import BadInputError, DeployError

LOCATE_SEGMENT_BYTES = 128 << 20  # fetched tensors held at once per model
JUMP_SHARE = 0.1  # a jump adds at least this share of the largest error any node adds
MIN_ADDED_ERROR = 1e-3  # relative error below this is rounding, never a jump
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass
class LayerError:
    """One node's output in the located model against the FP32 model's.

    Attributes:
        node: the node name (the same in both graphs).
        op_type: its operator.
        tensor: the output compared.
        error: relative L2 error ||out - ref|| / ||ref||, worst over the images.
        inherited: the largest error among the compared tensors it reads.
        max_abs_diff: max |out - ref| over the images.
    """

    node: str
    op_type: str
    tensor: str
    error: float
    inherited: float
    max_abs_diff: float

    @property
    def added(self) -> float:
        return max(self.error - self.inherited, 0.0)


@dataclass
class LocateResult:
    """Where one backend's error appears.

    Attributes:
        backend: the located backend's name.
        model: its file.
        reference: the FP32 model it was compared with.
        precision: the located model's precision.
        images: the images compared (the backend's worst).
        compared: how many tensor pairs were compared.
        jumps: the first nodes where the error jumps, in graph order.
        largest: the nodes adding the most error, largest first (whether or not they are jumps).
        exclude: `quantize --exclude` patterns that keep the jump nodes in higher precision.
        skipped: why nothing was compared ("" when it ran).
    """

    backend: str
    model: str
    reference: str
    precision: str
    images: list[str] = field(default_factory=list)
    compared: int = 0
    jumps: list[LayerError] = field(default_factory=list)
    largest: list[LayerError] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    skipped: str = ""

    def lines(self) -> list[str]:
        """What the terminal shows (untrusted names: the caller escapes markup)."""
        if self.skipped:
            return [f"locate {self.backend}: skipped ({self.skipped})"]
        lines = [
            f"locate {self.backend}: {self.compared} tensors compared with {self.reference} on {', '.join(self.images)}"
        ]
        if not self.jumps:
            lines.append("  no node adds a notable error (largest added error below the jump rule)")
        for layer in self.jumps:
            lines.append(
                f"  error jumps at {layer.node} ({layer.op_type}): relative error {layer.error:.3g} "
                f"(inherited {layer.inherited:.3g}), max |diff| {layer.max_abs_diff:.3g}"
            )
        if self.exclude:
            lines.append(
                "  keep them in higher precision: quantize " + " ".join(f"--exclude '{p}'" for p in self.exclude)
            )
        return lines


def exclude_pattern(node: str) -> str:
    """An anchored regular expression matching exactly `node` (quantize's patterns use `re.match`)."""
    return re.escape(node) + "$"


def _relative(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    a = ref.astype(np.float64, copy=False)
    b = out.astype(np.float64, copy=False)
    if a.shape != b.shape:
        return math.nan, math.nan
    finite = np.isfinite(b)
    if not finite.all():
        return math.inf, math.inf
    diff = b - a
    norm = float(np.sqrt((a * a).sum()))
    error = float(np.sqrt((diff * diff).sum())) / max(norm, 1e-12)
    return error, float(np.abs(diff).max(initial=0.0))


def _float_outputs(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """node name -> (first output, op type) for named nodes whose first output is a float tensor."""
    from danet_deploy.graph.shapes import infer_shapes_and_types

    _, types = infer_shapes_and_types(model)
    result = {}
    for node in model.graph.node:
        if node.name and node.output and node.output[0] and types.get(node.output[0]) in FLOAT_TYPES:
            result[node.name] = (node.output[0], node.op_type)
    return result


def _prepared(model: onnx.ModelProto, precision: Precision) -> tuple[onnx.ModelProto, Callable[[bytes], Any]]:
    """The model as the check runs it (FP16 rounding, attention in query blocks) and how its segments open."""
    from danet_deploy.bounded_ort.query_blocks import bounded_model

    if precision is Precision.FP16:
        from danet_deploy.precision.fp16 import fp16_rounding_model

        rounded, _, _ = bounded_model(fp16_rounding_model(model), copy=False)
        return rounded, lambda data: onnxruntime_session(data, optimize=False, arena=False)
    bounded, _, _ = bounded_model(model)
    return bounded, lambda data: onnxruntime_session(data, arena=False)


def compare_layers(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    precision: Precision,
    feeds: Sequence[dict[str, np.ndarray]],
    max_bytes: int = LOCATE_SEGMENT_BYTES,
) -> list[LayerError]:
    """Every node output present in both models (same node name, float output), compared on each feed; in the
    reference's graph order. One segment of tensors per model is held at a time (module doc)."""
    from danet_deploy.bounded_ort.segments import SegmentedRun

    ref_model, ref_session = _prepared(reference, Precision.FP32)
    cand_model, cand_session = _prepared(candidate, precision)
    ref_outputs, cand_outputs = _float_outputs(ref_model), _float_outputs(cand_model)
    shared = [name for name in ref_outputs if name in cand_outputs]
    if not shared:
        return []
    ref_tensor = {ref_outputs[n][0]: n for n in shared}
    cand_tensor = {cand_outputs[n][0]: n for n in shared}
    producers = {o: n.name for n in ref_model.graph.node for o in n.output}
    reads = {n.name: [producers[i] for i in n.input if i in producers] for n in ref_model.graph.node}
    ref_run = SegmentedRun(ref_model, list(ref_tensor), max_bytes, ref_session)
    cand_run = SegmentedRun(cand_model, list(cand_tensor), max_bytes, cand_session)
    del ref_model, cand_model
    error: dict[str, float] = {}
    max_abs: dict[str, float] = {}
    for feed in feeds:
        for node, (e, m) in _paired(ref_run.run(feed), cand_run.run(feed), ref_tensor, cand_tensor):
            error[node] = max(error.get(node, 0.0), e) if not math.isnan(e) else error.get(node, math.nan)
            max_abs[node] = max(max_abs.get(node, 0.0), m) if not math.isnan(m) else max_abs.get(node, math.nan)
    layers = []
    for node in shared:
        if node not in error or math.isnan(error[node]):
            continue
        inherited = _inherited(node, reads, error)
        layers.append(
            LayerError(node, ref_outputs[node][1], ref_outputs[node][0], error[node], inherited, max_abs[node])
        )
    return layers


def _inherited(node: str, reads: dict[str, list[str]], error: dict[str, float]) -> float:
    """The largest error among the compared tensors `node` reads, looking through nodes not compared."""
    best, pending, seen = 0.0, list(reads.get(node, [])), set()
    while pending:
        producer = pending.pop()
        if producer in seen:
            continue
        seen.add(producer)
        if producer in error and not math.isnan(error[producer]):
            best = max(best, error[producer])
        else:
            pending += reads.get(producer, [])
    return best


def _paired(
    ref_chunks: Iterator[dict[str, np.ndarray]],
    cand_chunks: Iterator[dict[str, np.ndarray]],
    ref_tensor: dict[str, str],
    cand_tensor: dict[str, str],
) -> Iterator[tuple[str, tuple[float, float]]]:
    """Advance the two segmented runs side by side; compare each pair once both sides have it, then drop it."""
    ref_held: dict[str, np.ndarray] = {}
    cand_held: dict[str, np.ndarray] = {}
    ref_done = cand_done = False
    while not (ref_done and cand_done):
        # Advance the side that holds more unmatched tensors' counterpart: the one behind.
        advance_ref = not ref_done and (cand_done or len(cand_held) >= len(ref_held))
        if advance_ref:
            chunk = next(ref_chunks, None)
            if chunk is None:
                ref_done = True
                continue
            ref_held.update({ref_tensor[t]: v for t, v in chunk.items() if t in ref_tensor})
        else:
            chunk = next(cand_chunks, None)
            if chunk is None:
                cand_done = True
                continue
            cand_held.update({cand_tensor[t]: v for t, v in chunk.items() if t in cand_tensor})
        del chunk
        for node in [n for n in ref_held if n in cand_held]:
            yield node, _relative(ref_held.pop(node), cand_held.pop(node))


def find_jumps(layers: list[LayerError], count: int = 5) -> tuple[list[LayerError], list[LayerError]]:
    """(the first `count` jump nodes in graph order, the `count` nodes adding the most error) (module doc)."""
    finite = [layer for layer in layers if math.isfinite(layer.error)]
    nonfinite = [layer for layer in layers if not math.isfinite(layer.error)]
    largest = sorted(finite, key=lambda layer: layer.added, reverse=True)[:count]
    top = largest[0].added if largest else 0.0
    floor = max(JUMP_SHARE * top, MIN_ADDED_ERROR)
    jumps = [
        layer
        for layer in layers
        if (not math.isfinite(layer.error) and math.isfinite(layer.inherited))
        or (math.isfinite(layer.error) and layer.added >= floor and layer.error >= 2 * layer.inherited)
    ]
    if nonfinite and not largest:
        largest = nonfinite[:count]
    return jumps[:count], largest


def locate_onnx(
    backend: str,
    model_path: str | Path,
    reference_path: str | Path,
    precision: Precision,
    feeds: Sequence[dict[str, np.ndarray]],
    images: list[str],
    count: int = 5,
    max_bytes: int = LOCATE_SEGMENT_BYTES,
) -> LocateResult:
    """Compare `model_path` (an FP16 or INT8 ONNX) with the FP32 ONNX `reference_path` on `feeds` (each model's
    prepared inputs, by input name) and report where the error jumps."""
    reference = onnx.load(str(reference_path))
    candidate = onnx.load(str(model_path))
    ref_inputs = [i.name for i in reference.graph.input]
    cand_inputs = [i.name for i in candidate.graph.input]
    if ref_inputs != cand_inputs:
        raise BadInputError(
            f"{model_path}: inputs {cand_inputs} differ from the FP32 model's {ref_inputs} ({reference_path}); "
            "locate compares models exported the same way"
        )
    layers = compare_layers(reference, candidate, precision, feeds, max_bytes)
    result = LocateResult(backend, str(model_path), str(reference_path), precision.value, list(images), len(layers))
    if not layers:
        result.skipped = f"no node name is shared with {reference_path}"
        return result
    result.jumps, result.largest = find_jumps(layers, count)
    result.exclude = [exclude_pattern(layer.node) for layer in result.jumps]
    return result


def locate_tensorrt(
    backend: str,
    source_onnx: str | Path,
    reference_path: str | Path,
    precision: Precision,
    feeds: Sequence[dict[str, np.ndarray]],
    images: list[str],
    count: int = 5,
) -> LocateResult:
    """The engine's source ONNX built by TensorRT at the engine's precision with every layer output marked
    (Polygraphy `ModifyNetworkOutputs(outputs=MARK_ALL)`, what `polygraphy run --trt-outputs mark all` does),
    compared at the same tensor names with the FP32 ONNX on ONNX Runtime. Needs TensorRT and a GPU: without them
    the result says why it was skipped. Marking every output keeps all of them in GPU memory for the run."""
    result = LocateResult(backend, str(source_onnx), str(reference_path), precision.value, list(images))
    try:
        import tensorrt  # noqa: F401
        from polygraphy import constants
        from polygraphy.backend.trt import (
            CreateConfig,
            EngineFromNetwork,
            ModifyNetworkOutputs,
            NetworkFromOnnxPath,
            TrtRunner,
        )
    except ImportError as exc:
        result.skipped = f"TensorRT is not installed here ({exc.name})"
        return result
    reference = onnx.load(str(reference_path))
    ref_model, ref_session = _prepared(reference, Precision.FP32)
    outputs = _float_outputs(ref_model)
    try:
        network = ModifyNetworkOutputs(NetworkFromOnnxPath(str(source_onnx)), outputs=constants.MARK_ALL)
        config = CreateConfig(fp16=precision is Precision.FP16, int8=precision is Precision.INT8)
        with TrtRunner(EngineFromNetwork(network, config=config)) as runner:
            from danet_deploy.bounded_ort.segments import SegmentedRun

            tensors = {tensor: node for node, (tensor, _) in outputs.items()}
            run = SegmentedRun(ref_model, list(tensors), LOCATE_SEGMENT_BYTES, ref_session)
            error: dict[str, float] = {}
            max_abs: dict[str, float] = {}
            for feed in feeds:
                marked = runner.infer(feed)
                for chunk in run.run(feed):
                    for tensor, value in chunk.items():
                        if tensor in marked:
                            e, m = _relative(value, np.asarray(marked[tensor]))
                            node = tensors[tensor]
                            error[node] = max(error.get(node, 0.0), e)
                            max_abs[node] = max(max_abs.get(node, 0.0), m)
                del marked
    except DeployError:
        raise
    except Exception as exc:  # TensorRT's parser and builder raise their own types
        result.skipped = f"TensorRT could not build the marked network ({type(exc).__name__}: {str(exc)[:160]})"
        return result
    producers = {o: n.name for n in ref_model.graph.node for o in n.output}
    reads = {n.name: [producers[i] for i in n.input if i in producers] for n in ref_model.graph.node}
    layers = [
        LayerError(node, outputs[node][1], outputs[node][0], error[node], _inherited(node, reads, error), max_abs[node])
        for node in outputs
        if node in error
    ]
    result.compared = len(layers)
    result.jumps, result.largest = find_jumps(layers, count)
    result.exclude = [exclude_pattern(layer.node) for layer in result.jumps]
    return result
