"""Head variants (Shuffle Attention, spatial gate, SE) through the whole toolchain: config, model, checkpoint,
export, graph passes per target, inspect, FP16/INT8 within the verify thresholds, and the bundled SA demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from danet_deploy.checkpoints import load_checkpoint, save_checkpoint
from danet_deploy.config import ModelConfig
from danet_deploy.data.bundled import DEMO_DATA, DEMO_SA_CHECKPOINT, sample_images
from danet_deploy.data.datasets import open_dataset
from danet_deploy.data.preprocess import normalize, resize_image
from danet_deploy.errors import BadInputError
from danet_deploy.evaluate.verify import verify
from danet_deploy.graph.group_norm import check_model, to_decomposed, to_group_normalization
from danet_deploy.graph.lint import lint
from danet_deploy.graph.shuffle import shuffle_permutation
from danet_deploy.graph.sites import find_light_sites
from danet_deploy.model import build_danet
from danet_deploy.model.light_attention import ShuffleAttention, SqueezeExcitation, channel_shuffle
from danet_deploy.onnx_export import ExportOptions, export_onnx, onnxruntime_session
from danet_deploy.options import Fp16Options, Int8Options
from danet_deploy.precision import convert_fp16, quantize_int8
from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner
from danet_deploy.runners.pytorch import PyTorchRunner
from danet_deploy.simplify import SimplifyOptions, simplify_model

from .conftest import TINY, randomize
from .support.cli import run
from .support.upstream_reference import SELayer, sa_layer

ROOT = Path(__file__).resolve().parents[1]
SA = TINY.with_overrides(position_attention="shuffle", sa_groups=2)  # head channels 16: 4 per half-group
GATES = TINY.with_overrides(position_attention="spatial-gate", channel_attention="se", se_reduction=4)
VARIANTS = {"shuffle+cam": SA, "spatial-gate+se": GATES, "pam+se": TINY.with_overrides(channel_attention="se")}


def _model(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = randomize(build_danet(config), seed)
    with torch.no_grad():  # upstream inits make gates constant; random gates make every path show
        for name, p in model.head.named_parameters():
            if name.startswith(("spatial_gate.", "se.")):
                p.copy_(torch.randn(p.shape) * 0.5)
    return model.eval()


def _image(size: tuple[int, int] = (64, 128), index: int = 0) -> np.ndarray:
    return resize_image(sample_images(index + 1)[index], size)


def _run_onnx(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime_session(model if isinstance(model, onnx.ModelProto) else str(model))
    return session.run(["logits"], {"image": x})[0]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _shuffle_transposes(model: onnx.ModelProto) -> list[list[int]]:
    """Perms of the Transposes that swap dims 1 and 2 (CAM's X^T is [0, 2, 1]: not a shuffle)."""
    perms = [list(helper.get_attribute_value(n.attribute[0])) for n in model.graph.node if n.op_type == "Transpose"]
    return [p for p in perms if p in ([0, 2, 1, 3], [0, 2, 1, 3, 4])]


@pytest.fixture(scope="module")
def sa_model() -> torch.nn.Module:
    return _model(SA)


@pytest.fixture(scope="module")
def sa_onnx(sa_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sa") / "sa.onnx"
    export_onnx(sa_model, SA, path, ExportOptions(), _image())
    return path


# config, modules, checkpoints ----------------------------------------------------------------------------


def test_variant_config_names_validation_and_old_configs() -> None:
    assert (SA.arch, SA.variant) == ("danet_r18w8_sa2", "shuffle(G=2)+cam")
    assert (GATES.arch, GATES.variant) == ("danet_r18w8_sg_se", "spatial-gate+se(r=4)")
    assert (TINY.arch, TINY.variant) == ("danet_r18w8", "pam+cam")
    with pytest.raises(ValueError, match="divisible by 2 \\* sa_groups"):
        TINY.with_overrides(position_attention="shuffle", sa_groups=3)  # 16 channels, 2G = 6
    with pytest.raises(ValueError, match="sa_groups >= 2"):
        TINY.with_overrides(position_attention="shuffle", sa_groups=1)
    with pytest.raises(ValueError, match="unknown position_attention 'linear'"):
        TINY.with_overrides(position_attention="linear")
    with pytest.raises(ValueError, match="unknown channel_attention"):
        TINY.with_overrides(channel_attention="eca")
    # Configs saved before the variants existed (head="danet") still load, as PAM + CAM.
    legacy = {k: v for k, v in TINY.to_dict().items() if k not in ("position_attention", "channel_attention")}
    assert ModelConfig.from_dict({**legacy, "head": "danet"}) == TINY


def test_shuffle_attention_and_se_match_the_reference_implementations() -> None:
    torch.manual_seed(0)
    ours, upstream = ShuffleAttention(32, groups=4), sa_layer(32, groups=4)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape))
    # SA-Net's parameter names are ours, so its checkpoints load as they are.
    upstream.load_state_dict(ours.state_dict())
    x = torch.randn(2, 32, 9, 13)
    torch.testing.assert_close(ours(x), upstream(x), rtol=0, atol=1e-6)
    assert ours(x).shape == x.shape
    # channel shuffle: output channel j * g + i is input channel i * (C / g) + j.
    y = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(y, 2).flatten().tolist() == shuffle_permutation(8, 2).astype(float).tolist()
    assert shuffle_permutation(8, 2).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]

    se, reference = SqueezeExcitation(32, reduction=4), SELayer(32, hidden=8)
    with torch.no_grad():
        reference.fc[0].weight.copy_(se.fc1.weight.flatten(1))
        reference.fc[0].bias.copy_(se.fc1.bias)
        reference.fc[2].weight.copy_(se.fc2.weight.flatten(1))
        reference.fc[2].bias.copy_(se.fc2.bias)
    torch.testing.assert_close(se(x), reference(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_checkpoints_record_the_variant_and_it_is_inferred_without_a_config(name: str, tmp_path: Path) -> None:
    config = VARIANTS[name]
    model = _model(config)
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "v.pth"))
    assert loaded.config == config
    # A bare state dict in our layout (no stored config): the variant comes from the module names and shapes.
    torch.save({"state_dict": model.state_dict()}, tmp_path / "bare.pth")
    bare = load_checkpoint(tmp_path / "bare.pth")
    for field in ("position_attention", "channel_attention", "sa_groups", "se_reduction"):
        if getattr(config, field) != getattr(ModelConfig(), field) or field.endswith("attention"):
            assert getattr(bare.config, field) == getattr(config, field), field
    x = torch.randn(1, 3, 64, 128)
    torch.testing.assert_close(bare.model(x), model(x))


