"""Progress that moves: calibration counts images (with the total known before the quantizer prepares), benchmark
counts every backend's runs, and logs get a line even while nothing advances."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from danet_deploy.options import Int8Options
from danet_deploy.progress import PeriodicLines

from .test_precision import _write_images


def test_log_heartbeat_writes_while_a_phase_is_silent() -> None:
    lines: list[str] = []
    task = PeriodicLines("preparing the quantizer", 4, lines.append, interval=0.05, heartbeat=True)
    time.sleep(0.3)  # nothing advances: a log still gets status lines
    task.update()
    task.finish()
    beats = [line for line in lines if line.startswith("preparing the quantizer: 0/4")]
    assert len(beats) >= 2 and lines[-1].endswith("; finished") and lines[0] == "preparing the quantizer: started (0/4)"
    count = len(lines)
    time.sleep(0.15)
    assert len(lines) == count  # the heartbeat ended with the task


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_calibration_reports_each_image_with_the_total_first(fp32_onnx: Path, tmp_path: Path, target: str) -> None:
    from danet_deploy.precision import quantize_int8

    calib = _write_images(tmp_path / "calib", range(3))
    calls: list[tuple[int, int]] = []
    quantize_int8(
        fp32_onnx,
        tmp_path / "q.onnx",
        Int8Options(calib=calib, cache_dir=tmp_path / "c", target=target),
        on_image=lambda d, t: calls.append((d, t)),
    )
    assert calls[0] == (0, 3)  # the total before ModelOpt / ONNX Runtime prepare the model
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1] == (3, 3)
    assert {d for d, _ in calls} == {0, 1, 2, 3}  # image by image, not only at the end


@pytest.mark.slow
def test_benchmark_reports_runs_per_backend(fp32_onnx: Path) -> None:
    from danet_deploy.evaluate.benchmark import benchmark
    from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner

    seen: list[tuple[int, str, int, int]] = []
    runners = [OnnxRuntimeRunner(fp32_onnx, name="a"), OnnxRuntimeRunner(fp32_onnx, name="b")]
    image = np.zeros((64, 128, 3), np.uint8)
    result = benchmark(runners, image, warmup=1, iterations=3, on_runs=lambda *call: seen.append(call))
    assert all("error" not in r for r in result["backends"])
    assert [call for call in seen if call[2] == 4] == [(0, "a", 4, 4), (1, "b", 4, 4)]  # each backend's end
    assert [call[0] for call in seen] == sorted(call[0] for call in seen)
