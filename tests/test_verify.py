"""verify's library side: per-precision thresholds, precision detection, streaming evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from danet_deploy.artifact import Precision
from danet_deploy.config import ModelConfig
from danet_deploy.data.datasets import open_dataset
from danet_deploy.errors import BadInputError
from danet_deploy.evaluate.verify import DEFAULT_THRESHOLDS, thresholds_with, verify
from danet_deploy.onnx_export import graph_precision
from danet_deploy.runners.pytorch import PyTorchRunner

from .conftest import TINY


def test_threshold_overrides() -> None:
    t = thresholds_with(["fp16.min_pixel_agreement=0.5", "int8.max_abs_diff=2", "fp32.max_abs_diff=none"])
    assert t["fp16"].min_pixel_agreement == 0.5 and t["fp16"].max_miou_drop == DEFAULT_THRESHOLDS["fp16"].max_miou_drop
    assert t["int8"].max_abs_diff == 2.0 and t["fp32"].max_abs_diff is None
    for bad in ("fp64.max_abs_diff=1", "fp16.speed=1", "fp16.max_abs_diff", "int8.max_miou_drop=lots"):
        with pytest.raises(BadInputError, match="threshold override"):
            thresholds_with([bad])


def _save(tmp_path: Path, nodes: list, inits: list, name: str) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_detect_precision(tmp_path: Path) -> None:
    fp32 = _save(tmp_path, [helper.make_node("Relu", ["image"], ["logits"])], [], "a.onnx")
    casts = [
        helper.make_node("Cast", ["image"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["logits"], to=TensorProto.FLOAT),
    ]
    fp16 = _save(tmp_path, casts, [], "b.onnx")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    qdq = [
        helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["logits"]),
    ]
    int8 = _save(tmp_path, qdq, [scale, zero], "c.onnx")
    # Graph sniffing: the fallback for ONNX files without danet-deploy metadata.
    assert [graph_precision(onnx.load(str(p))) for p in (fp32, fp16, int8)] == ["fp32", "fp16", "int8"]


class NoisyRunner(PyTorchRunner):
    """A backend whose logits differ from the reference by a fixed offset on one class."""

    def __init__(self, model: torch.nn.Module, precision: str, offset: float):
        super().__init__(model, TINY, name=f"noisy-{precision}")
        self._noisy_precision, self.offset = Precision(precision), offset

    @property
    def precision(self) -> Precision:
        return self._noisy_precision

    def postprocess(self, output: torch.Tensor) -> np.ndarray:
        out = super().postprocess(output)
        out[:, 0] += self.offset
        return out


def test_precision_selects_thresholds(tiny_model, city_data: Path) -> None:
    reference = PyTorchRunner(tiny_model, TINY)
    dataset = open_dataset(city_data)
    # A 0.01 logit shift fails fp32's 1e-3 logit tolerance but not fp16's label-based thresholds.
    runners = [reference, NoisyRunner(tiny_model, "fp32", 0.01), NoisyRunner(tiny_model, "fp16", 0.01)]
    report = verify(dataset, runners)  # the config defaults to the reference runner's
    by_name = {b.name: b for b in report.backends}
    assert not by_name["noisy-fp32"].passed and "max abs diff" in by_name["noisy-fp32"].failures[0]
    assert by_name["noisy-fp16"].pixel_agreement > 0.999
    assert by_name["noisy-fp16"].passed == (by_name["noisy-fp16"].pixel_agreement >= 0.999)
    assert report.passed is False and report.labeled and report.images == 3
    assert [b.precision for b in report.backends] == ["fp32", "fp32", "fp16"]
    assert not any(r.is_active for r in runners)  # verify deactivates the runners it activated
    # p99 is the upper edge of a histogram bin, capped by the max: never above it (the reference: both 0).
    assert report.backends[0].p99_abs_diff == 0 == report.backends[0].max_abs_diff
    assert all(b.p99_abs_diff <= b.max_abs_diff for b in report.backends)
    # The tiny model's noise floor sets the FP32 tolerance; every precision's thresholds say where they came from.
    assert report.fp32_noise is not None and {t.precision for t in report.thresholds_in_force} == {"fp32", "fp16"}
    assert "FP32 noise" in report.limits("fp32")[0].source and report.limits("fp16")[0].value is None


def test_terminal_table_shows_deltas_and_whole_backend_names(tiny_model, city_data: Path) -> None:
    from rich.console import Console

    from danet_deploy.report.text import failure_lines, per_class_table, threshold_table, verify_table

    name = "onnxruntime:danet_r101_cityscapes_1024x2048.int8.onnx"
    report = verify(open_dataset(city_data), [PyTorchRunner(tiny_model, TINY), NoisyRunner(tiny_model, "int8", 5.0)])
    report.backends[1].name = name
    console = Console(width=160, record=True)
    for table in (verify_table(report), per_class_table(report), threshold_table(report)):
        console.print(table)
    text = console.export_text()
    assert "…" not in text and "delta mIoU" in text and "labels changed" in text
    assert name in text and f"delta {name}" in text  # whole, on one line, in both tables
    assert "thresholds in force" in text and "min_pixel_agreement" in text
    assert failure_lines(report) == [f"{name} FAILED: {'; '.join(report.backends[1].failures)}"]


def test_verify_options_check_names_the_option_in_library_words(tmp_path: Path) -> None:
    from danet_deploy.errors import OptionError
    from danet_deploy.steps.verify import VerifyOptions

    VerifyOptions().check()
    cases = [
        (VerifyOptions(locate_images=0), "locate_images", "locate images 0: must be at least 1"),
        (VerifyOptions(thresholds=("fp16.min_pixel_agreement=2",)), "thresholds", "threshold override"),
        (VerifyOptions(crop=64), "stride", "needs both a crop size and a stride"),
        (VerifyOptions(scales=(0.0,)), "scales", "scales 0: each scale"),
    ]
    for options, option, words in cases:
        with pytest.raises(OptionError, match=words) as info:
            options.check()
        assert info.value.field == option and "--" not in str(info.value)
    assert info.value.as_flag("--scales") == "--scales 0: each scale must be a number in (0, 4]"


# --- evaluation protocols ------------------------------------------------------------------------------


def per_pixel(image: np.ndarray) -> np.ndarray:
    """A backend whose logits depend on each pixel alone (like a 1x1 conv): protocols must not change it."""
    x = image.astype(np.float32).transpose(2, 0, 1)[None] / 255
    return np.concatenate([x, 1 - x, x[:, :1] * x[:, 1:2]], axis=1)


@pytest.mark.parametrize(("crop", "stride"), [(32, 16), (48, 20), (64, 64), (100, 50)])
def test_sliding_window_covers_every_pixel_exactly(crop: int, stride: int) -> None:
    from danet_deploy.evaluate.protocols import EvalProtocol, predict

    image = np.random.default_rng(0).integers(0, 256, (61, 99, 3), dtype=np.uint8)
    seen: list[tuple[int, int]] = []

    def infer(window: np.ndarray) -> np.ndarray:
        seen.append(window.shape[:2])
        return per_pixel(window)

    got = predict(infer, image, EvalProtocol(crop=crop, stride=stride), align_corners=False)
    np.testing.assert_allclose(got, per_pixel(image), rtol=1e-6)
    assert set(seen) == {(crop, crop)}  # windows always have the crop size (small images are padded)


def test_flip_and_scales_average_like_the_official_protocol() -> None:
    from danet_deploy.evaluate.protocols import EvalProtocol, predict

    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    np.testing.assert_allclose(predict(per_pixel, image, EvalProtocol(flip=True), False), per_pixel(image), rtol=1e-6)
    same_scales = predict(per_pixel, image, EvalProtocol(scales=(1.0, 1.0)), False)
    np.testing.assert_allclose(same_scales, per_pixel(image), rtol=1e-6)
    yy, xx = np.mgrid[0:40, 0:56]
    smooth = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=-1).astype(np.uint8)  # resizing keeps a gradient
    multi = predict(per_pixel, smooth, EvalProtocol(scales=(0.5, 1.0, 1.5)), False)
    assert multi.shape == (1, 7, 40, 56) and np.abs(multi - per_pixel(smooth)).mean() < 0.02


def test_protocol_validation() -> None:
    from danet_deploy.evaluate.protocols import EvalProtocol

    for kwargs in ({"crop": 64}, {"crop": 64, "stride": 80}, {"scales": ()}, {"scales": (0.0,)}):
        with pytest.raises(BadInputError):
            EvalProtocol(**kwargs)
    protocol = EvalProtocol(crop=768, stride=512, flip=True, scales=(0.75, 1.0))
    assert protocol.name == "slide 768/512 + flip + scales 0.75,1"


@pytest.mark.slow
def test_verify_under_sliding_window_and_flip(tiny_model, city_data: Path, tmp_path: Path) -> None:
    from danet_deploy.evaluate.protocols import EvalProtocol
    from danet_deploy.onnx_export import ExportOptions, export_onnx
    from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner

    path = tmp_path / "crop.onnx"
    export_onnx(tiny_model, TINY, path, ExportOptions(input_size=(48, 48)), np.zeros((48, 48, 3), np.uint8))
    runners = [PyTorchRunner(tiny_model, TINY), OnnxRuntimeRunner(path)]
    report = verify(open_dataset(city_data), runners, TINY, protocol=EvalProtocol(crop=48, stride=32, flip=True))
    assert report.passed, report.backends[1].failures
    assert report.protocol == "slide 48/32 + flip" and report.backends[1].cosine > 0.999999
    assert report.backends[1].worst_images and report.backends[1].miou_delta == pytest.approx(0, abs=1e-3)
    with pytest.raises(BadInputError, match="needs backends of that size"):
        verify(open_dataset(city_data), runners, TINY, protocol=EvalProtocol(crop=32, stride=16))


def test_thresholds_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"int8": {"max_miou_drop": 0.5}, "fp32": {"max_abs_diff": 1e-4}}')
    t = thresholds_with(["int8.max_miou_drop=0.25"], str(path))
    assert t["int8"].max_miou_drop == 0.25 and t["fp32"].max_abs_diff == 1e-4  # command line wins over the file
    path.write_text("[1, 2]")
    with pytest.raises(BadInputError, match="expected"):
        thresholds_with([], str(path))
    with pytest.raises(BadInputError, match="cannot read"):
        thresholds_with([], str(tmp_path / "missing.json"))


def test_pytorch_fp16_needs_a_gpu(tiny_model) -> None:
    from danet_deploy.errors import DeployError

    if torch.cuda.is_available():
        with PyTorchRunner(tiny_model, TINY, half=True) as runner:
            assert runner.precision == "fp16" and runner.infer(np.zeros((64, 128, 3), np.uint8)).dtype == np.float32
            assert runner.device.startswith("GPU: ")
    else:
        with pytest.raises(DeployError, match="CUDA GPU") as info:
            PyTorchRunner(tiny_model, TINY, half=True)
        assert info.value.exit_code == 3


# --- the FP32 gate: derived from the reference's own FP32 noise -------------------------------------------------

DEEP = ModelConfig(depth=101, base_width=8, stem_channels=(8, 8, 16), input_size=(64, 128))


@pytest.fixture(scope="module")
def deep_model() -> torch.nn.Module:
    """A random-weight DANet-R101 (narrow, for CI) with trained-scale statistics: BatchNorm statistics measured on
    images, so activations keep their scale through all 101 layers as in a trained model, and PAM / CAM active."""
    from danet_deploy.data.preprocess import normalize
    from danet_deploy.data.synthetic import generate_scene
    from danet_deploy.model import build_danet

    torch.manual_seed(0)
    model = build_danet(DEEP)
    model.head.pam.gamma.data.fill_(0.5)
    model.head.cam.gamma.data.fill_(0.3)
    x = torch.from_numpy(np.concatenate([normalize(generate_scene(s, 64, 128).image, DEEP) for s in range(4)]))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: the statistics of these images
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture(scope="module")
def deep_case(deep_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The deep model's faithful ONNX export and three labeled scenes."""
    from danet_deploy.data.synthetic import generate_scene, write_cityscapes_split
    from danet_deploy.onnx_export import ExportOptions, export_onnx

    tmp = tmp_path_factory.mktemp("deep")
    path = tmp / "deep.onnx"
    export_onnx(deep_model, DEEP, path, ExportOptions(atol=1e-2), generate_scene(0, 64, 128).image)
    return path, write_cityscapes_split(tmp / "city", "val", 3, 64, 128)


