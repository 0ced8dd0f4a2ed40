"""TensorRT runner: checks the engine's sidecar against this system, then runs it through Polygraphy.

The engine is deserialized from its bytes (`Runtime.deserialize_cuda_engine`, in every TensorRT version), not
through Polygraphy's `EngineFromPath`, whose file reader subclasses `trt.IStreamReader`: absent in 8.6, renamed
in 11. The bytes are checked against the sidecar's hash first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from danet_deploy.artifact import Precision
from danet_deploy.config import ModelConfig
from danet_deploy.engine.sidecar import check_compatible, read_sidecar
from danet_deploy.errors import BadInputError
from danet_deploy.runners.base import Runner


class TensorRTRunner(Runner):
    """A TensorRT engine with its sidecar; the engine is deserialized at activation, after a compatibility check."""

    kind = "tensorrt"

    def __init__(self, path: str | os.PathLike[str], name: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise BadInputError(f"{self.path}: no such engine file")
        sidecar = read_sidecar(self.path)
        if not sidecar.model_config:
            raise BadInputError(f"{self.path}: the sidecar has no model config")
        try:  # the sidecar is a file like any other: a bad config is the file's problem, not a crash
            config = ModelConfig.from_dict(sidecar.model_config)
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{self.path}: invalid model config in the sidecar ({exc})") from None
        self._sidecar = sidecar
        self.warnings: list[str] = []  # compatibility warnings, filled by activate()
        self._running: Any = None  # engine.system.RunningSystem, known once activated
        self._runner: Any = None
        super().__init__(name or f"tensorrt:{self.path.name}", Precision(sidecar.precision), sidecar.spec, config)

    @property
    def device(self) -> str:
        """The GPU it runs on once active ('GPU: NVIDIA H200 (SM 9.0, 139.8 GiB)'), before that the one it was
        built on."""
        if self._running is not None:
            return self._running.device
        return f"GPU: {self._sidecar.gpu_name} (where it was built)"

    @property
    def sidecar(self) -> Any:
        """The engine's sidecar (engine.sidecar.EngineSidecar): build facts and the precision audit."""
        return self._sidecar

    def activate_impl(self) -> None:
        from danet_deploy.engine.system import running_system

        # Compare versions and GPU before deserializing: a mismatched plan fails inside TensorRT otherwise.
        running = running_system()
        self.warnings = check_compatible(self._sidecar, running, self.path)
        engine_bytes = self._sidecar.engine_bytes(self.path)
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runner = TrtRunner(EngineFromBytes(engine_bytes, runtime=self._runtime))
        try:
            runner.activate()
        except Exception as exc:  # TensorRT refuses the plan (logged by it), Polygraphy raises its own exception
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise BadInputError(
                f"{self.path}: TensorRT {running.tensorrt_version} could not load the engine ({first}); rebuild it "
                "here with `danet-deploy build-engine`"
            ) from None
        self._running = running
        self._runner = runner
        names = self._input_spec.output_names
        self._output = "logits" if "logits" in names else names[0]

    def _runtime(self) -> Any:
        """The TensorRT runtime that deserializes the engine, on the engine's DLA core (as trtexec sets it)."""
        import tensorrt as trt
        from polygraphy.backend.trt import util as trt_util

        runtime = trt.Runtime(trt_util.get_trt_logger())
        core = self._sidecar.options.dla_core
        if core is not None:
            runtime.DLA_core = core
        return runtime

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse (exit 2) an input outside the engine's optimization profile before TensorRT sees it."""
        for name, (lo, _, hi) in self._sidecar.profiles[0].items():
            fits = len(shape) == len(lo) and all(a <= d <= b for a, d, b in zip(lo, shape, hi))
            if not fits:
                dims = lambda s: "x".join(map(str, s))  # noqa: E731
                raise BadInputError(
                    f"{self.path}: input {dims(shape)} is outside the engine's profile for {name} (min {dims(lo)}, "
                    f"max {dims(hi)}); rebuild with a profile that covers it or resize the images"
                )

    def deactivate_impl(self) -> None:
        runner, self._runner, self._running = self._runner, None, None
        if runner is not None and runner.is_active:
            runner.deactivate()

    def infer_impl(self, feed: Any) -> Any:
        self.check_shape(tuple(int(d) for d in feed.shape))
        # Polygraphy's call includes the host <-> device copies.
        return self._runner.infer({self._input_spec.input_name: feed})[self._output]

    def postprocess(self, output: Any) -> np.ndarray:
        # Polygraphy reuses its output buffers between calls: copy.
        return np.array(output, dtype=np.float32, copy=True)
