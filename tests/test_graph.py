"""Graph passes: each rewrite is exact, dynamic axes survive, sites are recognised, the lint finds what it should."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from danet_deploy.data.synthetic import generate_scene
from danet_deploy.errors import BadInputError
from danet_deploy.graph.cam import simplify_cam
from danet_deploy.graph.cleanup import cleanup
from danet_deploy.graph.lint import attention_memory, lint
from danet_deploy.graph.pam import pam_to_blocked, pam_to_mha, pam_to_onnx_attention, value_heads
from danet_deploy.graph.sites import find_sites
from danet_deploy.model import DANet
from danet_deploy.onnx_export import ExportOptions, export_onnx, read_metadata
from danet_deploy.simplify import SimplifyOptions, simplify_model

from .conftest import TINY

IMAGE = generate_scene(5, 96, 160).image


def ort_logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x})[0]


@pytest.fixture(scope="module")
def dynamic_onnx(dynamic_fp32_onnx: Path) -> onnx.ModelProto:
    return onnx.load(str(dynamic_fp32_onnx))


@pytest.fixture(scope="module")
def static_onnx(tiny_model: DANet, tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    path = tmp_path_factory.mktemp("graph") / "static.onnx"
    export_onnx(tiny_model, TINY, path, ExportOptions(input_size=(61, 99)), IMAGE)  # N = 8 x 13 = 104
    return onnx.load(str(path))


def forms(model: onnx.ModelProto) -> set[tuple[str, str]]:
    return {(s.kind, s.form) for s in find_sites(model)}


def test_sites_of_a_raw_export(dynamic_onnx: onnx.ModelProto) -> None:
    assert forms(dynamic_onnx) == {("pam", "naive"), ("cam", "rowmax")}


@pytest.mark.parametrize("rewrite", ["cam", "mha", "onnx-attention"])
def test_rewrites_are_exact_and_keep_dynamic_axes(dynamic_onnx: onnx.ModelProto, rewrite: str) -> None:
    rng = np.random.default_rng(0)
    model = simplify_cam(cleanup(copy.deepcopy(dynamic_onnx)))[0]
    if rewrite == "mha":
        model, count = pam_to_mha(model)
    elif rewrite == "onnx-attention":
        model, count = pam_to_onnx_attention(model)
    else:
        count = 1
    assert count == 1
    onnx.checker.check_model(model, full_check=True)
    expected_pam = {"cam": "naive", "mha": "mha", "onnx-attention": "onnx-attention"}[rewrite]
    assert forms(model) == {("pam", expected_pam), ("cam", "clean")}
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    for shape in [(1, 3, 64, 128), (2, 3, 45, 67), (1, 3, 33, 200)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        ref = ort_logits(dynamic_onnx, x)
        got = ort_logits(model, x)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_pass_checks_compare_graphs_not_onnx_runtime_kernels(static_onnx: onnx.ModelProto) -> None:
    """The onnx-attention rewrite converts the model to opset 23, which ONNX Runtime's NCHWc layout pass leaves out:
    with that pass the check would measure two Conv kernels' rounding (R101 1024x2048: twice the tolerance)."""
    from danet_deploy.artifact import onnxruntime_session

    converted = onnx.version_converter.convert_version(copy.deepcopy(static_onnx), 23)
    x = np.random.default_rng(2).standard_normal((1, 3, 61, 99), dtype=np.float32)
    logits = [onnxruntime_session(m, layout=False).run(["logits"], {"image": x})[0] for m in (static_onnx, converted)]
    assert np.array_equal(logits[0], logits[1])  # same graph, same kernels: the same numbers
    _, report = simplify_model(copy.deepcopy(static_onnx), SimplifyOptions(attention="onnx-attention"))
    check = next(p for p in report.passes if p.name == "pam-onnx-attention")
    assert check.max_abs_diff == 0.0  # the Attention node is PAM exactly; nothing else changed


def test_cam_rewrite_leaves_a_clean_matmul_softmax_matmul(dynamic_onnx: onnx.ModelProto) -> None:
    model = simplify_cam(copy.deepcopy(dynamic_onnx))[0]
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceMax" not in ops and "Sub" not in ops and "Expand" not in ops
    site = next(s for s in find_sites(model) if s.kind == "cam")
    nodes = {n.name: n for n in model.graph.node}
    assert [nodes[name].op_type for name in site.nodes] == ["Neg", "MatMul", "Softmax", "MatMul"]


@pytest.mark.parametrize("block", [16, 64, 1024])
def test_blocked_pam_is_exact_with_padding(static_onnx: onnx.ModelProto, block: int) -> None:
    rng = np.random.default_rng(1)
    model, count = pam_to_blocked(copy.deepcopy(static_onnx), block)  # 104 = 6 x 16 + 8: padded blocks
    assert count == 1 and forms(model) >= {("pam", "blocked")}
    onnx.checker.check_model(model, full_check=True)
    for _ in range(2):
        x = rng.standard_normal((1, 3, 61, 99), dtype=np.float32)
        assert np.abs(ort_logits(model, x) - ort_logits(static_onnx, x)).max() < 1e-4


