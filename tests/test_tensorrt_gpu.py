"""End-to-end TensorRT: FP32, FP16 and INT8 engines of the demo model built, audited, verified and benchmarked.

Runs where TensorRT and an NVIDIA GPU exist (the GPU CI jobs: `pytest -m tensorrt -rs`). Elsewhere each test is
skipped with the reason (no TensorRT, or no GPU visible to CUDA), unless DANET_DEPLOY_REQUIRE_TENSORRT=1 is set
(GPU CI and the container): then each fails with that reason, so a GPU job cannot pass by skipping.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from danet_deploy import api
from danet_deploy.checkpoints import load_checkpoint
from danet_deploy.data.bundled import DEMO_CHECKPOINT, DEMO_DATA, sample_image
from danet_deploy.engine.plan import BuildOptions
from danet_deploy.engine.system import running_system
from danet_deploy.errors import DeployError
from danet_deploy.onnx_export import ExportOptions, export_onnx

from .support.tensorrt_gate import REQUIRE_VARIABLE, tensorrt_required

ROOT = Path(__file__).resolve().parents[1]
WANTED = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}


def _missing() -> str | None:
    try:
        running_system()  # imports TensorRT and asks the CUDA runtime for the GPU
    except DeployError as exc:
        return str(exc)
    return None


MISSING = _missing()
REQUIRED = tensorrt_required()
pytestmark = [pytest.mark.tensorrt]
if MISSING is not None and not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason=f"needs TensorRT and an NVIDIA GPU: {MISSING}"))


@pytest.fixture(autouse=True)
def _tensorrt_present() -> None:
    if MISSING is not None:  # only reached when REQUIRED: skipping is not allowed
        pytest.fail(f"{REQUIRE_VARIABLE}=1 but {MISSING}", pytrace=False)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    loaded = load_checkpoint(DEMO_CHECKPOINT)
    path = tmp_path_factory.mktemp("trt") / "demo.onnx"
    # TensorRT 8.6 (the 8.6 job, JetPack 6.0) parses opset <= 17: the readiness lint refuses anything newer.
    trt8 = MISSING is None and running_system().tensorrt_version.startswith("8.")
    opset = {"opset": 17} if trt8 else {}
    export_onnx(loaded.model, loaded.config, path, ExportOptions(**opset), sample_image(), loaded.provenance())
    return path


@pytest.fixture(scope="module")
def engines(demo_onnx: Path) -> dict[str, Path]:
    """Built lazily, once per precision, through the user-level step (plan, FP16/Q/DQ ONNX, build, audit)."""
    return {}


def _engine(engines: dict[str, Path], demo_onnx: Path, precision: str) -> Path:
    if precision not in engines:
        options = BuildOptions(precision=precision, calib=str(ROOT / "calibration" / "images"))
        out = demo_onnx.with_name(f"demo.{precision}.engine")
        result = api.build_engine(demo_onnx, out, options)
        assert result.output == out and out.is_file() and Path(f"{out}.json").is_file()
        engines[precision] = out
    return engines[precision]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_demo_engine_is_audited_and_meets_verify_thresholds(
    engines: dict[str, Path], demo_onnx: Path, precision: str
) -> None:
    engine = _engine(engines, demo_onnx, precision)
    sidecar = api.inspect(engine).sidecar
    layers = sidecar.engine_layers
    assert sidecar.precision == precision and layers["compute_layers"].get(WANTED[precision]), layers
    assert layers["failures"] == [] and all(p == "FP32" for p in layers["pinned_fp32"].values()), layers
    result = api.verify(DEMO_DATA, checkpoint=DEMO_CHECKPOINT, engines=[engine])
    trt = result.report.backends[1]
    assert result.report.passed, trt.failures
    assert trt.nonfinite_values == 0 and trt.precision == precision
    ((name, recorded),) = result.engines
    assert name == f"tensorrt:{engine.name}" and recorded.engine_sha256 == sidecar.engine_sha256


def test_inspect_reads_the_engine_layers_with_tensorrt(engines: dict[str, Path], demo_onnx: Path) -> None:
    engine = _engine(engines, demo_onnx, "fp16")
    result = api.inspect(engine)
    assert result.live is not None and result.live.failures == [] and result.notes == []
    assert result.live.compute_layers == result.sidecar.engine_layers["compute_layers"]


def test_benchmark_of_an_engine_names_the_gpu(engines: dict[str, Path], demo_onnx: Path) -> None:
    from danet_deploy.runners.tensorrt import TensorRTRunner

    engine = _engine(engines, demo_onnx, "fp16")
    gpu = running_system()
    with TensorRTRunner(engine) as runner:
        assert runner.infer(sample_image()).shape[1] == 19
        assert runner.last_inference_time() is not None and runner.device == gpu.device
    result = api.benchmark(engines=[engine], options=api.BenchmarkOptions(warmup=1, iterations=3))
    (row,) = result.results["backends"]
    assert "error" not in row, row
    assert row["kind"] == "tensorrt" and row["device"] == gpu.device and row["precision"] == "fp16"
    assert gpu.device in result.results["device"] and gpu.gpu_name != "NVIDIA"
    assert row["threads"] is None and 0 < row["median_ms"] <= row["end_to_end_median_ms"]
