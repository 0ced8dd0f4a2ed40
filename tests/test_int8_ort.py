"""INT8 for ONNX Runtime's CPU provider: integer kernels, what stays float, CPU profiles, cache, budget, CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from PIL import Image

from danet_deploy.artifact import precision_label
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.engine.plan import BuildOptions, plan_build
from danet_deploy.errors import BadInputError
from danet_deploy.graph.sites import find_sites
from danet_deploy.onnx_export import OnnxModel, Precision
from danet_deploy.options import BudgetOptions, Int8Options
from danet_deploy.precision import quantize_int8, quantize_with_budget
from danet_deploy.precision.int8 import Int8Target
from danet_deploy.precision.int8_ort import CPU_PROFILES, cpu_profile, detect_cpu_profile, float_nodes, kernel_choices
from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner

from .support.cli import assert_one_line_error, run

pytestmark = pytest.mark.filterwarnings("ignore::danet_deploy.precision.CalibrationWarning")

CALIB_IMAGES = 6


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calib") / "images"
    folder.mkdir()
    for seed in range(200, 200 + CALIB_IMAGES):
        Image.fromarray(generate_scene(seed, 64, 128).image).save(folder / f"scene_{seed:03d}.png")
    return folder


@pytest.fixture(scope="module")
def ort_int8(fp32_onnx: Path, calib_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("ort")
    return quantize_int8(
        fp32_onnx,
        work / "tiny.int8.ort.onnx",
        Int8Options(calib=calib_dir, method="max", target="ort", cpu="x86-vnni", cache_dir=work / "cache"),
    )


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def test_backbone_convs_run_as_integer_kernels_and_the_rules_keep_attention_and_logits_float(
    ort_int8: tuple, fp32_onnx: Path
) -> None:
    out, record = ort_int8
    model = onnx.load(str(out))
    source = onnx.load(str(fp32_onnx))
    kept = float_nodes(source)
    attention = {n for s in find_sites(source) for n in s.nodes}
    assert set(kept["attention"]) == attention and len(attention) >= 9
    convs = [n.name for n in source.graph.node if n.op_type == "Conv"]
    assert kept["classifier"][-1] == convs[-1]  # the walk back from the logits ends at the last Conv

    # What ONNX Runtime makes of it: every Conv but the classifier is a QLinearConv.
    kernels = {k.node: k for k in kernel_choices(out)}
    assert {kernels[c].kernel for c in convs[:-1]} == {"QLinearConv"}
    assert not kernels[convs[-1]].integer and kernels[convs[-1]].kernel == "Conv"
    assert [k.node for k in record.integer_kernels] == [k.node for k in kernels.values() if k.integer]

    # Nothing computed by the attention or the classifier is quantized; Softmax outputs stay float.
    consumers = _consumers(model)
    by_name = {n.name: n for n in model.graph.node}
    for name in [*attention, *kept["classifier"]]:
        for tensor in by_name[name].output:
            assert all(c.op_type != "QuantizeLinear" for c in consumers.get(tensor, [])), name
    # Weights: int8, per output channel, zero point 0; activations: uint8 (ONNX Runtime's x86 operand).
    inits = _inits(model)
    weight_dqs = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4
    ]
    assert weight_dqs
    for dq in weight_dqs:
        weight, scale, zero = (inits[i] for i in dq.input[:3])
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],) and not zero.any()
    activation_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_q and {inits[n.input[2]].dtype for n in activation_q} == {np.dtype(np.uint8)}
    # FP32 I/O and the agreement check against FP32.
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert record.agreement.nonfinite == 0 and record.agreement.label_agreement > 0.75


@pytest.mark.slow
def test_the_model_says_who_it_is_for(ort_int8: tuple, fp32_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    out, record = ort_int8
    model = OnnxModel.load(out)
    assert model.precision is Precision.INT8 and model.quantized_for == "onnxruntime"
    entry = model.metadata["precision"]
    assert entry["target"] == "onnxruntime" and entry["onnxruntime"]["cpu_profile"]["name"] == "x86-vnni"
    assert entry["onnxruntime"]["integer_kernels"] == [k.node for k in record.integer_kernels]
    runner = OnnxRuntimeRunner(out)
    assert runner.quantized_for == "onnxruntime" and runner.precision_label == "int8 (ONNX Runtime)"
    trt, _ = quantize_int8(
        fp32_onnx, tmp_path / "t.onnx", Int8Options(calib=calib_dir, method="max", cache_dir=tmp_path / "c")
    )
    assert OnnxModel.load(trt).quantized_for == "tensorrt"
    assert OnnxModel.load(fp32_onnx).quantized_for is None
    assert precision_label("fp16") == "fp16" and precision_label("int8", "tensorrt") == "int8 (TensorRT)"
    # A TensorRT engine cannot be built from it: uint8 activations with zero points.
    with pytest.raises(BadInputError, match="ONNX Runtime"):
        plan_build(out, BuildOptions(precision="int8"), "10.3")


def test_cpu_profiles_follow_the_instruction_set() -> None:
    assert detect_cpu_profile({"avx2", "avx512f", "avx512_vnni"}, "x86_64").name == "x86-vnni"
    assert detect_cpu_profile({"avx2", "avx_vnni"}, "x86_64").name == "x86-vnni"
    no_vnni = detect_cpu_profile({"avx2", "avx512f"}, "x86_64")
    assert no_vnni.name == "x86" and no_vnni.reduce_range
    assert detect_cpu_profile({"asimddp"}, "aarch64").name == "arm64"
    assert all(p.activation_type == "uint8" and p.weight_type == "int8" for p in CPU_PROFILES.values())
    assert cpu_profile("auto") == detect_cpu_profile()
    with pytest.raises(BadInputError, match="cpu banana: choose auto"):
        cpu_profile("banana")
    with pytest.raises(BadInputError, match="unknown INT8 target"):
        Int8Target.parse("gpu")
    assert Int8Target.parse("ort") is Int8Target.ONNXRUNTIME and Int8Target.parse("trt") is Int8Target.TENSORRT


def test_x86_without_vnni_gets_7_bit_weights(fp32_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    out, record = quantize_int8(
        fp32_onnx,
        tmp_path / "x86.onnx",
        Int8Options(calib=calib_dir, method="max", target="ort", cpu="x86", cache_dir=tmp_path / "cache"),
    )
    assert record.cpu_profile.reduce_range
    inits = _inits(onnx.load(str(out)))
    weights = [v for v in inits.values() if v.dtype == np.int8 and v.ndim == 4]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


@pytest.mark.slow
def test_each_target_has_its_own_cache_entry_and_a_hit_reproduces_the_model(
    fp32_onnx: Path, calib_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    base = Int8Options(calib=calib_dir, method="max", cache_dir=cache)
    _, trt = quantize_int8(fp32_onnx, tmp_path / "trt.onnx", base)
    first, ort = quantize_int8(fp32_onnx, tmp_path / "a.onnx", replace(base, target="ort", cpu="x86-vnni"))
    again, hit = quantize_int8(fp32_onnx, tmp_path / "b.onnx", replace(base, target="ort", cpu="x86-vnni"))
    _, arm = quantize_int8(fp32_onnx, tmp_path / "c.onnx", replace(base, target="ort", cpu="arm64"))
    assert not trt.cache_hit and not ort.cache_hit and hit.cache_hit and not arm.cache_hit
    assert len({trt.cache_key, ort.cache_key, arm.cache_key}) == 3 and hit.cache_key == ort.cache_key
    graph = lambda p: onnx.load(str(p)).graph.SerializeToString()  # noqa: E731
    assert graph(first) == graph(again)


@pytest.mark.slow
def test_calibration_reports_each_image(fp32_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    quantize_int8(
        fp32_onnx,
        tmp_path / "p.onnx",
        Int8Options(calib=calib_dir, method="entropy", target="ort", cpu="x86-vnni", cache_dir=tmp_path / "cache"),
        on_image=lambda done, total: calls.append((done, total)),
    )
    # (0, total) first: the bar shows the total before the first image is done.
    assert calls == [(i, CALIB_IMAGES) for i in range(CALIB_IMAGES + 1)]


def _quantized_convs(path: str | Path) -> set[str]:
    model = onnx.load(str(path))
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dq}


@pytest.mark.slow
def test_budget_search_works_for_the_onnxruntime_target(fp32_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    fake_miou: Callable[[Path], float] = lambda p: 50.0 - 0.1 * len(_quantized_convs(p))  # noqa: E731
    out, budget = quantize_with_budget(
        fp32_onnx,
        tmp_path / "b.onnx",
        Int8Options(
            calib=calib_dir,
            method="max",
            cache_dir=tmp_path / "cache",
            target="ort",
            cpu="x86-vnni",
            budget=BudgetOptions(data="fake", max_miou_drop=1.0),
        ),
        evaluate=fake_miou,
        eval_images=3,
    )
    assert budget.int8.target is Int8Target.ONNXRUNTIME and len(budget.steps) > 1 and budget.steps[-1].passed
    assert not _quantized_convs(out) & set(budget.steps[-1].excluded)
    assert OnnxModel.load(out).quantized_for == "onnxruntime"


def test_bad_options_are_exit_2_before_any_work(fp32_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    cases = [
        (["--int8", "--target", "gpu"], "--target gpu: choose from tensorrt, onnxruntime"),
        (["--int8", "--target", "ort", "--cpu", "sparc"], "--cpu sparc: choose from auto, x86-vnni, x86, arm64"),
        (["--int8", "--cpu", "x86"], "--cpu x86: applies to the onnxruntime target only"),
        (["--fp16", "--target", "ort"], "--target apply to --int8 only"),
        (["--int8", "--target", "ort", "--exclude", "node_[conv"], "not a valid regular expression"),
    ]
    for extra, message in cases:
        result = run("quantize", fp32_onnx, "--calib", calib_dir, "-o", out, *extra)
        assert_one_line_error(result, 2, message)
        assert not out.exists()


@pytest.mark.slow
def test_cli_quantize_inspect_verify_and_benchmark_label_the_onnxruntime_model(
    fp32_onnx: Path, calib_dir: Path, city_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiny.int8.ort.onnx"
    result = run(
        "quantize",
        fp32_onnx,
        "--int8",
        "--calib",
        calib_dir,
        "--method",
        "max",
        "--target",
        "ort",
        "--cache-dir",
        tmp_path / "cache",
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert "INT8 QDQ for ONNX Runtime" in result.stdout and "integer kernels" in result.stdout
    inspected = run("inspect", out, "--target", "ort", "--json", tmp_path / "i.json")
    assert inspected.returncode == 0, inspected.stderr
    assert "int8 (ONNX Runtime)" in inspected.stdout and "QLinearConv" in inspected.stdout
    info = json.loads((tmp_path / "i.json").read_text())
    convs = [k for k in info["onnxruntime_kernels"] if k["op_type"] == "Conv"]
    assert info["precision"] == "int8 (ONNX Runtime)"
    assert [k["integer"] for k in convs] == [True] * (len(convs) - 1) + [False]  # all but the classifier
    verified = run(
        "verify",
        "--onnx",
        fp32_onnx,
        "--onnx",
        out,
        "--data",
        city_data,
        "--json",
        tmp_path / "v.json",
        "--threshold",
        "int8.min_pixel_agreement=0",
        "--threshold",
        "int8.max_miou_drop=100",
    )
    assert verified.returncode == 0, verified.stderr
    assert "int8 (ONNX Runtime)" in verified.stdout
    backends = json.loads((tmp_path / "v.json").read_text())["backends"]
    assert [b["quantized_for"] for b in backends] == [None, "onnxruntime"]
    assert [b["precision"] for b in backends] == ["fp32", "int8"]
    bench = run("benchmark", "--onnx", out, "--warmup", "1", "--iterations", "2", "--json", tmp_path / "b.json")
    assert bench.returncode == 0, bench.stderr
    assert "int8 (ONNX Runtime)" in bench.stdout
    assert json.loads((tmp_path / "b.json").read_text())["backends"][0]["quantized_for"] == "onnxruntime"


def test_a_tensorrt_quantization_leaves_onnx_runtime_quantizer_as_it_was(
    fp32_onnx: Path, calib_dir: Path, tmp_path: Path
) -> None:
    """ModelOpt edits ONNX Runtime's operator registries; left edited, the ONNX Runtime target quantized Relu and
    MaxPool differently after a TensorRT quantization in the same process (as the demo runs them)."""
    from onnxruntime.quantization import registry

    before = [dict(t) for t in (registry.QLinearOpsRegistry, registry.QDQRegistry, registry.IntegerOpsRegistry)]
    quantize_int8(
        fp32_onnx,
        tmp_path / "t.onnx",
        Int8Options(calib=calib_dir, method="max", cache_dir=tmp_path / "cache", recalibrate=True),
    )
    after = [dict(t) for t in (registry.QLinearOpsRegistry, registry.QDQRegistry, registry.IntegerOpsRegistry)]
    assert after == before
