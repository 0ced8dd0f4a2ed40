"""Precision stage: calibration data and cache, INT8 Q/DQ (TensorRT rules, mIoU budget), protected FP16."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from danet_deploy.data.datasets import open_dataset
from danet_deploy.data.images import read_image
from danet_deploy.data.preprocess import normalize
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.errors import BadInputError, CheckFailedError, OptionError
from danet_deploy.evaluate.verify import verify
from danet_deploy.graph.cam import simplify_cam
from danet_deploy.graph.sites import find_sites
from danet_deploy.model import DANet
from danet_deploy.onnx_export import (
    META_CONFIG,
    ExportOptions,
    OnnxModel,
    Precision,
    export_onnx,
    onnxruntime_session,
    read_metadata,
    write_metadata,
)
from danet_deploy.options import BudgetOptions, Fp16Options, Int8Options
from danet_deploy.precision import (
    META_PRECISION,
    CalibrationWarning,
    cache_dir,
    calibration_set,
    convert_fp16,
    quantize_int8,
    quantize_with_budget,
)
from danet_deploy.precision import int8 as int8_module
from danet_deploy.precision.calibration_cache import CACHE_ENV
from danet_deploy.precision.fp16 import FP16_MAX, fp16_session, node_precisions, tensor_absmax
from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner

from .conftest import TINY

# Tiny synthetic sets are far below NVIDIA's 500-image guidance; that warning has its own test.
pytestmark = pytest.mark.filterwarnings("ignore::danet_deploy.precision.CalibrationWarning")

CALIB_IMAGES = 8


def _write_images(folder: Path, seeds: range, size: tuple[int, int] = (64, 128)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        Image.fromarray(generate_scene(seed, *size).image).save(folder / f"scene_{seed:03d}.png")
    return folder


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_images(tmp_path_factory.mktemp("calib") / "images", range(100, 100 + CALIB_IMAGES))


@pytest.fixture(scope="module")
def cam_onnx(tiny_model: DANet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DANet whose CAM input is ~30x larger: its energy (a sum over N = 128 positions) passes 65504."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.cam_in_conv.bn.weight.mul_(30.0)
        model.head.cam_in_conv.bn.bias.add_(30.0)
        model.head.cam_out_conv.conv.weight.div_(30.0)  # keeps the rest of the network in a normal range
    path = tmp_path_factory.mktemp("onnx") / "tiny_cam_hot.onnx"
    export_onnx(model, TINY, path, ExportOptions(), generate_scene(1, 64, 128).image)
    return path


def _logits(model: object, batch: np.ndarray) -> np.ndarray:
    """Logits image by image (the exports have a static batch of 1)."""
    session = model if hasattr(model, "run") else onnxruntime_session(model)
    return np.concatenate([session.run(["logits"], {"image": x[None]})[0] for x in batch])


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _dq_fed_layers(model: onnx.ModelProto) -> set[str]:
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and any(i in dq_outputs for i in n.input)}


# calibration data -----------------------------------------------------------------------------------------


def test_calibration_set_is_a_seeded_sorted_sample(calib_dir: Path, fp32_onnx: Path) -> None:
    first = calibration_set(calib_dir, fp32_onnx, count=4, seed=0)
    again = calibration_set(calib_dir, fp32_onnx, count=4, seed=0)
    assert first.files == again.files == sorted(first.files) and len(first) == 4
    others = [calibration_set(calib_dir, fp32_onnx, count=4, seed=s).files for s in (1, 2, 3)]
    assert any(files != first.files for files in others)
    array = calibration_set(calib_dir, fp32_onnx, count=4, seed=0).array()
    assert array.shape == (4, 3, 64, 128) and array.dtype == np.float32
    np.testing.assert_allclose(array[0], normalize(read_image(first.files[0]), TINY)[0])


def _uint8_model(path: Path, dims: list[int | str]) -> Path:
    """A minimal ONNX with a uint8 NHWC input and the danet-deploy config, for input-spec tests."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["logits"], to=TensorProto.FLOAT)],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, dims)],
        # Declared N x classes x H x W, as the config's class count (the validator checks it against the logits).
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], TINY.num_classes, dims[1], dims[2]])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    write_metadata(model, {META_CONFIG: TINY.to_dict()})
    onnx.save(model, str(path))
    return path


