"""The runner contract every backend follows, modelled on Polygraphy's `BaseRunner`.

A runner is built cheaply: its constructor only records arguments (and reads small metadata), so an inactive
runner pickles and can be sent to a spawned process. `activate()` does the heavy work (loading weights,
creating a session, deserializing an engine) and `deactivate()` releases it; both are idempotent and the
context manager calls them. `infer()` takes an H x W x 3 uint8 RGB image, prepares it as the model's input
spec says, runs the backend and returns 1 x classes x H x W float32 logits; `last_inference_time()` is the
backend call alone, without the preprocessing and postprocessing around it.
"""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from danet_deploy.artifact import InputSpec, OnnxModel, Precision, precision_label
from danet_deploy.config import ModelConfig
from danet_deploy.errors import BadInputError
from danet_deploy.versions import cpu_model


def cpu_device() -> str:
    """'CPU: <model name> (N cores)' of this machine."""
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


ACCEPTED_INPUT = (
    "one image input: float32 or float16 Nx3xHxW (RGB normalized with the model config) or uint8 NxHxWx3 "
    "(RGB 0-255, preprocessing in the graph)"
)


def check_image_model(model: OnnxModel) -> None:
    """Refuse, before any session or data, an ONNX model that is not one image in and logits out (a foreign model
    with an extra input, another input type or layout): exit 2 saying what danet-deploy runs."""
    try:
        str(model.path).encode("utf-8")
    except UnicodeEncodeError:
        raise BadInputError(
            f"{model.path}: ONNX Runtime cannot open a file whose name is not UTF-8; rename it"
        ) from None
    graph = model.proto.graph
    weights = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]  # older exporters list weights as inputs too
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs[:4]) + (", ..." if len(inputs) > 4 else "")
        raise BadInputError(
            f"{model.path}: has {len(inputs)} inputs ({names}); danet-deploy runs models with {ACCEPTED_INPUT}"
        )
    spec = model.input_spec
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    channels = dims[3] if spec.uint8 else dims[1]
    if (spec.uint8 and spec.dtype != "uint8") or channels not in (None, 3):
        raise BadInputError(
            f"{model.path}: input {spec.input_name!r} is {spec.dtype} {dims}; "
            f"danet-deploy runs models with {ACCEPTED_INPUT}"
        )
    if not graph.output:
        raise BadInputError(f"{model.path}: the ONNX graph has no output; danet-deploy needs the logits")


class Runner(abc.ABC):
    """One backend behind one interface: an RGB uint8 image in, float32 logits out.

    Subclasses pass what they know (precision, input spec, config) to `__init__`, implement `device`,
    `activate_impl`, `deactivate_impl` and `infer_impl`, and may override `prepare` and `postprocess`.
    """

    kind: ClassVar[str] = "runner"  # backend family reported by benchmark: "pytorch", "onnxruntime", "tensorrt"

    def __init__(
        self,
        name: str,
        precision: Precision = Precision.FP32,
        input_spec: InputSpec | None = None,
        config: ModelConfig | None = None,
        quantized_for: str | None = None,
    ):
        self._name = name
        self._precision = precision
        self._quantized_for = quantized_for
        self._input_spec = input_spec or InputSpec()  # default: float NCHW, any size
        self._config = config
        self.is_active = False
        self._inference_time: float | None = None

    # --- description -------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def precision(self) -> Precision:
        """What the backend computes in; selects the verify thresholds."""
        return self._precision

    @property
    def quantized_for(self) -> str | None:
        """An INT8 backend's quantization target ('tensorrt' or 'onnxruntime'), else None."""
        return self._quantized_for

    @property
    def precision_label(self) -> str:
        """Precision as tables show it, e.g. 'int8 (ONNX Runtime)'."""
        return precision_label(self._precision, self._quantized_for)

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Where it runs: 'CPU: <model> (N cores)' or 'GPU: <name>'."""

    @property
    def evaluated(self) -> str:
        """How the backend evaluates the model: 'as written', or e.g. with large attention in query blocks
        (exact, to bound memory: see `bounded_ort.query_blocks`)."""
        return "as written"

    @property
    def input_spec(self) -> InputSpec:
        """The model input (layout, dtype, static or dynamic size) and outputs."""
        return self._input_spec

    @property
    def config(self) -> ModelConfig:
        """The model config (classes, mean/std, align_corners); a runner that loads it knows it once active."""
        if self._config is None:
            raise RuntimeError(f"{self.name}: the model config is known once the runner is activated")
        return self._config

    @property
    def threads(self) -> int | None:
        """CPU threads the backend computes with, None where that does not apply."""
        return None

    # --- lifecycle -----------------------------------------------------------------------------------------

    def activate_impl(self) -> None:  # noqa: B027 - optional hook
        """Load what inference needs; called by `activate()` when not active."""

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        """Release what `activate_impl` loaded; called by `deactivate()` when active."""

    def activate(self) -> None:
        """Make the runner ready for `infer()`; does nothing when already active."""
        if self.is_active:
            return
        self.activate_impl()
        self.is_active = True

    def deactivate(self) -> None:
        """Release the backend; does nothing when not active."""
        if not self.is_active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False
            self._inference_time = None

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def __getstate__(self) -> dict[str, Any]:
        if self.is_active:
            raise TypeError(f"{self.name}: an active runner cannot be pickled; deactivate() it first")
        return self.__dict__.copy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, active={self.is_active})"

    # --- inference -----------------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> Any:
        """H x W x 3 uint8 RGB -> what `infer_impl` takes (by default a batch of one in the input spec's layout)."""
        return self.input_spec.prepare(image, self.config)

    @abc.abstractmethod
    def infer_impl(self, feed: Any) -> Any:
        """The backend call alone, on a prepared input; returns what `postprocess` takes."""

    def postprocess(self, output: Any) -> np.ndarray:
        """The backend's output -> 1 x classes x H x W float32 logits."""
        return np.asarray(output, dtype=np.float32)

    def infer(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB (at the static input size, if the model has one) -> 1 x classes x H x W float32."""
        if not self.is_active:
            raise RuntimeError(f"{self.name}: activate() the runner (or use it as a context manager) before infer()")
        feed = self.prepare(image)
        started = time.perf_counter()
        output = self.infer_impl(feed)
        self._inference_time = time.perf_counter() - started
        return self.postprocess(output)

    def last_inference_time(self) -> float | None:
        """Seconds the backend call of the last `infer()` took (pre- and postprocessing excluded); None before one."""
        return self._inference_time


@contextmanager
def activated(runners: Iterable[Runner]) -> Iterator[list[Runner]]:
    """Activate the runners not active yet; on exit deactivate only those (already active ones stay active)."""
    runners = list(runners)
    started: list[Runner] = []
    try:
        for runner in runners:
            if not runner.is_active:
                runner.activate()
                started.append(runner)
        yield runners
    finally:
        for runner in reversed(started):
            runner.deactivate()
