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
from danet_deploy.progress import SILENT, Progress
from danet_deploy.steps.backends import backends_plan, engine_runners, with_sidecars


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
    *,
    image: PathLike | None = None,
    warmup: int = 3,
    iterations: int = 20,
    threads: int | None = None,
    json_path: PathLike | None = None,
    force: bool = False,
    progress: Progress = SILENT,
) -> BenchmarkResult:
    """Latency of each backend in its own process on one real image; failures are rows with an error. A memory
    plan (each backend runs its model as written) is shown first; one that does not fit stops (exit 2) unless
    `force`."""
    from danet_deploy.data.bundled import sample_image
    from danet_deploy.data.images import read_image
    from danet_deploy.evaluate.benchmark import benchmark as run_benchmark
    from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner
    from danet_deploy.runners.pytorch import PyTorchRunner

    paths = [p for p in (checkpoint, *onnx, *engines) if p is not None]
    if json_path is not None:
        check_output(json_path, [*paths, *with_sidecars(engines), image])
    if not paths:
        raise BadInputError("benchmark needs --ckpt, --onnx and/or --engine")
    for path in paths:
        if not Path(path).is_file():
            raise BadInputError(f"{path}: no such file")
    picture = read_image(Path(image)) if image else sample_image()
    backends_plan("benchmark", checkpoint, onnx, picture.shape[:2]).show_and_check(progress, force)
    runners: list[Any] = [PyTorchRunner(checkpoint, threads=threads)] if checkpoint is not None else []
    runners += [OnnxRuntimeRunner(p, name=f"onnxruntime:{Path(p).name}", threads=threads) for p in onnx]
    runners += engine_runners(engines)
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
