"""ONNX Runtime runner (CPU provider) for any exported ONNX: float or uint8 input, FP32/FP16/Q-DQ."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from danet_deploy.artifact import OnnxModel, Precision, onnxruntime_session
from danet_deploy.errors import BadInputError, DeployError
from danet_deploy.runners.base import Runner, check_image_model, cpu_device


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Denormal floats as zero (x86 FTZ/DAZ, ARM FZ) on the calling thread for the block.

    DANet's PAM softmax saturates: at 512x1024 most of its N x N weights are 0 and some hundred thousand are
    denormal, and every vector multiply-add touching a denormal takes a slow microcode path. That made the
    attention product 5x slower (1.5 s instead of 0.3 s on an AVX-512 Xeon; FP32 and INT8 alike). The values
    flushed are below 1.2e-38: no logit changes beyond float rounding. ONNX Runtime's
    `session.set_denormal_as_zero` covers its pool threads only; the calling thread computes too, so it is set
    here through torch (the only portable switch Python has), and restored after.
    """
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's (and the C runtime's) default


class OnnxRuntimeRunner(Runner):
    """An ONNX file on ONNX Runtime's CPU provider; the session is created at activation. FP32 and INT8 models
    run with denormals flushed to zero (`denormals_flushed`).

    `bounded`: evaluate attention too large to hold as written in query blocks (exact; `bounded_ort.query_blocks`), with
    activations returned to the system after each run, for checks such as verify, where every backend is open
    at once. Benchmarks time the graph as written (the default)."""

    kind = "onnxruntime"

    def __init__(
        self, path: str | os.PathLike[str], name: str | None = None, threads: int | None = None, bounded: bool = False
    ):
        # Read the graph's metadata once and keep only the small parts (not the proto).
        model = OnnxModel.load(path, external_data=False)
        model.require_runnable()
        check_image_model(model)
        self.path: Path = model.path
        self.metadata = model.metadata  # the danet-deploy metadata (config, provenance, io): small JSON
        self._threads = threads
        self._bounded = bounded
        self._evaluated = "as written"
        self._session: Any = None
        super().__init__(
            name or f"onnxruntime:{self.path.name}",
            model.precision,
            model.input_spec,
            model.config,
            model.quantized_for,
        )

    @property
    def device(self) -> str:
        return cpu_device()

    @property
    def threads(self) -> int | None:
        return self._threads or os.cpu_count()

    @property
    def evaluated(self) -> str:
        return self._evaluated

    @property
    def session(self) -> Any:
        """The ONNX Runtime session while active, else None."""
        return self._session

    def activate_impl(self) -> None:
        try:
            if self._precision == Precision.FP16:
                # ORT's CPU provider runs most FP16 ops in FP32 and never rounds between them, which hides
                # FP16 overflow; this session stores every FP16 intermediate in FP16, as a GPU would.
                from danet_deploy.precision.fp16 import fp16_check_session, fp16_session

                if self._bounded:
                    self._session, evaluation = fp16_check_session(self.path)
                    self._evaluated = evaluation.describe() if evaluation is not None else "as written"
                else:
                    self._session = fp16_session(self.path, bounded=False)
            elif self._bounded:
                from danet_deploy.bounded_ort.query_blocks import bounded_session

                self._session, evaluation = bounded_session(self.path, threads=self._threads, flush_denormals=True)
                self._evaluated = evaluation.describe()
            else:
                self._session = onnxruntime_session(self.path, self._threads, flush_denormals=True)
        except DeployError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for invalid models
            raise BadInputError(
                f"{self.path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:160]})"
            ) from None
        names = self._input_spec.output_names
        self._outputs = ["logits" if "logits" in names else names[0]]

    def deactivate_impl(self) -> None:
        self._session = None

    def infer_impl(self, feed: Any) -> Any:
        # The FP16 emulation keeps FP16's own denormal behaviour.
        flushed = contextlib.nullcontext() if self._precision == Precision.FP16 else denormals_flushed()
        with flushed:
            return self._session.run(self._outputs, {self._input_spec.input_name: feed})[0]
