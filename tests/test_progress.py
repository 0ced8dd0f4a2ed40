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


@pytest.mark.slow
def test_the_budget_search_counts_each_steps_calibration_images(fp32_onnx: Path, tmp_path: Path) -> None:
    """`quantize --max-miou-drop`: every step calibrates again, and each one counts its images from 0 to the total
    (cached steps too), so the bar never sits at an unknown count."""
    from danet_deploy.options import BudgetOptions
    from danet_deploy.precision import quantize_with_budget

    calib = _write_images(tmp_path / "calib", range(3))
    calls: list[tuple[int, int]] = []
    options = Int8Options(
        calib=calib,
        method="max",
        cache_dir=tmp_path / "c",
        budget=BudgetOptions(data=str(tmp_path), max_miou_drop=1.0, max_steps=2),
    )
    with pytest.raises(Exception, match="no INT8 mix met the mIoU budget"):
        quantize_with_budget(
            fp32_onnx,
            tmp_path / "b.onnx",
            options,
            evaluate=lambda p: 50.0 if Path(p) == fp32_onnx else 40.0,  # never within budget: every step runs
            eval_images=3,
            on_image=lambda d, t: calls.append((d, t)),
        )
    starts = [i for i, call in enumerate(calls) if call == (0, 3)]
    assert len(starts) >= 2 and calls[-1] == (3, 3)  # every step from 0 of 3 to 3 of 3
    for begin, end in zip(starts, [*starts[1:], len(calls)]):
        assert {d for d, _ in calls[begin:end]} == {0, 1, 2, 3}
