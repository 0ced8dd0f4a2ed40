"""Latency benchmark of backends on one real image: warm-up, iterations, median/p90/p99, throughput, memory.

Each backend runs in its own spawned process, so its peak resident memory is its own (runtime, weights
and activations) and one backend's allocations do not distort the next. Compute time is the backend's
inference call on a prepared input; end-to-end adds preprocessing of the uint8 image and the argmax.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..versions import tool_versions


@dataclass(frozen=True)
class BackendSpec:
    kind: str  # "pytorch" | "onnxruntime" | "tensorrt"
    path: str
    name: str


@dataclass
class LatencyStats:
    name: str
    kind: str
    precision: str
    input_shape: list[int]
    warmup: int
    iterations: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_ips: float  # images per second from the median end-to-end latency
    end_to_end_median_ms: float
    peak_rss_mib: float
    threads: int | None
    device: str


def peak_rss_bytes() -> int:
    """This process's peak resident memory.

    VmHWM belongs to the process's own address space; getrusage's ru_maxrss is not usable in a spawned child
    because Linux carries the parent's peak over across fork and exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _make_runner(spec: BackendSpec, threads: int | None) -> Any:
    if spec.kind == "pytorch":
        import torch

        from ..checkpoints import load_checkpoint
        from ..runners.pytorch import PyTorchRunner

        if threads:
            torch.set_num_threads(threads)
        loaded = load_checkpoint(spec.path)
        return PyTorchRunner(loaded.model, loaded.config, name=spec.name)
    if spec.kind == "onnxruntime":
        from ..runners.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(spec.path, name=spec.name, threads=threads)
    from ..runners.tensorrt import TensorRTRunner

    return TensorRTRunner(spec.path, name=spec.name)


def _compute_call(runner: Any, image: np.ndarray) -> Any:
    """A zero-argument call running only the backend's inference on an already prepared input."""
    from ..data.preprocess import normalize

    if runner.__class__.__name__ == "OnnxRuntimeRunner":
        feed = image[None] if runner.uint8_input else normalize(image, runner.config).astype(runner.input_dtype)
        return lambda: runner.session.run(["logits"], {runner.input_name: feed})
    if runner.__class__.__name__ == "PyTorchRunner":
        import torch

        x = torch.from_numpy(normalize(image, runner.config))

        def call() -> Any:
            with torch.inference_mode():
                return runner.model(x)

        return call
    return lambda: runner.infer(image)  # TensorRT: Polygraphy's infer includes host<->device copies


def _threads(spec: BackendSpec, threads: int | None) -> int | None:
    if threads:
        return threads
    if spec.kind == "pytorch":
        import torch

        return torch.get_num_threads()
    return os.cpu_count() if spec.kind == "onnxruntime" else None


def _device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} cores)"


def _run_one(spec: BackendSpec, image: np.ndarray, warmup: int, iterations: int, threads: int | None) -> dict:
    runner = _make_runner(spec, threads)
    compute = _compute_call(runner, image)
    for _ in range(warmup):
        compute()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        compute()
        times.append((time.perf_counter() - started) * 1000)
    e2e = []
    for _ in range(max(1, min(iterations, 5))):
        started = time.perf_counter()
        runner.infer(image).argmax(1)
        e2e.append((time.perf_counter() - started) * 1000)
    peak = peak_rss_bytes() / 2**20
    device = _device() if spec.kind != "tensorrt" else f"GPU: {getattr(runner, 'gpu_name', 'NVIDIA')}"
    median_e2e = statistics.median(e2e)
    return asdict(LatencyStats(
        name=spec.name, kind=spec.kind, precision=getattr(runner, "precision", "fp32"),
        input_shape=[1, *image.shape[:2], 3], warmup=warmup, iterations=iterations,
        median_ms=statistics.median(times), p90_ms=percentile(times, 90), p99_ms=percentile(times, 99),
        mean_ms=statistics.fmean(times), throughput_ips=1000.0 / median_e2e, end_to_end_median_ms=median_e2e,
        peak_rss_mib=peak, threads=_threads(spec, threads), device=device,
    ))  # fmt: skip


def _child(args: tuple) -> dict:
    try:
        return _run_one(*args)
    except Exception as exc:  # report, do not crash the parent's other backends
        from ..errors import DeployError

        if isinstance(exc, DeployError):
            return {"error": str(exc), "exit_code": exc.exit_code}
        return {"error": f"{type(exc).__name__}: {exc}", "exit_code": 4}


def fixed_input_size(spec: BackendSpec) -> tuple[int, int] | None:
    """(H, W) a backend requires, read from the ONNX input or the engine sidecar without loading the model."""
    if spec.kind == "onnxruntime":
        from ..export.artifact import OnnxModel

        return OnnxModel.load(spec.path, external_data=False).input_spec.static_size
    if spec.kind == "tensorrt":
        from ..engine.sidecar import read_sidecar

        return read_sidecar(spec.path).fixed_input_size
    return None


def benchmark(
    specs: list[BackendSpec], image: np.ndarray, warmup: int = 3, iterations: int = 20, threads: int | None = None
) -> dict[str, Any]:
    """Benchmark each backend in a fresh process; returns {"backends": [...], "versions": ..., "device": ...}.

    All backends run at one input size: a static backend's size if there is one, else the image's.
    """
    from ..data.preprocess import resize_image
    from ..evaluate.verify import common_input_size

    size = common_input_size(fixed_input_size(spec) for spec in specs)
    if size:
        image = resize_image(image, size)
    ctx = multiprocessing.get_context("spawn")
    results = []
    for spec in specs:
        with ctx.Pool(1) as pool:
            results.append(pool.apply(_child, ((spec, image, warmup, iterations, threads),)))
    return {"backends": results, "versions": tool_versions("onnxslim", "tensorrt"), "device": _device()}
