"""What verify, benchmark and inspect share: TensorRT runners (engines and their sidecars are inputs) and the
memory plan of a set of backends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from danet_deploy.artifact import OnnxModel
from danet_deploy.engine.sidecar import ENGINE_SUFFIXES as SIDECAR_ENGINE_SUFFIXES
from danet_deploy.files import (
    PathLike,
)


def with_sidecars(engines: Sequence[PathLike]) -> list[PathLike]:
    """Engines and their sidecars: both are inputs a command must never write over."""
    from danet_deploy.engine.sidecar import sidecar_path

    return [*engines, *(sidecar_path(e) for e in engines)]


def engine_runners(engines: Sequence[PathLike]) -> list[Any]:
    """TensorRT runners: a missing engine or sidecar is exit 2 first, then no TensorRT / GPU is exit 3, both before
    any data is read or any process started."""
    if not engines:
        return []
    from danet_deploy.engine.system import running_system
    from danet_deploy.runners.tensorrt import TensorRTRunner

    runners = [TensorRTRunner(path) for path in engines]
    running_system()
    return runners


def backends_plan(
    command: str, checkpoint: PathLike | None, onnx: Sequence[PathLike], run_size: tuple[int, int] | None
) -> Any:
    """The memory plan of verify or benchmark for these backends: at a static ONNX model's size, else at
    `run_size`, the largest size the images will run at (dynamic models and the checkpoint run at the image's)."""
    from danet_deploy.memory_plan import benchmark_plan, onnx_file_facts, verify_plan

    static = [OnnxModel.load(p, external_data=False).input_spec.static_size for p in onnx if Path(p).is_file()]
    size = next((s for s in static if s), None) or run_size
    facts = [onnx_file_facts(path, size) for path in onnx if Path(path).is_file()]
    size = size or (facts[0][1] if facts else (512, 1024))
    torch_weights = Path(checkpoint).stat().st_size if checkpoint is not None and Path(checkpoint).is_file() else None
    if command == "verify":
        return verify_plan(torch_weights, [f for f, _ in facts], size)
    return benchmark_plan(torch_weights, [(f"onnxruntime:{Path(p).name}", f) for p, (f, _) in zip(onnx, facts)], size)


ENGINE_SUFFIXES = SIDECAR_ENGINE_SUFFIXES
