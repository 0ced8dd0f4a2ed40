"""The GPU CI gate: with DANET_DEPLOY_REQUIRE_TENSORRT=1 the TensorRT tests fail where they would skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support.tensorrt_gate import REQUIRE_VARIABLE, TensorRTGate, tensorrt_required

ROOT = Path(__file__).resolve().parents[1]


def test_gate_rules() -> None:
    assert tensorrt_required({REQUIRE_VARIABLE: "1"}) and not tensorrt_required({REQUIRE_VARIABLE: "0"})
    assert not tensorrt_required({})
    gate = TensorRTGate(required=True)
    gate.report("t.py::cpu", {"slow": 1}, "setup", "skipped")  # not a tensorrt test: ignored
    assert gate.failure(tensorrt_selected=True) == f"{REQUIRE_VARIABLE}=1 but no tensorrt test ran"
    assert gate.failure(tensorrt_selected=False) is None
    gate.report("t.py::gpu", {"tensorrt": 1}, "call", "passed")
    assert gate.failure(tensorrt_selected=True) is None
    gate.report("t.py::gpu2", {"tensorrt": 1}, "setup", "skipped")
    assert gate.failure(tensorrt_selected=False) == f"{REQUIRE_VARIABLE}=1 but 1 tensorrt test(s) skipped: t.py::gpu2"
    relaxed = TensorRTGate(required=False)
    relaxed.report("t.py::gpu2", {"tensorrt": 1}, "setup", "skipped")
    assert relaxed.failure(tensorrt_selected=True) is None


def _pytest(*args: str, require: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_VARIABLE}
    if require:
        env[REQUIRE_VARIABLE] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tensorrt_tests_fail_instead_of_skipping_when_required() -> None:
    from danet_deploy.engine.system import running_system
    from danet_deploy.errors import DeployError

    try:
        running_system()
        pytest.skip("TensorRT and a GPU are here: the tensorrt tests would run, not skip")
    except DeployError:
        pass
    relaxed = _pytest("-m", "tensorrt", "tests/test_tensorrt_gpu.py", require=False)
    assert relaxed.returncode == 0, relaxed.stdout[-2000:]
    assert "5 skipped" in relaxed.stdout and "needs TensorRT and an NVIDIA GPU" in relaxed.stdout
    required = _pytest("-m", "tensorrt", "tests/test_tensorrt_gpu.py", require=True)
    assert required.returncode == 1, required.stdout[-2000:]
    summary = required.stdout.splitlines()[-1]
    assert "5 errors" in summary and "skipped" not in summary  # each test fails in its setup
    assert f"{REQUIRE_VARIABLE}=1 but TensorRT is not installed" in required.stdout
