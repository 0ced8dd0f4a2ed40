"""Untrusted model configs (ONNX metadata, checkpoints, engine sidecars) and foreign ONNX models: one validator,
run at load, refuses wrong types, lengths and ranges with exit code 2 naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from danet_deploy.artifact import META_CONFIG, META_PRECISION, OnnxModel, Precision, write_metadata
from danet_deploy.checkpoints import load_checkpoint
from danet_deploy.config import ModelConfig
from danet_deploy.engine.sidecar import write_sidecar
from danet_deploy.errors import EXIT_BAD_INPUT, BadInputError
from danet_deploy.options import SimplifyOptions
from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner
from danet_deploy.simplify import simplify_file

from .conftest import TINY

# (field, bad value): each once the reproduction, the rest its neighbours.
BAD_FIELDS: list[tuple[str, Any]] = [
    ("mean", [0.5, 0.5]),
    ("mean", ["a", "b", "c"]),
    ("mean", [0.5, float("nan"), 0.5]),
    ("std", [-0.2, 0.2, 0.2]),
    ("std", [0.0, 0.2, 0.2]),
    ("std", [True, 0.2, 0.2]),
    ("align_corners", "yes"),
    ("align_corners", 1),
    ("layer4_dilations", [0, 0, 0]),
    ("layer4_dilations", []),
    ("layer4_dilations", [1.5, 2, 4]),
    ("input_size", [-128, 256]),
    ("input_size", ["a", 2]),
    ("input_size", [64]),
    ("input_size", "64x128"),
    ("depth", "50"),
    ("depth", 51),
    ("depth", True),
    ("num_classes", 0),
    ("num_classes", 19.0),
    ("base_width", -8),
    ("stem_channels", [8, 8]),
    ("stem_channels", [8, 0, 16]),
    ("ignore_index", -1),
    ("ignore_index", 2),  # a class id of a 19-class model
    ("ignore_index", "255"),
    ("position_attention", ["pam"]),
    ("channel_attention", None),
    ("sa_groups", 0),
    ("se_reduction", "16"),
]


def _config(**changes: Any) -> dict[str, Any]:
    data = json.loads(TINY.to_json())
    data.update(changes)
    return data


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_the_validator_refuses_each_bad_field_by_name(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_dict(_config(**{field: value}))


def test_valid_configs_still_load_and_numbers_are_normalised() -> None:
    import numpy as np

    config = ModelConfig.from_dict(_config(num_classes=np.int64(19), mean=[0, 0.5, 1]))
    assert config == TINY.with_overrides(mean=(0.0, 0.5, 1.0)) and type(config.num_classes) is int
    assert ModelConfig.from_json(TINY.to_json()) == TINY


def _with_metadata(source: Path, path: Path, config: dict[str, Any]) -> Path:
    model = onnx.load(str(source))
    write_metadata(model, {META_CONFIG: config})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("field", "value"), [("std", [-0.229, 0.224, 0.225]), ("input_size", [-128, 256]), ("align_corners", "yes")]
)
def test_onnx_metadata_is_validated_at_load_naming_file_and_field(
    fp32_onnx: Path, tmp_path: Path, field: str, value: Any
) -> None:
    path = _with_metadata(fp32_onnx, tmp_path / "hostile.onnx", _config(**{field: value}))
    with pytest.raises(BadInputError, match=rf"hostile\.onnx: invalid model config.*{field}") as error:
        OnnxRuntimeRunner(path)
    assert error.value.exit_code == EXIT_BAD_INPUT


def test_a_class_count_that_differs_from_the_logits_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(5)]
    path = _with_metadata(fp32_onnx, tmp_path / "five.onnx", _config(num_classes=5, class_names=names))
    with pytest.raises(BadInputError, match=r"five\.onnx: .*num_classes 5, but the model's logits have 19"):
        _ = OnnxModel.load(path).config


def test_a_checkpoints_stored_config_is_validated(tiny_ckpt: Path, tmp_path: Path) -> None:
    payload = torch.load(tiny_ckpt, weights_only=True)
    payload["config"]["std"] = [-1.0, 1.0, 1.0]
    torch.save(payload, tmp_path / "negative_std.pth")
    with pytest.raises(BadInputError, match="std must hold 3 positive"):
        load_checkpoint(tmp_path / "negative_std.pth")


def test_an_engine_sidecars_config_is_validated(tmp_path: Path) -> None:
    from danet_deploy.runners.tensorrt import TensorRTRunner

    from .test_engine import _sidecar

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a plan")
    write_sidecar(engine, _sidecar(model_config=_config(layer4_dilations=[0, 0, 0])))
    with pytest.raises(BadInputError, match=r"m\.engine: invalid model config in the sidecar.*layer4_dilations"):
        TensorRTRunner(engine)


# foreign ONNX models ------------------------------------------------------------------------------------------


def test_an_extra_graph_input_is_refused_up_front(fp32_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    onnx.save(model, str(tmp_path / "extra.onnx"))
    with pytest.raises(BadInputError, match=r"extra\.onnx: has 2 inputs \('image', 'extra'\); .*one image input"):
        OnnxRuntimeRunner(tmp_path / "extra.onnx")


def test_another_input_type_or_layout_is_refused_up_front(fp32_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT32
    onnx.save(model, str(tmp_path / "int32.onnx"))
    with pytest.raises(BadInputError, match="unsupported element type"):
        OnnxRuntimeRunner(tmp_path / "int32.onnx")
    model = onnx.load(str(fp32_onnx))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4  # four channels
    onnx.save(model, str(tmp_path / "rgba.onnx"))
    with pytest.raises(BadInputError, match=r"rgba\.onnx: input 'image' is float32 \[1, 4, 64, 128\]"):
        OnnxRuntimeRunner(tmp_path / "rgba.onnx")


def test_simplify_refuses_a_model_that_is_not_fp32(fp32_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    write_metadata(model, {META_PRECISION: {"precision": "fp16"}})
    onnx.save(model, str(tmp_path / "m.fp16.onnx"))
    assert OnnxModel.load(tmp_path / "m.fp16.onnx").precision is Precision.FP16
    with pytest.raises(BadInputError, match=r"m\.fp16\.onnx: is an FP16 model; simplify the FP32 model"):
        simplify_file(tmp_path / "m.fp16.onnx", tmp_path / "out.onnx", SimplifyOptions(target="ort"))
    assert not (tmp_path / "out.onnx").exists()


def test_a_model_file_name_that_is_not_utf8_is_refused_up_front_escaped(fp32_onnx: Path, tmp_path: Path) -> None:
    import os
    import shutil

    latin1 = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.onnx"))
    shutil.copyfile(fp32_onnx, latin1)
    with pytest.raises(BadInputError, match=r"caf\\xe9\.onnx: ONNX Runtime cannot open a file whose name is not UTF-8"):
        OnnxRuntimeRunner(latin1)