def test_blocked_needs_static_shapes(dynamic_onnx: onnx.ModelProto) -> None:
    with pytest.raises(BadInputError, match="static shapes"):
        simplify_model(copy.deepcopy(dynamic_onnx), SimplifyOptions(attention="blocked"))


@pytest.mark.parametrize(
    ("target", "static", "form"),
    [
        ("trt8.6", True, "mha"),
        ("trt10.3", False, "mha"),
        ("trt10.14", False, "onnx-attention"),
        ("trt11", True, "onnx-attention"),
        ("ort", True, "blocked"),
        ("ort", False, "naive"),
        (None, True, "naive"),
    ],
)
def test_target_defaults(
    dynamic_onnx: onnx.ModelProto, static_onnx: onnx.ModelProto, target: str | None, static: bool, form: str
) -> None:
    model, report = simplify_model(
        copy.deepcopy(static_onnx if static else dynamic_onnx), SimplifyOptions(target=target)
    )
    assert report.attention == form and report.reason
    assert [p.name for p in report.passes][:2] == ["cleanup", "cam"]
    assert all(p.max_abs_diff <= p.tolerance for p in report.passes)
    pam = next(s for s in find_sites(model) if s.kind == "pam")
    assert pam.form == form
    meta = read_metadata(model)
    assert meta["graph"]["attention"] == form and meta["model_config"]["depth"] == TINY.depth


def test_simplified_graph_has_fewer_nodes(dynamic_onnx: onnx.ModelProto) -> None:
    model, _ = simplify_model(copy.deepcopy(dynamic_onnx))
    assert len(model.graph.node) < len(dynamic_onnx.graph.node)


