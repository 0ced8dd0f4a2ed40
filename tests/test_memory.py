"""Full resolution in bounded memory: the exact memory-efficient references, attention evaluated in query blocks for
checks, streamed probes and calibration, the memory plan's refusal, and progress a log can show.

The tiny model's attention maps are 64 KiB; the `small_blocks` fixture lowers the limits so that every check
blocks them as it blocks the 4 GiB maps of a 1024x2048 input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from danet_deploy.artifact import onnxruntime_session
from danet_deploy.bounded_ort import query_blocks as bounded
from danet_deploy.bounded_ort.query_blocks import bounded_model
from danet_deploy.bounded_ort.segments import SegmentedRun
from danet_deploy.cli import app
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.graph.shapes import infer_shapes
from danet_deploy.model import DANet, PositionAttention, memory_efficient_attention
from danet_deploy.model import danet as danet_module
from danet_deploy.onnx_export import ExportOptions, export_onnx
from danet_deploy.options import Fp16Options, Int8Options
from danet_deploy.precision import bounded_calibration, convert_fp16, quantize_int8
from danet_deploy.precision.fp16 import fp16_check_session, fp16_session
from danet_deploy.precision.probes import ActivationProbe, MagnitudeProbe, activation_tensors
from danet_deploy.progress import PeriodicLines, duration
from danet_deploy.simplify import SimplifyOptions, simplify_model
from danet_deploy.steps import export as export_step
from danet_deploy.versions import MemoryBound

from .conftest import TINY

N = 128  # queries of the tiny model at 64x128 (8 x 16)
MAP = N * N * 4


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks block every attention in blocks of 16 queries; PyTorch too; calibration holds 64 KiB at a time."""
    monkeypatch.setattr(bounded, "CHECK_ATTENTION_BYTES", 0)
    monkeypatch.setattr(bounded, "BLOCK_BYTES", 16 * N * 4)
    monkeypatch.setattr(danet_module, "QUERY_CHUNK_BYTES", 16 * N * 4)
    monkeypatch.setattr(bounded_calibration, "CALIBRATION_SEGMENT_BYTES", 64 << 10)


def _image_batch(size: tuple[int, int] = (64, 128), seed: int = 3) -> np.ndarray:
    from danet_deploy.data.preprocess import normalize

    return normalize(generate_scene(seed, *size).image, TINY)


def _attention_maps(model: onnx.ModelProto, queries: int) -> list[str]:
    """Top-level tensors shaped like attention maps ([..., queries, queries])."""
    return [n for n, s in infer_shapes(model).items() if len(s) >= 3 and s[-2:] == [queries, queries]]


# the PyTorch reference ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_memory_efficient_pam_equals_the_model_as_trained(tiny_model: DANet) -> None:
    x = torch.from_numpy(np.concatenate([_image_batch((72, 136), s) for s in (1, 2)]))  # N = 9 x 17 = 153
    with torch.no_grad():
        trained = tiny_model(x)
    with torch.no_grad(), memory_efficient_attention(tiny_model, max_bytes=7 * 153 * 4):
        blocked = tiny_model(x)
        assert tiny_model.head.pam.last_block == 7  # 22 blocks, the last one partial
    torch.testing.assert_close(blocked, trained, rtol=1e-5, atol=1e-5)
    assert tiny_model.head.pam.block_bytes is None  # restored: the model computes as trained again


