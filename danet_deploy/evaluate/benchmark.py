"""Latency benchmark of backends on one real image: warm-up, iterations, median/p90/p99, throughput, memory.

Each runner is sent, inactive, to its own spawned process, which activates it, so its peak resident memory
is its own (runtime, weights and activations) and one backend's allocations do not distort the next.
Compute time is the runner's `last_inference_time()` (the backend call on a prepared input); end-to-end is
the wall time of `infer()` on the uint8 image plus the argmax.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from danet_deploy.artifact import Precision
from danet_deploy.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, BadInputError, DeployError, printable, user_error
from danet_deploy.runners.base import Runner, cpu_device
from danet_deploy.versions import tool_versions


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
    quantized_for: str | None = None  # INT8: "tensorrt" or "onnxruntime"


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


# In a worker: runs finished so far (warm-up and timed), shared with the parent for its progress display.
_runs_done: Any = None


def _init_worker(counter: Any) -> None:
    """Worker start: Ctrl-C is the parent's to handle; keep the shared run counter."""
    global _runs_done
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _runs_done = counter


def _count_run() -> None:
    if _runs_done is not None:
        with _runs_done.get_lock():
            _runs_done.value += 1


def _run_one(runner: Runner, image: np.ndarray, warmup: int, iterations: int) -> dict:
    """In the child: activate the runner, warm up, then time each call (the backend alone and end to end)."""
    with runner:
        for _ in range(warmup):
            runner.infer(image)
            _count_run()
        compute, e2e = [], []
        for _ in range(iterations):
            started = time.perf_counter()
            runner.infer(image).argmax(1)
            e2e.append((time.perf_counter() - started) * 1000)
            compute.append((runner.last_inference_time() or 0.0) * 1000)
            _count_run()
        peak = peak_rss_bytes() / 2**20
        median_e2e = statistics.median(e2e)
        return asdict(
            LatencyStats(
                name=runner.name,
                kind=runner.kind,
                precision=Precision(runner.precision).value,
                input_shape=[1, *image.shape[:2], 3],
                warmup=warmup,
                iterations=iterations,
                median_ms=statistics.median(compute),
                p90_ms=percentile(compute, 90),
                p99_ms=percentile(compute, 99),
                mean_ms=statistics.fmean(compute),
                throughput_ips=1000.0 / median_e2e,
                end_to_end_median_ms=median_e2e,
                peak_rss_mib=peak,
                threads=runner.threads,
                device=runner.device,
                quantized_for=runner.quantized_for,
            )
        )


def _child(args: tuple) -> dict:
    runner = args[0]
    try:
        return _run_one(*args)
    except Exception as exc:  # report, do not crash the parent's other backends
        error = exc if isinstance(exc, DeployError) else user_error(exc)
        if error is not None:
            return {"name": runner.name, "error": str(error), "exit_code": error.exit_code}
        return {"name": runner.name, "error": printable(f"{type(exc).__name__}: {exc}"), "exit_code": EXIT_INTERNAL}


PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent exits


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this worker when the process that started it dies (killed, even with SIGKILL), so no
    benchmark outlives its command; elsewhere the parent's own exit handling terminates it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker(connection: Connection, parent: int, counter: Any, args: tuple) -> None:
    """The spawned worker: dies with its parent, leaves Ctrl-C to the parent (which stops it), counts its runs in
    `counter` (the parent's progress), sends one row."""
    _die_with_parent(parent)
    _init_worker(counter)
    try:
        connection.send(_child(args))
    finally:
        connection.close()


def _died(name: str, exitcode: int | None) -> dict:
    """The row of a worker that ended without a result (the OOM killer's SIGKILL, a crash in a native library)."""
    if exitcode is not None and exitcode < 0:
        how = f"killed by {signal.Signals(-exitcode).name}"
        if -exitcode == signal.SIGKILL:
            how += " (out of memory? the memory plan above estimates what it needs)"
    else:
        how = f"exited with code {exitcode} without a result"
    return {"name": name, "error": f"{name}: its benchmark process died, {how}", "exit_code": EXIT_BAD_INPUT}


def _run_in_process(
    ctx: Any, runner: Runner, args: tuple, counter: Any, waiting: Callable[[int], None] | None = None
) -> dict:
    """One backend's row from its own spawned process; a process that dies is a failed row, never a hang.
    `waiting(runs done)` is called every POLL_SECONDS while the worker runs."""
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_worker, args=(send, os.getpid(), counter, args), daemon=True)
    try:
        process.start()
        send.close()  # only the worker holds the sending end: its death is the end of the pipe
        try:
            while not receive.poll(POLL_SECONDS):
                if waiting is not None:
                    waiting(counter.value)
            row: dict = receive.recv()
        except EOFError:
            process.join()
            return _died(runner.name, process.exitcode)
        process.join()
        return row
    finally:
        receive.close()
        if process.is_alive():  # interrupted (Ctrl-C, SIGTERM): the worker goes with the command
            process.kill()
            process.join()


# A progress callback: (backend index, backend name, runs done, runs per backend: warm-up + timed).
OnRuns = Callable[[int, str, int, int], None]
POLL_SECONDS = 0.5  # how often the parent reads the worker's run counter


def benchmark(
    runners: list[Runner],
    image: np.ndarray,
    warmup: int = 3,
    iterations: int = 20,
    on_runs: OnRuns | None = None,
) -> dict[str, Any]:
    """Benchmark each (inactive) runner in a fresh spawned process, which activates it. `on_runs(backend index,
    name, runs done, runs per backend)` as the worker's warm-up and timed runs finish (polled every POLL_SECONDS).

    Returns {"backends": [LatencyStats dict, or {"name", "error", "exit_code"}], "versions": ..., "device": the CPU
    and the GPUs the backends ran on}. All backends run at one input size: a static backend's size if there is one,
    else the image's.
    """
    from danet_deploy.data.preprocess import resize_image
    from danet_deploy.evaluate.verify import common_input_size

    if iterations < 1:
        raise BadInputError("benchmark needs at least one timed iteration")
    active = [r.name for r in runners if r.is_active]
    if active:
        raise BadInputError(f"benchmark activates each runner in its own process; deactivate {', '.join(active)}")
    size = common_input_size(r.input_spec.static_size for r in runners)
    if size:
        image = resize_image(image, size)
    ctx = multiprocessing.get_context("spawn")
    results = []
    runs = warmup + iterations
    for index, runner in enumerate(runners):
        counter = ctx.Value("i", 0)

        def waiting(done: int, index: int = index, name: str = runner.name) -> None:
            if on_runs is not None:
                on_runs(index, name, done, runs)

        results.append(_run_in_process(ctx, runner, (runner, image, warmup, iterations), counter, waiting))
        if on_runs is not None:
            on_runs(index, runner.name, runs, runs)
    return {"backends": results, "versions": tool_versions("onnxslim", "tensorrt"), "device": devices(results)}


def devices(results: list[dict[str, Any]]) -> str:
    """This machine's CPU and each GPU a backend reported from inside its process (TensorRT: the CUDA device it
    ran on), e.g. 'CPU: AMD EPYC 9654 (16 cores), GPU: NVIDIA H200 (SM 9.0, 139.8 GiB)'."""
    gpus = dict.fromkeys(r["device"] for r in results if "error" not in r and r["device"].startswith("GPU"))
    return ", ".join([cpu_device(), *gpus])
