"""What verify, benchmark and inspect share: TensorRT runners (engines and their sidecars are inputs) and the
memory plan of a set of backends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from danet_deploy.artifact import OnnxModel
from danet_deploy.engine.sidecar import ENGINE_SUFFIXES as SIDECAR_ENGINE_SUFFIXES
from danet_deploy.errors import printable
from danet_deploy.files import (
    PathLike,
)


def with_sidecars(engines: Sequence[PathLike]) -> list[PathLike]:
    """Engines and their sidecars: both are inputs a command must never write over."""
    from danet_deploy.engine.sidecar import sidecar_path

    return [*engines, *(sidecar_path(e) for e in engines)]


def backend_names(kind: str, paths: Sequence[PathLike]) -> list[str]:
    """'kind:file name' per path; files of one name in different folders get as much of their folders as tells
    them apart ('onnxruntime:a/m.onnx', 'onnxruntime:b/m.onnx'), so reports never show two rows of one name."""
    parts = [Path(p).absolute().parts for p in paths]
    names = []
    for i, own in enumerate(parts):
        depth = 1
        while depth < len(own) and any(
            other[-depth:] == own[-depth:] for j, other in enumerate(parts) if j != i and other != own
        ):
            depth += 1
        names.append(printable(f"{kind}:{'/'.join(own[-depth:])}"))  # file names reach every report
    # One file given twice: numbered.
    return [f"{n} #{names[: i + 1].count(n)}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def engine_runners(engines: Sequence[PathLike]) -> list[Any]:
    """TensorRT runners: a missing engine or sidecar is exit 2 first, then no TensorRT / GPU is exit 3, both before
    any data is read or any process started."""
    if not engines:
        return []
    from danet_deploy.engine.system import running_system
    from danet_deploy.runners.tensorrt import TensorRTRunner

    runners = [TensorRTRunner(path, name) for path, name in zip(engines, backend_names("tensorrt", engines))]
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
    names = backend_names("onnxruntime", [p for p in onnx if Path(p).is_file()])
    return benchmark_plan(torch_weights, [(name, f) for name, (f, _) in zip(names, facts)], size)


ENGINE_SUFFIXES = SIDECAR_ENGINE_SUFFIXES