def test_pam_in_query_blocks_equals_the_full_map_on_long_rows() -> None:
    torch.manual_seed(4)
    pam = PositionAttention(64).eval()
    with torch.no_grad():
        pam.gamma.fill_(0.8)
    x = torch.randn(1, 64, 48, 64) * 3  # N = 3072 keys per softmax row
    with torch.no_grad():
        full = pam(x)
        pam.block_bytes = 100 * 3072 * 4
        blocked = pam(x)
    assert pam.last_block == 100
    torch.testing.assert_close(blocked, full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_export_checks_parity_against_the_blocked_reference(
    tiny_model: DANet, tmp_path: Path, small_blocks: None
) -> None:
    record = export_onnx(
        tiny_model,
        TINY,
        tmp_path / "m.onnx",
        ExportOptions(),
        generate_scene(1, 64, 128).image,
        check_session=export_step.parity_session,
    )
    (parity,) = record.parity
    assert parity.passed and parity.shape == (1, 3, 64, 128)
    assert parity.onnx_evaluation.startswith("attention in query blocks of 16 (exact")
    assert parity.reference == "PAM in query blocks of 16 (exact)"
    assert _attention_maps(onnx.load(str(tmp_path / "m.onnx")), N)  # the file keeps PAM as trained


# attention in query blocks --------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["naive", "mha", "onnx-attention"])
def test_checks_evaluate_every_attention_form_in_query_blocks_exactly(
    fp32_onnx: Path, form: str, small_blocks: None
) -> None:
    model = onnx.load(str(fp32_onnx))
    if form != "naive":
        model, _ = simplify_model(model, SimplifyOptions(attention=form), images=[generate_scene(5, 64, 128).image])
    x = _image_batch()
    as_written = onnxruntime_session(model).run(["logits"], {"image": x})[0]
    checked, evaluation, _ = bounded_model(model)
    assert (evaluation.blocked, evaluation.block) == (1, 16)
    assert evaluation.describe().startswith("attention in query blocks of 16 (exact")
    assert "Scan" in {n.op_type for n in checked.graph.node} and not _attention_maps(checked, N)
    got = onnxruntime_session(checked).run(["logits"], {"image": x})[0]
    np.testing.assert_allclose(got, as_written, rtol=1e-5, atol=1e-5)
    assert _attention_maps(model, N) or form == "onnx-attention"  # the model itself is unchanged


@pytest.mark.slow
def test_queries_that_no_block_divides_are_padded(
    tiny_model: DANet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "odd.onnx"
    export_onnx(tiny_model, TINY, path, ExportOptions(input_size=(72, 136)), generate_scene(2, 72, 136).image)
    model = onnx.load(str(path))  # N = 153 = 9 x 17: no divisor near 8
    monkeypatch.setattr(bounded, "CHECK_ATTENTION_BYTES", 0)
    monkeypatch.setattr(bounded, "BLOCK_BYTES", 8 * 153 * 4)
    checked, evaluation, _ = bounded_model(model)
    assert evaluation.block == 8 and {"Pad", "Slice", "Scan"} <= {n.op_type for n in checked.graph.node}
    x = _image_batch((72, 136))
    expected = onnxruntime_session(model).run(["logits"], {"image": x})[0]
    np.testing.assert_allclose(onnxruntime_session(checked).run(["logits"], {"image": x})[0], expected, 1e-5, 1e-5)


def test_attention_that_fits_runs_as_written(fp32_onnx: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    checked, evaluation, _ = bounded_model(model)
    assert checked is model and evaluation.blocked == 0 and evaluation.describe() == "as written"
    assert evaluation.bytes_as_written == 2 * MAP  # energy and softmax of the one PAM (CAM is C x C)


def test_fp16_checks_block_attention_through_casts_and_rounding(
    fp32_onnx: Path, tmp_path: Path, small_blocks: None
) -> None:
    path, _ = convert_fp16(fp32_onnx, tmp_path / "m.fp16.onnx", Fp16Options(plain=True))
    x = _image_batch()
    session, evaluation = fp16_check_session(path)
    assert evaluation is not None and evaluation.blocked == 1
    got = session.run(["logits"], {"image": x})[0]
    expected = fp16_session(path, bounded=False).run(["logits"], {"image": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999


# streamed probes and calibration ---------------------------------------------------------------------------


@pytest.mark.parametrize("blocked", [False, True])
def test_magnitude_probe_equals_fetching_every_tensor(
    fp32_onnx: Path, blocked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = onnx.load(str(fp32_onnx))
    if blocked:
        monkeypatch.setattr(bounded, "CHECK_ATTENTION_BYTES", 0)
        monkeypatch.setattr(bounded, "BLOCK_BYTES", 16 * N * 4)
    feed = {"image": _image_batch()}
    tensors = activation_tensors(model)
    full = ActivationProbe(model, tensors).run(feed)
    probe = MagnitudeProbe(model)
    assert probe.evaluation.blocked == int(blocked)
    streamed = probe.run(feed)
    assert set(streamed) == set(tensors)
    for name in tensors:  # the attention maps included: reduced per query block when blocked
        assert streamed[name] == pytest.approx(float(np.abs(full[name]).max()), rel=1e-5)


def test_segmented_run_returns_the_tensors_of_the_whole_model(fp32_onnx: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    tensors = ["image", *activation_tensors(model)]
    feed = {"image": _image_batch()}
    full = {"image": feed["image"], **ActivationProbe(model, tensors[1:]).run(feed)}
    run = SegmentedRun(model, tensors, 256 << 10)
    assert len(run.segments) > 3
    seen: dict[str, np.ndarray] = {}
    for values in run.run(feed):
        assert sum(v.nbytes for v in values.values()) <= 256 << 10 or len(values) == 1
        seen.update(values)
    assert set(seen) == set(tensors)
    for name in tensors:
        np.testing.assert_allclose(seen[name], full[name], rtol=1e-5, atol=1e-5)


def _scales(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: inits[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tensorrt", "ort"])
def test_bounded_calibration_gives_the_scales_of_whole_model_calibration(
    fp32_onnx: Path, tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_precision import _write_images

    calib = _write_images(tmp_path / "calib", range(3))
    options = Int8Options(calib=calib, count=3, recalibrate=True, cache_dir=tmp_path / "cache", target=target)
    whole, _ = quantize_int8(fp32_onnx, tmp_path / "whole.onnx", options)
    calls: list[int] = []
    original = SegmentedRun.__init__

    def counted(self: SegmentedRun, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        calls.append(len(self.segments))

    monkeypatch.setattr(SegmentedRun, "__init__", counted)
    monkeypatch.setattr(bounded, "CHECK_ATTENTION_BYTES", 0)
    monkeypatch.setattr(bounded, "BLOCK_BYTES", 16 * N * 4)
    monkeypatch.setattr(bounded_calibration, "CALIBRATION_SEGMENT_BYTES", 64 << 10)
    streamed, _ = quantize_int8(fp32_onnx, tmp_path / "streamed.onnx", options)
    assert calls and calls[0] > 3  # the entropy calibrator ran in segments
    expected, got = _scales(whole), _scales(streamed)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5)


# the memory plan --------------------------------------------------------------------------------------------


def _cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def no_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("danet_deploy.memory_plan.memory_bound", lambda: MemoryBound(1 << 20, "cgroup v1 test"))


@pytest.mark.parametrize("command", ["export", "simplify", "quantize", "verify", "benchmark"])
def test_a_plan_that_does_not_fit_stops_with_exit_2_before_the_work(
    command: str, tiny_ckpt: Path, fp32_onnx: Path, city_data: Path, tmp_path: Path, no_memory: None
) -> None:
    out = tmp_path / "out.onnx"
    args = {
        "export": ["export", tiny_ckpt, "-o", out],
        "simplify": ["simplify", fp32_onnx, "-o", out, "--target", "ort"],
        "quantize": ["quantize", fp32_onnx, "-o", out, "--int8", "--calib", city_data],
        "verify": [
            "verify",
            "--ckpt",
            tiny_ckpt,
            "--onnx",
            fp32_onnx,
            "--data",
            city_data,
            "--json",
            tmp_path / "r.json",
        ],
        "benchmark": ["benchmark", "--onnx", fp32_onnx, "--json", tmp_path / "r.json"],
    }[command]
    result = _cli(*args)
    assert result.exit_code == 2, result.output
    assert "memory plan for" in result.output and "needs an estimated" in result.output
    assert "1.0 MiB is available (cgroup v1 test) (--force tries anyway)" in result.output
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_force_goes_on_with_a_plan_that_does_not_fit(fp32_onnx: Path, tmp_path: Path, no_memory: None) -> None:
    out = tmp_path / "out.onnx"
    result = _cli("simplify", fp32_onnx, "-o", out, "--target", "ort", "--force")
    assert result.exit_code == 0, result.output
    assert "memory plan for simplify" in result.output and out.is_file()


def test_the_plan_grows_with_the_input_and_blocks_large_attention() -> None:
    from danet_deploy.memory_plan import export_plan

    small, full = (export_plan(190 << 20, 1, size, True, 19) for size in ((512, 1024), (1024, 2048)))
    assert full.peak.bytes > small.peak.bytes
    check = {s.step: s for s in full.steps}["parity: ONNX Runtime"]
    assert check.detail == "attention in query blocks" and check.bytes < 8 << 30  # not the 8 GiB of the maps


def test_verify_plans_the_float64_reference_run_of_the_fp32_gate() -> None:
    """The FP32 noise floor runs the reference in float64 once: the plan holds that step, twice the FP32 run's
    activations and weights, and only with a PyTorch reference."""
    from danet_deploy.memory_plan import ModelFacts, verify_plan

    pixels = 1024 * 2048
    facts = ModelFacts(190 << 20, pixels, 0, 8 << 30, "attention in query blocks", pixels * 19 * 4)
    with_reference = {s.step: s for s in verify_plan(190 << 20, [facts], (1024, 2048)).steps}
    float64 = with_reference["FP32 noise: the reference in float64 on one image"]
    assert float64.bytes > with_reference["backends on each image"].bytes - 2 * (190 << 20)
    assert "FP32 noise: the reference in float64 on one image" not in {
        s.step for s in verify_plan(None, [facts], (1024, 2048)).steps
    }


# progress in logs -------------------------------------------------------------------------------------------


def test_progress_in_logs_is_periodic_lines_with_an_eta() -> None:
    now = [0.0]
    lines: list[str] = []
    task = PeriodicLines("calibrating", 8, lines.append, interval=10.0, clock=lambda: now[0])
    for step in range(1, 9):
        now[0] = step * 4.0  # 4 s per image
        task.update()
    task.update(0, description="checking against FP32")
    task.finish()
    assert lines[0] == "calibrating: started (0/8)"
    assert lines[1:4] == [
        "calibrating: 3/8 (38%), 12s elapsed, ETA 20s",
        "calibrating: 6/8 (75%), 24s elapsed, ETA 8s",
        "checking against FP32: 8/8 (100%), 32s elapsed",
    ]
    assert lines[-1] == "checking against FP32: 8/8 (100%), 32s elapsed; finished" and len(lines) == 5
    assert duration(3725) == "1h02m" and duration(65) == "1m05s"


def test_cli_in_a_log_prints_counted_progress(fp32_onnx: Path, tmp_path: Path) -> None:
    from .test_precision import _write_images

    calib = _write_images(tmp_path / "calib", range(2))
    result = _cli(
        "quantize", fp32_onnx, "-o", tmp_path / "q.onnx", "--int8", "--calib", calib, "--cache-dir", tmp_path / "c"
    )
    assert result.exit_code == 0, result.output
    assert "INT8 Q/DQ for TensorRT (ModelOpt): calibrating (entropy, images): started" in result.output
    assert ": 2/2 (100%)" in result.output and "; finished" in result.output