def _deep_verify(model: torch.nn.Module, onnx_path: Path, data: Path, config: ModelConfig = DEEP):
    from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner

    runners = [PyTorchRunner(model, config), OnnxRuntimeRunner(onnx_path, bounded=True)]
    return verify(open_dataset(data), runners, config)


@pytest.mark.slow
def test_faithful_deep_model_passes_the_noise_derived_fp32_gate(deep_model, deep_case) -> None:
    onnx_path, data = deep_case
    report = _deep_verify(deep_model, onnx_path, data)
    backend = report.backends[1]
    noise = report.fp32_noise
    assert noise is not None and noise.max_abs > 1e-5  # deep: FP32 alone is far from exact
    (tolerance,) = [t for t in report.limits("fp32") if t.name == "max_abs_diff"]
    assert tolerance.value == pytest.approx(max(16 * noise.max_abs, 1e-4 + 1e-4 * noise.max_logit))
    assert "FP32 noise" in tolerance.source and noise.image in tolerance.source
    # The old fixed 1e-3 failed this faithful export; the derived gate passes it.
    assert backend.max_abs_diff > 1e-4 and report.passed, backend.failures
    assert all(t.source for t in report.thresholds_in_force)
    assert report.to_dict()["fp32_noise"]["max_abs"] == noise.max_abs


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["bias", "normalization"])
def test_deep_model_with_a_broken_bias_or_normalization_fails(deep_model, deep_case, broken: str) -> None:
    import copy
    import dataclasses

    onnx_path, data = deep_case
    model, config = copy.deepcopy(deep_model), DEEP
    if broken == "bias":  # one BatchNorm bias in the middle of layer3 off by a tenth of its channels' scale
        bn = model.backbone.layer3[10].bn2 if hasattr(model, "backbone") else None
        assert bn is not None
        with torch.no_grad():
            bn.bias.add_(0.1 * bn.weight.abs().mean())
    else:  # the reference normalizes with a slightly wrong mean (as a mistaken config would)
        config = dataclasses.replace(DEEP, mean=tuple(m + 0.01 for m in DEEP.mean))
    report = _deep_verify(model, onnx_path, data, config)
    backend = report.backends[1]
    assert not report.passed and any("max abs diff" in f for f in backend.failures), backend.failures