# export ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize(("dynamic", "opset"), [(False, 18), (True, 18), (False, 17)])
def test_each_variant_exports_exactly(name: str, dynamic: bool, opset: int, tmp_path: Path) -> None:
    config = VARIANTS[name]
    model = _model(config)
    record = export_onnx(model, config, tmp_path / "m.onnx", ExportOptions(dynamic=dynamic, opset=opset), _image())
    assert record.opset == opset
    for parity in record.parity:  # dynamic exports are also checked at batch 2 and another size
        assert parity.max_abs_diff < 5e-5 and parity.label_agreement == 1.0, parity
    if dynamic:
        x = normalize(_image((40, 72), 1), config)
        expected = model(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(_run_onnx(tmp_path / "m.onnx", x), expected, rtol=0, atol=5e-5)


# graph passes ------------------------------------------------------------------------------------------


def _simplify_and_compare(model: torch.nn.Module, onnx_path: Path, **kwargs: Any) -> onnx.ModelProto:
    simplified, report = simplify_model(onnx.load(str(onnx_path)), SimplifyOptions(**kwargs), images=[_image()])
    check_model(simplified)  # also what simplify_file runs before writing
    x = normalize(_image(index=1), SA)
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_run_onnx(simplified, x), expected, rtol=0, atol=5e-5)
    assert report.attention == "none" and [p.name for p in report.passes][-1] == "channel-shuffle"
    return simplified


@pytest.mark.parametrize("target", ["ort", "trt10.3", "trt11"])
def test_group_normalization_for_targets_that_run_it(target: str, sa_model: torch.nn.Module, sa_onnx: Path) -> None:
    simplified = _simplify_and_compare(sa_model, sa_onnx, target=target)
    ops = _ops(simplified)
    assert "GroupNormalization" in ops and "InstanceNormalization" not in ops
    node = next(n for n in simplified.graph.node if n.op_type == "GroupNormalization")
    groups = helper.get_attribute_value(next(a for a in node.attribute if a.name == "num_groups"))
    assert groups == 4  # one group per channel of the spatial half: per-group == per-channel scale (opset 18)
    # Shuffle Attention's gate affine (sweight, sbias) is composed into the node's scale and bias.
    site = next(s for s in find_light_sites(simplified) if s.kind == "group-norm")
    assert site.form == "group-normalization" and len(site.nodes) == 1


