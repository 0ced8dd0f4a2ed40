"""Benchmark: latency of every backend, each in its own process."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danet_deploy.errors import BadInputError
from danet_deploy.files import (
    PathLike,
    check_output,
    write_json,
)
from danet_deploy.options import BenchmarkOptions
from danet_deploy.progress import SILENT, Progress
from danet_deploy.steps.backends import backend_names, backends_plan, engine_runners, with_sidecars


def read_benchmark_json(path: PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise BadInputError(f"{path}: not a readable benchmark JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("backends"), list):
        raise BadInputError(f"{path}: not a benchmark JSON (no 'backends' list)")
    for i, row in enumerate(data["backends"]):  # what the report's latency chart reads, checked before the run
        timed = isinstance(row, dict) and "error" not in row
        if not isinstance(row, dict) or (
            timed
            and not (
                isinstance(row.get("name"), str)
                and all(
                    isinstance(row.get(k), (int, float)) and math.isfinite(row[k]) and row[k] >= 0
                    for k in ("median_ms", "p90_ms", "p99_ms")
                )
            )
        ):
            raise BadInputError(f"{path}: backend {i} is not a benchmark row (name, median_ms, p90_ms, p99_ms)")
    return data


@dataclass
class BenchmarkResult:
    """Latency per backend (`ok` rows) and the backends that failed (`failed` rows, each with its error and
    exit code), with the device and tool versions; `json_path` when written."""

    results: dict[str, Any]  # {"backends": [...], "versions": ..., "device": ...}
    json_path: Path | None = None

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.results["backends"] if "error" not in r]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results["backends"] if "error" in r]


def benchmark(
    checkpoint: PathLike | None = None,
    onnx: Sequence[PathLike] = (),
    engines: Sequence[PathLike] = (),
    options: BenchmarkOptions = BenchmarkOptions(),
    json_path: PathLike | None = None,
    progress: Progress = SILENT,
) -> BenchmarkResult:
    """Latency of each backend (PyTorch `checkpoint`, ONNX Runtime `onnx` models, TensorRT `engines`) in its own
    process on one real image; failures are rows with an error. A memory plan (each backend runs its model as
    written) is shown first; one that does not fit stops (BadInputError) unless `options.force`."""
    from danet_deploy.data.bundled import sample_image
    from danet_deploy.data.images import read_image
    from danet_deploy.evaluate.benchmark import benchmark as run_benchmark
    from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner
    from danet_deploy.runners.pytorch import PyTorchRunner

    options.check()
    image, warmup, iterations, threads = options.image, options.warmup, options.iterations, options.threads
    paths = [p for p in (checkpoint, *onnx, *engines) if p is not None]
    if json_path is not None:
        check_output(json_path, [*paths, *with_sidecars(engines), image])
    if not paths:
        raise BadInputError("benchmark needs at least one backend: a checkpoint, ONNX models or engines")
    for path in paths:
        if not Path(path).is_file():
            raise BadInputError(f"{path}: no such file")
    trt = engine_runners(engines)  # a bad engine (exit 2) or no TensorRT / GPU (exit 3) before any image is read
    picture = read_image(Path(image)) if image else sample_image()
    if checkpoint is not None or onnx:  # engines run on the GPU: the plan is of this machine's memory
        backends_plan("benchmark", checkpoint, onnx, picture.shape[:2]).show_and_check(progress, options.force)
    runners: list[Any] = [PyTorchRunner(checkpoint, threads=threads)] if checkpoint is not None else []
    runners += [
        OnnxRuntimeRunner(p, name=name, threads=threads) for p, name in zip(onnx, backend_names("onnxruntime", onnx))
    ]
    runners += trt
    what = f"benchmarking {len(runners)} backend(s): {warmup} warm-up + {iterations} timed runs each"
    with progress.task(what, total=len(runners) * (warmup + iterations)) as update:
        shown = [0]

        def on_runs(index: int, name: str, done: int, runs: int) -> None:
            overall = index * runs + done
            phase = "warm-up" if done < warmup else "timed runs"
            label = f"benchmark {index + 1}/{len(runners)}: {name} ({phase}; runs counted over all backends)"
            update(overall - shown[0], description=label)
            shown[0] = overall

        result = BenchmarkResult(run_benchmark(runners, picture, warmup, iterations, on_runs))
    if json_path is not None:
        result.json_path = write_json(json_path, result.results)
    return result