def test_static_input_dims_win_and_uint8_inputs_get_raw_pixels(calib_dir: Path, tmp_path: Path) -> None:
    static = _uint8_model(tmp_path / "u8.onnx", [1, 32, 48, 3])
    array = calibration_set(calib_dir, static, count=2).array()
    assert array.shape == (2, 32, 48, 3) and array.dtype == np.uint8
    dynamic = _uint8_model(tmp_path / "u8dyn.onnx", ["batch", "height", "width", 3])
    assert calibration_set(calib_dir, OnnxModel.load(dynamic), count=2).array().shape == (2, *TINY.input_size, 3)


def test_missing_folder_and_folder_without_images(tmp_path: Path, fp32_onnx: Path) -> None:
    with pytest.raises(BadInputError, match=str(tmp_path / "nowhere")):
        calibration_set(tmp_path / "nowhere", fp32_onnx)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(BadInputError, match=f"{empty}: no readable calibration images"):
        calibration_set(empty, fp32_onnx)


def test_non_image_and_unreadable_files_are_skipped_with_counted_warnings(tmp_path: Path, fp32_onnx: Path) -> None:
    folder = _write_images(tmp_path / "mixed", range(3))
    (folder / "notes.txt").write_text("x")
    (folder / "labels.json").write_text("{}")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.warns(CalibrationWarning) as caught:
        calib = calibration_set(folder, fp32_onnx)
    messages = [str(w.message) for w in caught]
    assert any("skipped 2 non-image" in m for m in messages)
    assert any("skipped 1 unreadable" in m for m in messages)
    assert len(calib) == 3 and calib.skipped_non_image == 2 and calib.skipped_unreadable == 1
    assert len(calib.warnings) >= 2  # also in the record


def test_fewer_images_than_requested_is_bad_input(calib_dir: Path, fp32_onnx: Path) -> None:
    with pytest.raises(BadInputError, match=rf"{calib_dir}: {CALIB_IMAGES} usable calibration images, 20 requested"):
        calibration_set(calib_dir, fp32_onnx, count=20)


def test_small_calibration_set_warns_with_nvidia_guidance(calib_dir: Path, fp32_onnx: Path) -> None:
    with pytest.warns(CalibrationWarning, match="about 500"):
        calibration_set(calib_dir, fp32_onnx, count=4)


def test_cache_dir_argument_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_dir() == Path("~/.cache/danet-deploy/calib").expanduser()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"