@pytest.mark.slow
def test_decomposed_group_norm_for_tensorrt_8_6(sa_model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sa17.onnx"
    export_onnx(sa_model, SA, path, ExportOptions(opset=17), _image())
    simplified = _simplify_and_compare(sa_model, path, target="trt8.6")
    ops = _ops(simplified)
    assert "GroupNormalization" not in ops and "InstanceNormalization" not in ops and "Sqrt" in ops
    assert [s.form for s in find_light_sites(simplified) if s.kind == "group-norm"] == ["decomposed"]
    assert not [f for f in lint(simplified, "trt8.6").errors if f.code in ("group-norm", "opset")]
    with pytest.raises(BadInputError, match="opset >= 18"):
        simplify_model(onnx.load(str(path)), SimplifyOptions(group_norm="group-normalization"), images=[_image()])
    result = run("simplify", path, "-o", tmp_path / "out.onnx", "--group-norm", "group-normalization")
    assert result.returncode == 2 and "Traceback" not in result.stderr and not (tmp_path / "out.onnx").exists()
    assert f"{path}: GroupNormalization needs opset >= 18; this model is opset 17" in result.stderr


def test_group_norm_form_override_and_lint(sa_model: torch.nn.Module, sa_onnx: Path) -> None:
    decomposed = _simplify_and_compare(sa_model, sa_onnx, target="ort", group_norm="decomposed")
    assert "GroupNormalization" not in _ops(decomposed)
    with_gn = _simplify_and_compare(sa_model, sa_onnx, target="trt10.3")
    findings = lint(with_gn, "trt8.6").errors
    assert any(f.code == "group-norm" and "TensorRT >= 10.0" in f.message for f in findings)
    assert not [f for f in lint(with_gn, "trt10.3").findings if f.code == "group-norm"]


@pytest.mark.slow
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_group_norm_rewrites_are_exact_for_any_group_count(groups: int, tmp_path: Path) -> None:
    """GroupNorm with fewer groups than channels: opset 18 scales per group, so the per-channel affine follows."""
    torch.manual_seed(groups)
    norm = torch.nn.GroupNorm(groups, 8).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
        norm.bias.copy_(torch.randn(8))
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    module = torch.nn.Sequential(norm, torch.nn.ReLU())  # as in a network: the norm's output is not the graph's
    torch.onnx.export(
        module,
        (x,),
        str(tmp_path / "gn.onnx"),
        input_names=["image"],
        output_names=["logits"],
        opset_version=18,
        dynamo=True,
    )
    expected = module(x).detach().numpy()
    for rewrite in (to_group_normalization, to_decomposed):
        model, count = rewrite(onnx.load(str(tmp_path / "gn.onnx")))
        assert count == 1
        check_model(model)
        np.testing.assert_allclose(_run_onnx(model, x.numpy()), expected, rtol=0, atol=2e-5)
    gn, _ = to_group_normalization(onnx.load(str(tmp_path / "gn.onnx")))
    assert ("Mul" in _ops(gn)) == (groups != 8)  # per-channel affine only where per-group scales cannot carry it


@pytest.mark.slow
def test_shuffle_folds_into_the_next_conv_or_stays_one_reshape_transpose(
    sa_model: torch.nn.Module, sa_onnx: Path, tmp_path: Path
) -> None:
    raw = onnx.load(str(sa_onnx))
    assert any(s.kind == "channel-shuffle" for s in find_light_sites(raw))
    folded = _simplify_and_compare(sa_model, sa_onnx, target="ort")
    assert _shuffle_transposes(raw) == [[0, 2, 1, 3, 4]]
    assert _shuffle_transposes(folded) == [] and not any(s.kind == "channel-shuffle" for s in find_light_sites(folded))
    kept = _simplify_and_compare(sa_model, sa_onnx, target="ort", fold_shuffle=False)
    assert _shuffle_transposes(kept) == [[0, 2, 1, 3]]
    assert [s.form for s in find_light_sites(kept) if s.kind == "channel-shuffle"] == ["4-d"]
    # Dynamic shapes: the 4-D form takes its output shape from the graph, at any batch and size.
    path = tmp_path / "dyn.onnx"
    export_onnx(sa_model, SA, path, ExportOptions(dynamic=True), _image())
    dyn, _ = simplify_model(onnx.load(str(path)), SimplifyOptions(target="ort", fold_shuffle=False), images=[_image()])
    x = np.concatenate([normalize(_image((48, 80), i), SA) for i in range(2)])
    np.testing.assert_allclose(_run_onnx(dyn, x), sa_model(torch.from_numpy(x)).detach().numpy(), rtol=0, atol=5e-5)


@pytest.mark.slow
def test_inspect_lists_the_light_sites(tmp_path: Path) -> None:
    model = _model(GATES)
    path = tmp_path / "gates.onnx"
    export_onnx(model, GATES, path, ExportOptions(), _image())
    kinds = {(s.kind, s.form) for s in lint(onnx.load(str(path)), "trt10.3").sites}
    assert {("se", "gate"), ("spatial-gate", "gate")} <= kinds and not {k for k, _ in kinds} & {"pam"}
    result = run("inspect", path, "--target", "trt10.3", "--json", tmp_path / "i.json")
    assert result.returncode == 0, result.stderr
    assert "spatial-gate" in result.stdout and "position spatial-gate + channel se" in result.stdout
    sites = json.loads((tmp_path / "i.json").read_text())["sites"]
    assert {s["kind"] for s in sites} == {"se", "spatial-gate"}


def test_weakly_typed_engine_plans_pin_group_norm_to_fp32(sa_onnx: Path) -> None:
    from danet_deploy.engine.plan import BuildOptions, plan_build

    plan = plan_build(sa_onnx, BuildOptions(precision="fp16"), "10.3")
    site = next(s for s in find_light_sites(onnx.load(str(sa_onnx))) if s.kind == "group-norm")
    assert set(site.nodes) <= set(plan.pinned_fp32_layers)  # with CAM's; TensorRT advises FP32 normalization
    assert any("softmax" in n.lower() for n in plan.pinned_fp32_layers)


# precision ---------------------------------------------------------------------------------------------


def _gated_demo_model(tmp_path: Path) -> Path:
    """SE + spatial-gate heads on the trained SA demo's backbone and branch convs, the gates random but active.

    Verify compares each backend with its own PyTorch model, so what matters is a trained feature scale and
    confident logits (a random tiny model's near-tied logits flip under any quantization).
    """
    trained = load_checkpoint(DEMO_SA_CHECKPOINT)
    config = trained.config.with_overrides(position_attention="spatial-gate", channel_attention="se", se_reduction=4)
    model = build_danet(config).eval()
    shared = {k: v for k, v in trained.model.state_dict().items() if not k.startswith("head.sa.")}
    missing, _ = model.load_state_dict(shared, strict=False)
    assert all(k.startswith(("head.spatial_gate.", "head.se.")) for k in missing)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.head.named_parameters():
            if name.startswith(("spatial_gate.", "se.")):
                p.copy_(torch.randn(p.shape) * 0.05 + (2.0 if name.endswith("bias") else 0.0))
    return save_checkpoint(model, tmp_path / "gated.pth")


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["shuffle", "gates"])
def test_fp16_and_int8_models_pass_the_verify_thresholds(checkpoint: str, tmp_path: Path) -> None:
    ckpt = DEMO_SA_CHECKPOINT if checkpoint == "shuffle" else _gated_demo_model(tmp_path)
    loaded = load_checkpoint(ckpt)
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(loaded.model, loaded.config, fp32, ExportOptions(), _image((256, 512)))
    calib = ROOT / "calibration"
    fp16, _ = convert_fp16(fp32, tmp_path / "fp16.onnx", Fp16Options(calib=calib, count=8))
    int8, _ = quantize_int8(
        fp32, tmp_path / "int8.onnx", Int8Options(calib=calib, count=16, cache_dir=tmp_path / "cache")
    )
    runners = [PyTorchRunner(loaded.model, loaded.config)] + [OnnxRuntimeRunner(p) for p in (fp32, fp16, int8)]
    report = verify(open_dataset(DEMO_DATA).head(6), runners, loaded.config)
    assert [b.precision for b in report.backends] == ["fp32", "fp32", "fp16", "int8"]
    assert report.passed, [(b.name, b.miou_delta, b.pixel_agreement, b.failures) for b in report.backends]


# the bundled Shuffle Attention demo --------------------------------------------------------------------


@pytest.mark.slow
def test_demo_shuffle_variant_runs_the_whole_pipeline(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = run("demo", "--variant", "shuffle", "--workdir", workdir, "--calib-images", "16")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "danet_r18w32_sa8" in result.stderr and "GroupNorm form 'group-normalization'" in result.stdout
    report = json.loads((workdir / "report.json").read_text())
    assert report["passed"] and report["images"] == 24
    assert report["model"]["variant"] == "shuffle(G=8)+cam"
    assert [b["precision"] for b in report["backends"]] == ["fp32", "fp32", "fp32", "fp16", "int8", "int8"]
    assert report["backends"][0]["miou"] > 75  # the trained SA demo: 83.41 on these scenes
    simplified = onnx.load(str(workdir / "demo.ort.onnx"))
    assert "GroupNormalization" in _ops(simplified) and _shuffle_transposes(simplified) == []
    assert_bad = run("demo", "--variant", "linear", "--workdir", tmp_path / "x")
    assert assert_bad.returncode == 2 and "--variant linear: choose from" in assert_bad.stderr
