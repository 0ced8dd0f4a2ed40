"""The CLI as a user runs it: export, verify, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from danet_deploy.data.bundled import DEMO_CHECKPOINT

from .support.cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def exported(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    result = run("export", tiny_ckpt, "-o", out, "--input-size", "64x128")
    assert result.returncode == 0, result.stderr
    assert "max abs diff" in result.stdout and out.is_file()
    return out


@pytest.mark.slow
def test_verify_passes_and_writes_the_json_report(
    exported: Path, tiny_ckpt: Path, city_data: Path, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    result = run("verify", "--ckpt", tiny_ckpt, "--onnx", exported, "--data", city_data, "--json", report_path)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] is True and report["images"] == 3
    names = [b["name"] for b in report["backends"]]
    assert names == ["pytorch", "onnxruntime:tiny.onnx"]
    for b in report["backends"]:
        assert {"name", "miou", "per_class_iou", "pixel_agreement", "max_abs_diff", "mean_abs_diff"} <= set(b)
        assert len(b["per_class_iou"]) == 19
    pt, ort = report["backends"]
    assert ort["miou"] == pytest.approx(pt["miou"], abs=1e-6)
    assert ort["pixel_agreement"] >= 0.9999 and ort["max_abs_diff"] < 1e-3


@pytest.mark.slow
def test_verify_fails_with_exit_1_when_an_onnx_model_disagrees(
    exported: Path, tiny_ckpt: Path, city_data: Path, tmp_path: Path
) -> None:
    model = onnx.load(str(exported))
    # Shift the fused classifier's bias for one class: a wrong-weights model that still runs.
    bias = next(i for i in model.graph.initializer if numpy_helper.to_array(i).shape == (19,))
    values = numpy_helper.to_array(bias).copy()
    values[0] += 5.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    report_path = tmp_path / "r.json"
    result = run("verify", "--ckpt", tiny_ckpt, "--onnx", broken, "--data", city_data, "--json", report_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "parity check failed" in result.stderr
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["backends"][1]["passed"] is False
    assert report["backends"][1]["max_abs_diff"] > 1.0


@pytest.mark.slow
def test_export_bad_inputs_give_one_line_and_write_nothing(tmp_path: Path, tiny_ckpt: Path) -> None:
    out = tmp_path / "o.onnx"
    assert_one_line_error(run("export", tmp_path / "nope.pth", "-o", out), 2, "nope.pth", "no such checkpoint")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_one_line_error(run("export", corrupt, "-o", out), 2, "corrupt.pth", "not a readable PyTorch checkpoint")
    assert_one_line_error(run("export", tiny_ckpt, "-o", out, "--input-size", "big"), 2, "--input-size")
    assert_one_line_error(run("export", tiny_ckpt, "-o", out, "--layout", "caffe"), 2, "--layout caffe: choose")
    assert_one_line_error(run("export", tiny_ckpt, "-o", out, "--opset", "9"), 2, "opset 9")
    assert list(tmp_path.iterdir()) == [corrupt]


@pytest.mark.slow
def test_malicious_checkpoint_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    code = (
        "import os, torch\n"
        "class Evil:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'state_dict': {{}}, 'x': Evil()}}, {str(evil)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    result = run("export", evil, "-o", tmp_path / "o.onnx")
    assert_one_line_error(result, 2, "evil.pth", "refused")
    assert not marker.exists()
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.slow
def test_verify_bad_inputs(exported: Path, tmp_path: Path, tiny_ckpt: Path) -> None:
    assert_one_line_error(run("verify", "--onnx", exported, "--data", tmp_path / "none"), 2, "no such data folder")
    assert_one_line_error(run("verify", "--data", tmp_path), 2, "--ckpt and/or --onnx")
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("hello")
    assert_one_line_error(run("verify", "--onnx", not_onnx, "--data", tmp_path), 2, "x.onnx")


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="bundled demo checkpoint not built yet")
def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = run("demo", "--workdir", workdir, "--calib-images", "16")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((workdir / "report.json").read_text())
    assert report["passed"] and report["images"] == 24
    backends = {b["name"]: b for b in report["backends"]}
    assert list(backends) == [
        "pytorch",
        "onnxruntime:demo.onnx",
        "onnxruntime:demo.ort.onnx",
        "onnxruntime:demo.fp16.onnx",
        "onnxruntime:demo.int8.onnx",
        "onnxruntime:demo.int8.ort.onnx",
    ]
    assert [b["precision"] for b in backends.values()] == ["fp32", "fp32", "fp32", "fp16", "int8", "int8"]
    assert [b["quantized_for"] for b in backends.values()][-2:] == ["tensorrt", "onnxruntime"]
    assert "int8 (TensorRT)" in result.stdout and "int8 (ONNX Runtime)" in result.stdout
    assert backends["pytorch"]["miou"] > 60
    assert "PAM form 'blocked'" in result.stdout
    page = (workdir / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "data:image/png;base64," in page
    assert "PASSED" in (workdir / "report.md").read_text()
    assert len(json.loads((workdir / "benchmark.json").read_text())["backends"]) == 6


@pytest.mark.slow
def test_benchmark_reports_latency_per_backend(exported: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run(
        "benchmark", "--ckpt", tiny_ckpt, "--onnx", exported, "--warmup", "1", "--iterations", "3", "--json", out
    )
    assert result.returncode == 0, result.stderr
    backends = json.loads(out.read_text())["backends"]
    assert [b["kind"] for b in backends] == ["pytorch", "onnxruntime"]
    for b in backends:
        assert (
            b["iterations"] == 3 and b["warmup"] == 1 and b["input_shape"] == [1, 64, 128, 3]
        )  # the static ONNX size, for both
        assert 0 < b["median_ms"] <= b["p99_ms"] and b["throughput_ips"] > 0 and b["peak_rss_mib"] > 50
    assert_one_line_error(run("benchmark", "--onnx", tmp_path / "none.onnx"), 2, "none.onnx")
    assert_one_line_error(run("benchmark"), 2, "benchmark needs at least one backend")


@pytest.mark.slow
def test_quantize_option_errors(exported: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    assert_one_line_error(run("quantize", exported, "-o", out), 2, "choose one of --fp16 and --int8")
    assert_one_line_error(run("quantize", exported, "-o", out, "--int8"), 2, "--int8 needs --calib")
    assert_one_line_error(run("quantize", exported, "-o", out, "--int8", "--plain"), 2, "--plain apply to --fp16")
    assert_one_line_error(run("quantize", exported, "-o", out, "--fp16", "--method", "max"), 2, "apply to --int8")
    assert_one_line_error(
        run("quantize", exported, "-o", out, "--int8", "--calib", tmp_path, "--max-miou-drop", "1"), 2, "go together"
    )
    assert_one_line_error(run("quantize", exported, "-o", out, "--int8", "--calib", tmp_path / "none"), 2, "none")
    assert not out.exists()


def test_no_command_writes_over_its_input(fp32_onnx: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    exported = Path(shutil.copy(fp32_onnx, tmp_path / "model" / "tiny.onnx"))
    ckpt = tmp_path / "ck.pth"
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    before = ckpt.read_bytes(), exported.read_bytes()
    assert_one_line_error(run("export", ckpt, "-o", ckpt), 2, "ck.pth", "also an input")
    assert_one_line_error(run("quantize", exported, "--fp16", "-o", exported), 2, "also an input")
    data = tmp_path / "data"
    data.mkdir()
    assert_one_line_error(run("verify", "--onnx", exported, "--data", data, "--json", exported), 2, "also an input")
    assert (ckpt.read_bytes(), exported.read_bytes()) == before