# INT8 -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_is_tensorrt_ready_qdq_and_agrees_with_fp32(calib_dir: Path, fp32_onnx: Path, tmp_path: Path) -> None:
    out, record = quantize_int8(
        fp32_onnx, tmp_path / "int8.onnx", Int8Options(calib=calib_dir, cache_dir=tmp_path / "cache")
    )
    model = onnx.load(str(out))
    inits = _initializers(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and record.qdq.quantized_layers
    for node in qdq:  # TensorRT: symmetric INT8, zero point 0
        zero = inits[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), node.name
    producers = {o: n for n in model.graph.node for o in n.output}
    for name in record.qdq.quantized_layers:  # per-channel weight scales along the output channels
        conv = next(n for n in model.graph.node if n.name == name)
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear" and _attr(dq, "axis", 1) == 0
        weight = inits.get(dq.input[0], inits.get(producers[dq.input[0]].input[0]))
        assert inits[dq.input[1]].shape == (weight.shape[0],)
    # FP32 I/O, metadata kept, precision recorded.
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    meta = read_metadata(model)
    assert {"model_config", "provenance"} <= set(meta)
    precision = {p.key: p.value for p in model.metadata_props}[META_PRECISION]
    assert '"method": "entropy"' in precision and '"precision": "int8"' in precision
    # Runs in ONNX Runtime and agrees with FP32 on the calibration images. The tiny model has random
    # weights (near-tied logits), so its labels flip easily: about 0.86 was measured for entropy.
    batch = calibration_set(calib_dir, fp32_onnx).array()
    ref, got = _logits(str(fp32_onnx), batch), _logits(str(out), batch)
    assert np.isfinite(got).all()
    assert (ref.argmax(1) == got.argmax(1)).mean() > 0.75
    assert record.agreement.label_agreement > 0.75 and record.agreement.nonfinite == 0


def test_percentile_clips_ranges_below_max(calib_dir: Path, fp32_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    max_out, _ = quantize_int8(
        fp32_onnx, tmp_path / "max.onnx", Int8Options(calib=calib_dir, method="max", cache_dir=cache)
    )
    pct_out, record = quantize_int8(
        fp32_onnx,
        tmp_path / "pct.onnx",
        Int8Options(calib=calib_dir, method="percentile", percentile=99.9, cache_dir=cache),
    )
    assert record.method == "percentile" and record.percentile == 99.9
    max_scales, pct_scales = _initializers(onnx.load(str(max_out))), _initializers(onnx.load(str(pct_out)))
    activation = [k for k, v in pct_scales.items() if k.endswith("_scale") and v.ndim == 0 and k in max_scales]
    ratios = np.array([pct_scales[k] / max_scales[k] for k in activation])
    assert len(activation) > 10
    assert (ratios <= 1.0 + 1e-5).all() and (ratios < 0.99).any()


def test_unknown_method_and_quantized_input_are_bad_input(calib_dir: Path, fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="method kl: choose from entropy, max, percentile"):
        quantize_int8(fp32_onnx, tmp_path / "x.onnx", Int8Options(calib=calib_dir, method="kl"))
    out, _ = quantize_int8(
        fp32_onnx, tmp_path / "q.onnx", Int8Options(calib=calib_dir, method="max", cache_dir=tmp_path / "c")
    )
    with pytest.raises(BadInputError, match="already quantized"):
        quantize_int8(out, tmp_path / "qq.onnx", Int8Options(calib=calib_dir))
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "qq.onnx").exists()


def test_int8_and_fp16_take_an_onnx_model_parse_it_once_and_refuse_non_fp32(
    calib_dir: Path, fp32_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    quantize_int8(
        fp32_onnx, tmp_path / "first.onnx", Int8Options(calib=calib_dir, method="max", cache_dir=cache)
    )  # fills the cache
    model = OnnxModel.load(fp32_onnx)
    loads: list[object] = []
    real_load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out, record = quantize_int8(model, tmp_path / "q.onnx", Int8Options(calib=calib_dir, method="max", cache_dir=cache))
    assert record.cache_hit and not loads  # the source was parsed once, by OnnxModel.load
    monkeypatch.undo()
    assert OnnxModel.load(out).precision == Precision.INT8
    fp16, _ = convert_fp16(model, tmp_path / "h.onnx")
    assert OnnxModel.load(fp16).precision == Precision.FP16
    with pytest.raises(BadInputError, match=r"already quantized .*start from the FP32 ONNX"):
        convert_fp16(out, tmp_path / "x.onnx")
    with pytest.raises(BadInputError, match="already FP16; start from the FP32 ONNX"):
        quantize_int8(OnnxModel.load(fp16), tmp_path / "x.onnx", Int8Options(calib=calib_dir, cache_dir=cache))
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_calibration_cache_is_keyed_by_content(
    calib_dir: Path, fp32_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = shutil.copytree(calib_dir, tmp_path / "images")
    cache = tmp_path / "cache"

    def run(onnx_path: Path = fp32_onnx, method: str = "max", recalibrate: bool = False) -> bool:
        _, record = quantize_int8(
            onnx_path,
            tmp_path / "q.onnx",
            Int8Options(calib=images, method=method, recalibrate=recalibrate, cache_dir=cache),
        )
        return record.cache_hit

    assert run() is False
    calls: list[int] = []
    real = int8_module.run_modelopt
    monkeypatch.setattr(int8_module, "run_modelopt", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert run() is True and not calls  # hit: no calibration ran
    assert run(method="entropy") is False  # another method
    assert run(recalibrate=True) is False  # forced
    changed = tmp_path / "changed.onnx"
    proto = onnx.load(str(fp32_onnx))
    proto.doc_string += " (edited)"
    onnx.save(proto, str(changed))
    assert run(onnx_path=changed) is False  # other model bytes
    first = sorted(images.iterdir())[0]
    pixels = np.array(Image.open(first))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(first)
    calls.clear()
    assert run() is False and calls  # one image's bytes changed
    assert run() is True


# INT8 with an mIoU budget ---------------------------------------------------------------------------------


def _verify_miou(data: Path) -> Callable[[Path], float]:
    """mIoU (percent) of one ONNX model on the labeled val split, scored like `danet-deploy verify`."""
    dataset = open_dataset(data, "val")

    def evaluate(path: Path) -> float:
        runner = OnnxRuntimeRunner(path)
        return verify(dataset, [runner], runner.config).backends[0].miou

    return evaluate


def test_budget_met_by_full_int8(calib_dir: Path, fp32_onnx: Path, city_data: Path, tmp_path: Path) -> None:
    out, record = quantize_with_budget(
        fp32_onnx,
        tmp_path / "b.onnx",
        Int8Options(
            calib=calib_dir,
            method="max",
            cache_dir=tmp_path / "cache",
            budget=BudgetOptions(data=str(city_data), max_miou_drop=100.0),
        ),
        evaluate=_verify_miou(city_data),
        eval_images=len(open_dataset(city_data, "val")),
    )
    assert len(record.steps) == 1 and record.steps[0].passed and record.steps[0].excluded == []
    assert record.sensitivity == [] and 0 <= record.fp32_miou <= 100 and record.eval_images == 3
    precision = {p.key: p.value for p in onnx.load(str(out)).metadata_props}[META_PRECISION]
    assert '"budget"' in precision and '"max_miou_drop": 100.0' in precision


def _fake_miou(path: str | Path) -> float:
    """Pretend each quantized layer costs 0.1 mIoU points, so the budget needs the search."""
    return 50.0 - 0.1 * len(_dq_fed_layers(onnx.load(str(path))))


@pytest.mark.slow
def test_budget_search_keeps_most_sensitive_layers_fp32(
    calib_dir: Path, fp32_onnx: Path, city_data: Path, tmp_path: Path
) -> None:
    out, record = quantize_with_budget(
        fp32_onnx,
        tmp_path / "b.onnx",
        Int8Options(
            calib=calib_dir,
            method="max",
            cache_dir=tmp_path / "cache",
            budget=BudgetOptions(data=str(city_data), max_miou_drop=1.5),
        ),
        evaluate=_fake_miou,
        eval_images=3,
    )
    sizes = [len(s.excluded) for s in record.steps]
    assert sizes[0] == 0 and sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert [s.passed for s in record.steps] == [False] * (len(sizes) - 1) + [True]
    scores = [s.score for s in record.sensitivity]
    assert len(scores) > 10 and scores == sorted(scores, reverse=True)
    final = _dq_fed_layers(onnx.load(str(out)))
    assert not final & set(record.steps[-1].excluded)  # excluded layers really stay FP32
    assert record.steps[-1].excluded == [s.node for s in record.sensitivity[: sizes[-1]]]


def test_budget_never_met_writes_nothing(calib_dir: Path, fp32_onnx: Path, city_data: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckFailedError, match="no INT8 mix met the mIoU budget"):
        quantize_with_budget(
            fp32_onnx,
            tmp_path / "b.onnx",
            Int8Options(
                calib=calib_dir,
                method="max",
                cache_dir=tmp_path / "cache",
                budget=BudgetOptions(data=str(city_data), max_miou_drop=1.0, max_steps=2),
            ),
            evaluate=lambda p: 50.0 if Path(p) == fp32_onnx else 40.0,
            eval_images=3,
        )
    assert not (tmp_path / "b.onnx").exists()


# FP16 -----------------------------------------------------------------------------------------------------


def _cam_energy(model: onnx.ModelProto) -> tuple[str, str]:
    """(node name, output tensor) of the CAM energy MatMul."""
    site = next(s for s in find_sites(model) if s.kind == "cam")
    node = next(n for n in model.graph.node if n.name == site.nodes[0])
    return node.name, node.output[0]


@pytest.mark.slow
def test_cam_overflows_in_plain_fp16_and_protected_fp16_stays_close(
    cam_onnx: Path, calib_dir: Path, tmp_path: Path
) -> None:
    source = onnx.load(str(cam_onnx))
    energy_node, energy = _cam_energy(source)
    calib = calibration_set(calib_dir, cam_onnx)
    assert tensor_absmax(source, calib)[energy] > FP16_MAX  # the trigger works in FP32

    plain_path, plain = convert_fp16(cam_onnx, tmp_path / "plain.onnx", Fp16Options(calib=calib_dir, plain=True))
    protected_path, protected = convert_fp16(cam_onnx, tmp_path / "protected.onnx", Fp16Options(calib=calib_dir))

    # Plain FP16: the energy computes in FP16, overflows, and rowmax - energy turns inf - inf into NaN.
    assert plain.agreement is not None and plain.agreement.nonfinite > 0
    row = next(t for t in plain.range_report.tensors if t.tensor == energy)
    assert row.tier == "overflow" and row.kept_fp32 is False and plain.range_report.unprotected
    # Protected: CAM stays FP32, the rest is FP16, logits finite and close to FP32.
    row = next(t for t in protected.range_report.tensors if t.tensor == energy)
    assert row.tier == "overflow" and row.producer == energy_node and row.kept_fp32 is True
    assert not protected.range_report.unprotected and energy_node in protected.fp32_nodes
    assert protected.fp16_nodes > 0.8 * len(source.graph.node)

    batch = calib.array()
    ref = _logits(str(cam_onnx), batch)
    got_plain = _logits(fp16_session(plain_path), batch)  # FP16 rounding emulated on the CPU
    got = _logits(fp16_session(protected_path), batch)
    assert not np.isfinite(got_plain).all()
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.99

    model = onnx.load(str(protected_path))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {"model_config", "provenance"} <= set(read_metadata(model))
    assert '"mode": "protected"' in {p.key: p.value for p in model.metadata_props}[META_PRECISION]


@pytest.mark.parametrize("clean_cam", [False, True])
def test_cam_sites_stay_fp32_by_rule_without_data(fp32_onnx: Path, tmp_path: Path, clean_cam: bool) -> None:
    source = fp32_onnx
    if clean_cam:  # after `simplify --passes cam`: MatMul(Neg(X), X^T) -> Softmax -> MatMul
        model, rewritten = simplify_cam(onnx.load(str(fp32_onnx)))
        assert rewritten == 1
        source = tmp_path / "clean.onnx"
        onnx.save(model, str(source))
    site = next(s for s in find_sites(onnx.load(str(source))) if s.kind == "cam")
    out, record = convert_fp16(source, tmp_path / "fp16.onnx")
    assert record.range_report is None and set(site.nodes) <= set(record.cam_nodes)
    precisions = node_precisions(onnx.load(str(out)))
    assert all(precisions[n] == TensorProto.FLOAT for n in site.nodes)
    assert sum(t == TensorProto.FLOAT16 for t in precisions.values()) > 0.8 * len(precisions)


def test_measured_ranges_keep_large_tensors_fp32(fp32_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    limit = 4.0  # far below FP16's range, so the measured rule visibly acts on the tiny model
    out, record = convert_fp16(fp32_onnx, tmp_path / "fp16.onnx", Fp16Options(calib=calib_dir), data_max=limit)
    source = onnx.load(str(fp32_onnx))
    amax = tensor_absmax(source, calibration_set(calib_dir, fp32_onnx))
    large = {n.name for n in source.graph.node if any(amax.get(o, 0.0) > limit for o in n.output)}
    assert large - set(record.cam_nodes)  # the rule has work beyond the CAM sites
    assert large <= set(record.fp32_nodes)
    precisions = node_precisions(onnx.load(str(out)))
    assert all(precisions[n] == TensorProto.FLOAT for n in large if n in precisions)


def test_fp16_bad_inputs(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="data_max"):
        convert_fp16(fp32_onnx, tmp_path / "x.onnx", data_max=1e6)
    with pytest.raises(BadInputError, match="no such ONNX file"):
        convert_fp16(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    with pytest.raises(BadInputError, match="no such calibration folder"):
        convert_fp16(fp32_onnx, tmp_path / "x.onnx", Fp16Options(calib=tmp_path / "nowhere"))
    assert not (tmp_path / "x.onnx").exists()
