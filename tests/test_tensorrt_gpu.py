"""End-to-end TensorRT: FP16 and INT8 engines of the demo model, checked like `verify` checks them.

Runs where TensorRT and an NVIDIA GPU exist (the GPU CI job: `pytest -m tensorrt -rs`); skips with the
reason everywhere else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from danet_deploy.checkpoints import load_checkpoint
from danet_deploy.data.bundled import DEMO_CHECKPOINT, DEMO_DATA, sample_image
from danet_deploy.data.datasets import open_dataset
from danet_deploy.engine.build import build_engine, running_system
from danet_deploy.engine.plan import BuildOptions, plan_build
from danet_deploy.errors import DeployError
from danet_deploy.evaluate.verify import verify
from danet_deploy.export import ExportOptions, export_onnx
from danet_deploy.runners.pytorch import PyTorchRunner

ROOT = Path(__file__).resolve().parents[1]


def _missing() -> str | None:
    try:
        running_system()  # imports TensorRT and queries the GPU
    except DeployError as exc:
        return str(exc)
    return None


MISSING = _missing()
pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(MISSING is not None, reason=f"needs TensorRT and an NVIDIA GPU: {MISSING}"),
]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_demo_engine_meets_verify_thresholds(tmp_path: Path, precision: str) -> None:
    from danet_deploy.runners.tensorrt import TensorRTRunner

    loaded = load_checkpoint(DEMO_CHECKPOINT)
    onnx_path = tmp_path / "demo.onnx"
    export_onnx(loaded.model, loaded.config, onnx_path, ExportOptions(), sample_image(), loaded.provenance())
    options = BuildOptions(precision=precision, calib=str(ROOT / "calibration" / "images"))
    plan = plan_build(onnx_path, options, running_system().tensorrt_version)
    engine = tmp_path / f"demo.{precision}.engine"
    sidecar = build_engine(plan, engine)
    assert sidecar.precision == precision and Path(f"{engine}.json").is_file()
    runner = TensorRTRunner(engine)  # reads the sidecar only; the engine is deserialized at activation
    assert not runner.is_active and runner.device == f"GPU: {sidecar.gpu_name}" and runner.precision == precision
    report = verify(open_dataset(DEMO_DATA), [PyTorchRunner(loaded.model, loaded.config), runner], loaded.config)
    trt = report.backends[1]
    assert report.passed, trt.failures
    assert trt.nonfinite_values == 0
    assert not runner.is_active  # verify deactivated it


def test_benchmark_of_an_engine_times_the_gpu(tmp_path: Path) -> None:
    from danet_deploy.evaluate.benchmark import benchmark
    from danet_deploy.runners.tensorrt import TensorRTRunner

    loaded = load_checkpoint(DEMO_CHECKPOINT)
    onnx_path = tmp_path / "demo.onnx"
    export_onnx(loaded.model, loaded.config, onnx_path, ExportOptions(), sample_image(), loaded.provenance())
    plan = plan_build(onnx_path, BuildOptions(precision="fp16"), running_system().tensorrt_version)
    engine = tmp_path / "demo.fp16.engine"
    build_engine(plan, engine)
    runner = TensorRTRunner(engine)
    with runner:
        assert runner.infer(sample_image()).shape[1] == loaded.config.num_classes
        assert runner.last_inference_time() is not None
    (row,) = benchmark([runner], sample_image(), warmup=1, iterations=3)["backends"]
    assert "error" not in row, row
    assert row["kind"] == "tensorrt" and row["device"] == runner.device and row["precision"] == "fp16"
    assert row["threads"] is None and 0 < row["median_ms"] <= row["end_to_end_median_ms"]
