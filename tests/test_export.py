"""Export: parity with PyTorch at several sizes, dynamic axes, opset paths, argmax, uint8 input, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from danet_deploy.config import ModelConfig
from danet_deploy.data.preprocess import normalize
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.errors import CheckFailedError
from danet_deploy.model import DANet
from danet_deploy.onnx_export import ExportOptions, export_onnx, onnxruntime_session, read_metadata
from danet_deploy.onnx_export import torch_export as export_module

from .conftest import TINY

IMAGE = generate_scene(7, 96, 160).image


def _ort_vs_torch(model: DANet, path: Path, shape: tuple[int, ...]) -> float:
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x).numpy()
    got = onnxruntime_session(path).run(["logits"], {"image": x.numpy()})[0]
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max())


@pytest.mark.slow
@pytest.mark.parametrize("size", [(64, 128), (61, 99), (40, 52)])
def test_static_export_matches_pytorch(tiny_model: DANet, tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "m.onnx"
    record = export_onnx(tiny_model, TINY, path, ExportOptions(input_size=size), IMAGE)
    assert record.parity[0].passed and record.parity[0].max_abs_diff < 1e-4
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, *size]
    assert _ort_vs_torch(tiny_model, path, (1, 3, *size)) < 1e-4


@pytest.mark.slow
def test_dynamic_export_runs_other_batches_and_sizes(tiny_model: DANet, tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    record = export_onnx(tiny_model, TINY, path, ExportOptions(dynamic=True), IMAGE)
    assert len(record.parity) == 2 and all(p.passed for p in record.parity)  # traced size + a second size
    model = onnx.load(str(path))
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    out_dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", 19, "height", "width"]
    for shape in [(3, 3, 72, 136), (1, 3, 45, 67)]:
        assert _ort_vs_torch(tiny_model, path, shape) < 1e-4


@pytest.mark.slow
def test_legacy_exporter_for_opset_below_18(tiny_model: DANet, tmp_path: Path) -> None:
    path = tmp_path / "op17.onnx"
    record = export_onnx(tiny_model, TINY, path, ExportOptions(opset=17, dynamic=True), IMAGE)
    assert record.exporter == "legacy"
    assert onnx.load(str(path)).opset_import[0].version == 17
    assert _ort_vs_torch(tiny_model, path, (2, 3, 48, 80)) < 1e-4


@pytest.mark.slow
def test_argmax_adds_int32_labels_equal_to_argmax_of_logits(tiny_model: DANet, tmp_path: Path) -> None:
    path = tmp_path / "argmax.onnx"
    export_onnx(tiny_model, TINY, path, ExportOptions(argmax=True), IMAGE)
    x = normalize(IMAGE[:64, :128], TINY)
    logits, labels = onnxruntime_session(path).run(["logits", "labels"], {"image": x})
    assert labels.dtype == np.int32 and labels.shape == (1, 64, 128)
    np.testing.assert_array_equal(labels, logits.argmax(1))


@pytest.mark.slow
def test_uint8_input_bakes_the_model_config_preprocessing(tiny_model: DANet, tmp_path: Path) -> None:
    path = tmp_path / "u8.onnx"
    export_onnx(tiny_model, TINY, path, ExportOptions(uint8_input=True), IMAGE)
    session = onnxruntime_session(path)
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_inputs()[0].shape == [1, 64, 128, 3]
    image = IMAGE[:64, :128]
    got = session.run(["logits"], {"image": image[None]})[0]
    with torch.no_grad():
        ref = tiny_model(torch.from_numpy(normalize(image, TINY))).numpy()
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.slow
def test_metadata_carries_config_and_provenance(tiny_model: DANet, tmp_path: Path) -> None:
    path = tmp_path / "meta.onnx"
    export_onnx(tiny_model, TINY, path, ExportOptions(), IMAGE, provenance={"checkpoint_sha256": "abc123"})
    meta = read_metadata(path)
    assert ModelConfig.from_dict(meta["model_config"]) == TINY
    assert meta["provenance"]["checkpoint_sha256"] == "abc123"
    versions = meta["provenance"]["tool_versions"]
    # The build that ran, local tag included (2.13.0+cpu here, 2.13.0+cu130 from PyPI's default wheel).
    assert versions["torch"] == torch.__version__ and versions["torch_cuda"] == torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    assert versions["cudnn"] == (str(cudnn) if cudnn else None)
    import onnxruntime

    assert versions["onnxruntime"] == onnxruntime.__version__
    assert versions["onnxruntime_package"] in ("onnxruntime", "onnxruntime-gpu")
    assert versions["onnxruntime_providers"] == onnxruntime.get_available_providers()
    assert meta["provenance"]["export_options"]["opset"] == 18
    assert meta["io"]["inputs"]["image"]["shape"] == [1, 3, 64, 128]


@pytest.mark.slow
def test_failed_parity_leaves_no_file(tiny_model: DANet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_module.check_parity

    def broken(*args, **kwargs):  # ONNX Runtime output off by 1 logit
        result = real(*args, **kwargs)
        result.max_abs_diff = 1.0
        return result

    monkeypatch.setattr(export_module, "check_parity", broken)
    path = tmp_path / "bad.onnx"
    with pytest.raises(CheckFailedError, match="exceeds tolerance"):
        export_onnx(tiny_model, TINY, path, ExportOptions(), IMAGE)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary
