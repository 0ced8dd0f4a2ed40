"""The runner contract: cheap constructors, activation lifecycle, backend-only timing, pickling, benchmark rows."""

from __future__ import annotations

import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from danet_deploy.artifact import InputSpec, Precision
from danet_deploy.config import ModelConfig
from danet_deploy.engine.sidecar import EngineSidecar, write_sidecar
from danet_deploy.errors import BadInputError
from danet_deploy.runners import OnnxRuntimeRunner, PyTorchRunner, Runner, TensorRTRunner, activated, cpu_device

from .conftest import TINY

IMAGE = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_onnx(fp32_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's static tiny export, in this module's own folder."""
    return Path(shutil.copy(fp32_onnx, tmp_path_factory.mktemp("onnx") / "tiny.onnx"))


class SlowPrepareRunner(Runner):
    """No backend: a slow preprocessing step and an instant backend call."""

    kind = "dummy"

    def __init__(self, delay: float = 0.0):
        super().__init__("slow-prepare")
        self.delay = delay
        self.activations = 0

    @property
    def precision(self) -> Precision:
        return Precision.FP32

    @property
    def device(self) -> str:
        return cpu_device()

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec()

    @property
    def config(self) -> ModelConfig:
        return TINY

    def activate_impl(self) -> None:
        self.activations += 1

    def prepare(self, image: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return super().prepare(image)

    def infer_impl(self, feed: np.ndarray) -> np.ndarray:
        return np.zeros((1, self.config.num_classes, *feed.shape[2:]), np.float32)


def test_onnxruntime_runner_loads_at_activation(tiny_onnx: Path) -> None:
    runner = OnnxRuntimeRunner(tiny_onnx)
    assert not runner.is_active and runner.session is None and not hasattr(runner, "proto")
    assert runner.name == "onnxruntime:tiny.onnx" and runner.kind == "onnxruntime"
    assert runner.precision is Precision.FP32 and runner.device == cpu_device() and runner.config == TINY
    assert runner.input_spec.static_size == (64, 128) and runner.input_spec.layout == "NCHW"
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer(IMAGE)
    with runner as active:
        assert active is runner and runner.is_active and runner.session is not None
        runner.activate()  # idempotent
        logits = runner.infer(IMAGE)
        assert logits.shape == (1, TINY.num_classes, 64, 128) and logits.dtype == np.float32
        assert runner.last_inference_time() is not None and runner.last_inference_time() > 0
    assert not runner.is_active and runner.session is None and runner.last_inference_time() is None
    runner.deactivate()  # idempotent


def test_activated_leaves_already_active_runners_active(tiny_model, tiny_onnx: Path) -> None:
    onnx_runner, torch_runner = OnnxRuntimeRunner(tiny_onnx), PyTorchRunner(tiny_model, TINY)
    onnx_runner.activate()
    with activated([onnx_runner, torch_runner]) as runners:
        assert runners == [onnx_runner, torch_runner] and torch_runner.is_active
        outputs = [r.infer(IMAGE) for r in runners]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-3)
    assert onnx_runner.is_active and not torch_runner.is_active
    with pytest.raises(ZeroDivisionError), activated([onnx_runner, torch_runner]):
        1 / 0  # noqa: B018 - deactivates what it activated on errors too
    assert onnx_runner.is_active and not torch_runner.is_active
    onnx_runner.deactivate()


def test_last_inference_time_excludes_preprocessing() -> None:
    runner = SlowPrepareRunner(delay=0.2)
    with runner:
        started = time.perf_counter()
        logits = runner.infer(IMAGE)
        wall = time.perf_counter() - started
        backend = runner.last_inference_time()
    assert logits.shape == (1, TINY.num_classes, 64, 128) and runner.activations == 1
    assert wall >= 0.2 and backend is not None and backend < 0.05
    assert runner.last_inference_time() is None  # cleared by deactivation


def test_inactive_runners_pickle(tiny_model, tiny_ckpt: Path, tiny_onnx: Path) -> None:
    reference = PyTorchRunner(tiny_model, TINY)
    runners = [OnnxRuntimeRunner(tiny_onnx), PyTorchRunner.from_checkpoint(tiny_ckpt), reference]
    copies = [pickle.loads(pickle.dumps(r)) for r in runners]
    assert [c.name for c in copies] == ["onnxruntime:tiny.onnx", "pytorch", "pytorch"]
    with activated([reference, *copies]):
        expected = reference.infer(IMAGE)
        for copy in copies:
            np.testing.assert_allclose(copy.infer(IMAGE), expected, atol=1e-3)
        with pytest.raises(TypeError, match="deactivate"):
            pickle.dumps(copies[0])


def test_pytorch_runner_from_checkpoint_loads_at_activation(tiny_ckpt: Path) -> None:
    runner = PyTorchRunner.from_checkpoint(tiny_ckpt, overrides={"align_corners": True})
    assert runner.loaded is None and runner.input_spec.static_size is None and runner.precision is Precision.FP32
    with pytest.raises(RuntimeError, match="activated"):
        runner.config  # noqa: B018 - only known once the checkpoint is read
    with runner:
        assert runner.loaded is not None and runner.config.align_corners is True
        assert runner.config.num_classes == TINY.num_classes
    assert runner.loaded is None and runner.config.align_corners is True  # the config stays known
    assert PyTorchRunner(tiny_ckpt).checkpoint == tiny_ckpt  # a path as the source: the same as from_checkpoint
    with pytest.raises(ValueError, match="needs its config"):
        PyTorchRunner(torch.nn.Identity())
    in_memory = PyTorchRunner.from_model(torch.nn.Identity(), TINY, name="identity")
    assert in_memory.name == "identity" and in_memory.checkpoint is None and in_memory.config == TINY


def test_tensorrt_runner_reads_only_the_sidecar(tmp_path: Path) -> None:
    """Construction reads the sidecar (no TensorRT, no GPU): device, precision and input spec come from it."""
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a plan")
    spec = InputSpec(layout="NHWC", dtype="uint8", batch=1, height=64, width=128)
    write_sidecar(
        engine,
        EngineSidecar(
            tensorrt_version="10.3.0",
            gpu_name="Orin",
            compute_capability="8.7",
            cuda_version="12.6",
            precision="int8",
            build_path="strongly typed",
            profiles=[{"image": [[1, 64, 128, 3]] * 3}],
            source_onnx="m.onnx",
            source_onnx_sha256="a" * 64,
            network_onnx_sha256="a" * 64,
            model_config=TINY.to_dict(),
            build_options={},
            build_seconds=1.0,
            engine_sha256="b" * 64,
            created="2026-11-21T00:00:00+00:00",
            input_spec=spec.to_dict(),
        ),
    )
    runner = TensorRTRunner(engine)
    assert not runner.is_active and runner.name == "tensorrt:m.engine" and runner.kind == "tensorrt"
    assert runner.device == "GPU: Orin (where it was built)"  # the GPU it runs on is known once active
    assert runner.precision is Precision.INT8 and runner.threads is None
    assert runner.input_spec == spec and runner.config == TINY
    assert pickle.loads(pickle.dumps(runner)).input_spec == spec
    with pytest.raises(BadInputError, match="no such engine"):
        TensorRTRunner(tmp_path / "missing.engine")


@pytest.mark.slow
def test_benchmark_rows_come_from_the_runner_contract(tiny_model, tiny_onnx: Path) -> None:
    from danet_deploy.evaluate.benchmark import benchmark

    runners = [OnnxRuntimeRunner(tiny_onnx, threads=1), PyTorchRunner(tiny_model, TINY, threads=1)]
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)  # resized to the ONNX size
    result = benchmark(runners, image, warmup=1, iterations=3)
    rows = result["backends"]
    assert [r.get("error") for r in rows] == [None, None]
    assert [r["name"] for r in rows] == ["onnxruntime:tiny.onnx", "pytorch"]
    assert [r["kind"] for r in rows] == ["onnxruntime", "pytorch"]
    assert [r["device"] for r in rows] == [r.device for r in runners] and result["device"] == cpu_device()
    assert [r["precision"] for r in rows] == ["fp32", "fp32"] and [r["threads"] for r in rows] == [1, 1]
    for row in rows:
        assert row["input_shape"] == [1, 64, 128, 3] and row["iterations"] == 3
        assert 0 < row["median_ms"] <= row["end_to_end_median_ms"]  # compute alone is part of each end-to-end call
        assert row["median_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["peak_rss_mib"] > 0
    assert not any(r.is_active for r in runners)
    runners[0].activate()
    try:
        with pytest.raises(BadInputError, match="deactivate"):
            benchmark(runners, image)
    finally:
        runners[0].deactivate()


def test_benchmark_header_names_each_gpu_the_backends_ran_on() -> None:
    from danet_deploy.evaluate.benchmark import devices

    rows = [
        {"device": cpu_device()},
        {"device": "GPU: Orin (SM 8.7, 61.4 GiB)"},
        {"error": "no GPU", "exit_code": 3},
        {"device": "GPU: Orin (SM 8.7, 61.4 GiB)"},
    ]
    assert devices(rows) == f"{cpu_device()}, GPU: Orin (SM 8.7, 61.4 GiB)"
    assert devices(rows[:1]) == cpu_device()


def _flushing() -> bool:
    """Whether this thread flushes denormals now (1e-40 survives a multiply only when it does not)."""
    return bool(torch.tensor([1e-40]).mul(1.0).item() == 0.0)


def test_onnxruntime_runner_flushes_denormals_only_while_it_runs(tiny_onnx: Path) -> None:
    from danet_deploy.artifact import onnxruntime_session
    from danet_deploy.runners.onnxruntime import denormals_flushed

    assert not _flushing()
    with denormals_flushed():
        assert _flushing()
    assert not _flushing()
    with OnnxRuntimeRunner(tiny_onnx) as runner:
        got = runner.infer(IMAGE)
    assert not _flushing()  # restored after the call
    feed = runner.input_spec.prepare(IMAGE, runner.config)
    plain = onnxruntime_session(tiny_onnx).run(["logits"], {"image": feed})[0]
    np.testing.assert_allclose(got, plain, rtol=0, atol=1e-5)  # flushing values below 1.2e-38 changes no logit


def test_verify_with_a_checkpoint_runner_as_reference_takes_its_config(tiny_ckpt: Path, city_data: Path) -> None:
    """The library call `verify(dataset, [PyTorchRunner.from_checkpoint(...), ...])` without a config: the
    reference's config (classes, ignore index) exists only once the checkpoint is loaded at activation."""
    from danet_deploy.data.datasets import open_dataset
    from danet_deploy.evaluate.verify import verify

    runner = PyTorchRunner.from_checkpoint(tiny_ckpt)
    report = verify(open_dataset(city_data), [runner])
    assert report.passed and report.labeled and report.model["num_classes"] == TINY.num_classes
    assert not runner.is_active