def test_a_pass_beyond_tolerance_fails_and_names_itself(
    dynamic_onnx: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch
) -> None:
    from danet_deploy import simplify as simplify_module
    from danet_deploy.errors import CheckFailedError

    def wrong_cam(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
        model, count = simplify_cam(model)
        neg = next(n for n in model.graph.node if n.op_type == "Neg")
        neg.op_type = "Identity"  # softmax(+E): a wrong rewrite
        return model, count

    monkeypatch.setattr(simplify_module, "simplify_cam", wrong_cam)
    with pytest.raises(CheckFailedError, match="pass cam"):
        simplify_model(copy.deepcopy(dynamic_onnx))


# --- lint on crafted graphs ----------------------------------------------------------------------------


def _single_op_model(node: onnx.NodeProto, inits: list[onnx.TensorProto], opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "crafted",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _codes(model: onnx.ModelProto, target: str, size: tuple[int, int] | None = None) -> set[str]:
    return {f.code for f in lint(model, target, size).findings if f.level == "error"}


def test_lint_resize_modes() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    cubic = helper.make_node("Resize", ["image", "", "scales"], ["logits"], name="up", mode="cubic")
    assert "resize-mode" in _codes(_single_op_model(cubic, [scales]), "trt10.3")
    odd = helper.make_node(
        "Resize",
        ["image", "", "scales"],
        ["logits"],
        name="up",
        mode="linear",
        coordinate_transformation_mode="half_pixel_symmetric",
    )
    assert "resize-coordinates" in _codes(_single_op_model(odd, [scales]), "trt10.3")
    good = helper.make_node(
        "Resize",
        ["image", "", "scales"],
        ["logits"],
        name="up",
        mode="linear",
        coordinate_transformation_mode="align_corners",
    )
    assert _codes(_single_op_model(good, [scales]), "trt10.3") == set()


def test_lint_qdq_zero_point() -> None:
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    for zero, expect in ((5, True), (0, False)):
        zp = numpy_helper.from_array(np.array(zero, np.int8), "zp")
        node = helper.make_node("QuantizeLinear", ["image", "scale", "zp"], ["logits"], name="q")
        assert ("qdq-zero-point" in _codes(_single_op_model(node, [scale, zp]), "trt11")) == expect


def test_lint_opset_for_tensorrt_8_6() -> None:
    node = helper.make_node("Relu", ["image"], ["logits"], name="relu")
    assert "opset" in _codes(_single_op_model(node, [], opset=18), "trt8.6")
    assert "opset" not in _codes(_single_op_model(node, [], opset=17), "trt8.6")
    assert "opset" not in _codes(_single_op_model(node, [], opset=18), "trt10.3")


def test_lint_attention_op_needs_10_14(dynamic_onnx: onnx.ModelProto) -> None:
    model, _ = pam_to_onnx_attention(simplify_cam(copy.deepcopy(dynamic_onnx))[0])
    assert "attention-op" in _codes(model, "trt10.3", (64, 128))
    assert "attention-op" not in _codes(model, "trt10.14", (64, 128))


@pytest.mark.slow
def test_lint_tensor_size_and_softmax_outer_at_2048x2048(dynamic_onnx: onnx.ModelProto) -> None:
    report = lint(dynamic_onnx, "trt10.3", (2048, 2048))  # N = 65536: N x N > 2^31
    errors = [f for f in report.findings if f.code == "tensor-size" and f.level == "error"]
    assert errors and "4,294,967,296" in errors[0].message
    assert any(f.code == "softmax-outer" for f in report.findings)
    # In the MHA form TensorRT can fuse the attention, so the same tensor is only a warning.
    mha, _ = pam_to_mha(simplify_cam(copy.deepcopy(dynamic_onnx))[0])
    mha_report = lint(mha, "trt10.3", (2048, 2048))
    assert not [f for f in mha_report.findings if f.code == "tensor-size" and f.level == "error"]
    assert [f for f in mha_report.findings if f.code == "tensor-size" and "fuses" in f.message]
    assert not lint(dynamic_onnx, "trt10.3", (512, 1024)).findings


def test_lint_mha_fusion_rules(dynamic_onnx: onnx.ModelProto) -> None:
    naive = lint(dynamic_onnx, "trt10.3", (64, 128))
    pam = next(s for s in naive.sites if s.kind == "pam")
    assert pam.mha_fusable is False and "3-D" in pam.mha_reasons[0]
    mha, _ = pam_to_mha(simplify_cam(copy.deepcopy(dynamic_onnx))[0])
    site = next(s for s in lint(mha, "trt10.3", (64, 128)).sites if s.kind == "pam")
    # The tiny model has C = 16, so a query/key head of 2: below TensorRT's minimum head size of 16.
    assert site.form == "mha" and site.channels == 16 and site.mha_fusable is False
    assert any("head size 2" in r for r in site.mha_reasons) and any("FP32" in r for r in site.mha_reasons)


def test_lint_needs_an_input_size_for_dynamic_models(dynamic_onnx: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match="give an input size"):
        lint(dynamic_onnx, "trt10.3")


def test_attention_memory_estimates_for_danet_r50_at_1024x2048() -> None:
    n = 128 * 256
    by_form = {m.form: m.bytes for m in attention_memory(1, n, 512)}
    assert value_heads(512) == 8
    assert by_form["naive"] == 2 * n * n * 4  # 8 GiB: energy + softmax
    assert by_form["blocked"] == 2 * 1024 * n * 4  # 256 MiB
    assert by_form["mha"] == 8 * by_form["naive"]


@pytest.mark.slow
def test_cli_simplify_inspect_and_export_simplify(tiny_ckpt: Path, tmp_path: Path) -> None:
    from .support.cli import assert_one_line_error, run

    static = tmp_path / "s.onnx"
    result = run("export", tiny_ckpt, "-o", static, "--input-size", "64x128", "--simplify", "--target", "trt10.3")
    assert result.returncode == 0, result.stderr
    assert "PAM form 'mha'" in result.stdout and "max abs diff" in result.stdout
    assert [p for p in tmp_path.iterdir()] == [static]  # the raw export did not stay behind
    # Rewriting an already rewritten PAM into another form is refused; from the raw export it works.
    assert_one_line_error(run("simplify", static, "-o", tmp_path / "x.onnx", "--attention", "blocked"), 2, "mha form")
    raw = tmp_path / "raw.onnx"
    assert run("export", tiny_ckpt, "-o", raw, "--input-size", "64x128").returncode == 0
    blocked = tmp_path / "b.onnx"
    result = run("simplify", raw, "-o", blocked, "--attention", "blocked", "--block", "32")
    assert result.returncode == 0, result.stderr
    assert forms(onnx.load(str(blocked))) >= {("pam", "blocked")}
    report_path = tmp_path / "inspect.json"
    result = run("inspect", static, "--target", "trt10.3", "--json", report_path)
    assert result.returncode == 0, result.stderr
    assert "attention sites" in result.stdout and "mha" in result.stdout
    dynamic = tmp_path / "d.onnx"
    assert run("export", tiny_ckpt, "-o", dynamic, "--dynamic").returncode == 0
    assert_one_line_error(
        run("simplify", dynamic, "-o", tmp_path / "x.onnx", "--target", "ort", "--attention", "blocked"),
        2,
        "static shapes",
    )
    assert_one_line_error(run("inspect", dynamic), 2, "--input-size")
    assert not (tmp_path / "x.onnx").exists()
    result = run("inspect", dynamic, "--input-size", "2048x2048", "--strict")
    assert result.returncode == 1 and "tensor-size" in result.stdout
