"""deploy triton / deepstream: config.pbtxt parsed with Triton's own model-config schema and checked field by field
against the model; the nvinfer config, and nvinfer's preprocessing formula on the CPU giving our labels."""

from __future__ import annotations

import configparser
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from onnx import helper

from danet_deploy.artifact import InputSpec, onnxruntime_session
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.deploy.deepstream import apply_nvinfer_preprocessing, nvinfer_preprocessing
from danet_deploy.deploy.model_io import read_model_io
from danet_deploy.engine.sidecar import EngineSidecar, write_sidecar
from danet_deploy.errors import BadInputError
from danet_deploy.files import sha256_file
from danet_deploy.onnx_export import ExportOptions, export_onnx
from danet_deploy.predict import Segmenter
from danet_deploy.steps.deploy import DeepStreamOptions, TritonOptions, deploy_deepstream, deploy_triton

from .conftest import TINY
from .test_cli import assert_one_line_error, run


def model_config_schema() -> ModuleType:
    """Triton's ModelConfig protobuf module as its Python client ships it (tritonclient/grpc/model_config_pb2.py),
    loaded from its file: `tritonclient.grpc` itself imports grpcio, which the schema does not need."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (pip install -e .[dev])")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    loader = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def parse_config(path: Path) -> object:
    from google.protobuf import text_format

    schema = model_config_schema()
    return text_format.Parse(path.read_text(), schema.ModelConfig())


def onnx_dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


TRITON_TYPE = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT32: "TYPE_INT32"}


def check_against_onnx(config: object, model: onnx.ModelProto, batched: bool, labels: bool) -> None:
    """Every tensor field of the parsed config against the ONNX graph."""
    schema = model_config_schema()
    data_type = schema.DataType.Name
    (inp,) = config.input  # type: ignore[attr-defined]
    graph_input = model.graph.input[0]
    assert inp.name == graph_input.name
    assert data_type(inp.data_type) == TRITON_TYPE[graph_input.type.tensor_type.elem_type]
    assert list(inp.dims) == onnx_dims(graph_input)[1 if batched else 0 :]
    graph_outputs = {o.name: o for o in model.graph.output if labels or o.name != "labels"}
    assert [o.name for o in config.output] == list(graph_outputs)  # type: ignore[attr-defined]
    for out in config.output:  # type: ignore[attr-defined]
        graph_output = graph_outputs[out.name]
        assert data_type(out.data_type) == TRITON_TYPE[graph_output.type.tensor_type.elem_type]
        assert list(out.dims) == onnx_dims(graph_output)[1 if batched else 0 :]
        assert out.label_filename == ("labels.txt" if out.name == "logits" else "")


def test_triton_repository_for_a_static_onnx(fp32_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = deploy_triton(fp32_onnx, repo)
    folder = repo / "tiny"
    assert result.files == [folder / "config.pbtxt", folder / "labels.txt", folder / "1" / "model.onnx"]
    config = parse_config(folder / "config.pbtxt")
    schema = model_config_schema()
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx"  # type: ignore[attr-defined]
    assert config.default_model_filename == "model.onnx"  # type: ignore[attr-defined]
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")  # type: ignore[attr-defined]
    check_against_onnx(config, onnx.load(str(fp32_onnx), load_external_data=False), batched=False, labels=True)
    (group,) = config.instance_group  # type: ignore[attr-defined]
    assert group.count == 1 and schema.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
    assert sha256_file(folder / "1" / "model.onnx") == sha256_file(fp32_onnx)
    assert (folder / "labels.txt").read_text().splitlines() == list(TINY.class_names)
    onnxruntime_session(folder / "1" / "model.onnx")  # the copy loads


def _dynamic_with_labels(source: Path, target: Path) -> Path:
    """The tiny model with a dynamic batch dim and an int32 argmax 'labels' output (as `export --argmax`)."""
    model = onnx.load(str(source))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.node.extend(
        [
            helper.make_node("ArgMax", ["logits"], ["labels_i64"], axis=1, keepdims=0),
            helper.make_node("Cast", ["labels_i64"], ["labels"], to=onnx.TensorProto.INT32),
        ]
    )
    model.graph.output.append(helper.make_tensor_value_info("labels", onnx.TensorProto.INT32, ["batch", 64, 128]))
    onnx.save(model, str(target))
    return target


def test_triton_dynamic_batch_and_the_argmax_output(fp32_onnx: Path, tmp_path: Path) -> None:
    model = _dynamic_with_labels(fp32_onnx, tmp_path / "dyn.onnx")
    proto = onnx.load(str(model), load_external_data=False)
    deploy_triton(model, tmp_path / "repo", TritonOptions(name="danet", max_queue_delay_us=250))
    config = parse_config(tmp_path / "repo" / "danet" / "config.pbtxt")
    assert config.max_batch_size == 8  # type: ignore[attr-defined]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250  # type: ignore[attr-defined]
    check_against_onnx(config, proto, batched=True, labels=True)
    deploy_triton(model, tmp_path / "r2", TritonOptions(argmax=False, max_batch_size=4, device="cpu", instances=2))
    config = parse_config(tmp_path / "r2" / "dyn" / "config.pbtxt")
    assert config.max_batch_size == 4 and [o.name for o in config.output] == ["logits"]  # type: ignore[attr-defined]
    check_against_onnx(config, proto, batched=True, labels=False)
    (group,) = config.instance_group  # type: ignore[attr-defined]
    assert group.count == 2 and model_config_schema().ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU"


def fake_engine(
    folder: Path, spec: InputSpec, profile: list[list[int]] | None, dla_core: int | None = None, precision: str = "fp16"
) -> Path:
    """An engine file with the sidecar `build-engine` writes: what deploy reads (no TensorRT runs here)."""
    engine = folder / "model.engine"
    engine.write_bytes(b"serialized plan bytes")
    write_sidecar(
        engine,
        EngineSidecar(
            tensorrt_version="10.3.0",
            gpu_name="Orin",
            compute_capability="8.7",
            cuda_version="12.6",
            precision=precision,
            build_path="weakly typed",
            # One profile, as build-engine writes it: min, opt, max (static: the model's shape three times).
            profiles=[{spec.input_name: profile or [spec.shape(spec.batch or 1, spec.static_size)] * 3}],
            source_onnx="m.onnx",
            source_onnx_sha256="a" * 64,
            network_onnx_sha256="a" * 64,
            model_config=TINY.to_dict(),
            build_options={"dla_core": dla_core},
            build_seconds=1.0,
            engine_sha256=sha256_file(engine),
            created="2026-12-07T00:00:00+00:00",
            input_spec=spec.to_dict(),
        ),
    )
    return engine


def test_triton_repository_for_an_engine_takes_the_profile(tmp_path: Path) -> None:
    spec = InputSpec(batch=None, height=64, width=128)
    engine = fake_engine(tmp_path, spec, [[1, 3, 64, 128], [2, 3, 64, 128], [4, 3, 64, 128]])
    result = deploy_triton(engine, tmp_path / "repo")
    config = parse_config(result.config_path)
    schema = model_config_schema()
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"  # type: ignore[attr-defined]
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")  # type: ignore[attr-defined]
    (inp,) = config.input  # type: ignore[attr-defined]
    assert (inp.name, schema.DataType.Name(inp.data_type), list(inp.dims)) == ("image", "TYPE_FP32", [3, 64, 128])
    (out,) = config.output  # type: ignore[attr-defined]
    assert (out.name, list(out.dims)) == ("logits", [19, 64, 128])
    assert result.model_path.read_bytes() == engine.read_bytes()
    assert "TensorRT 10.3.0" in result.notes[0]
    (tmp_path / "u8").mkdir()
    uint8 = fake_engine(tmp_path / "u8", InputSpec(layout="NHWC", dtype="uint8", batch=1, height=64, width=128), None)
    config = parse_config(deploy_triton(uint8, tmp_path / "r4").config_path)
    (inp,) = config.input  # type: ignore[attr-defined]
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")  # type: ignore[attr-defined]
    assert (schema.DataType.Name(inp.data_type), list(inp.dims)) == ("TYPE_UINT8", [1, 64, 128, 3])
    assert "uint8 NHWC RGB 0-255" in (tmp_path / "r4" / "model" / "config.pbtxt").read_text()
    with pytest.raises(BadInputError, match="GPU only"):
        deploy_triton(engine, tmp_path / "r2", TritonOptions(device="cpu"))
    with pytest.raises(BadInputError, match="profile's max batch 4"):
        deploy_triton(engine, tmp_path / "r3", TritonOptions(max_batch_size=16))


def test_triton_bad_inputs(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no 'labels' output"):
        deploy_triton(fp32_onnx, tmp_path / "r", TritonOptions(argmax=True))
    with pytest.raises(BadInputError, match="model name"):
        deploy_triton(fp32_onnx, tmp_path / "r", TritonOptions(name="a/b"))
    other = tmp_path / "model.pth"
    other.write_bytes(b"x")
    with pytest.raises(BadInputError, match="expected an ONNX model"):
        deploy_triton(other, tmp_path / "r")
    with pytest.raises(BadInputError, match="no such engine"):
        deploy_triton(tmp_path / "none.engine", tmp_path / "r")
    assert not (tmp_path / "r").exists()


# --- DeepStream --------------------------------------------------------------------------------------------------


def read_nvinfer(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read_string(path.read_text())
    return parser["property"]


def nvinfer_labels(onnx_path: Path, frame: np.ndarray, config_path: Path) -> np.ndarray:
    """What nvinfer computes for a frame at the network size: y = net-scale-factor * (x - offsets[c]) on the RGB
    planes, the network, then argmax (threshold 0)."""
    props = read_nvinfer(config_path)
    scale = np.float32(float(props["net-scale-factor"]))
    offsets = np.asarray([float(v) for v in props["offsets"].split(";")], np.float32).reshape(1, 3, 1, 1)
    planar = frame.astype(np.float32).transpose(2, 0, 1)[None]
    logits = onnxruntime_session(onnx_path).run(["logits"], {"image": scale * (planar - offsets)})[0]
    return logits[0].argmax(0)


def test_deepstream_config_for_a_normalized_onnx_is_marked_approximate(fp32_onnx: Path, tmp_path: Path) -> None:
    result = deploy_deepstream(fp32_onnx, tmp_path / "ds")
    props = read_nvinfer(result.config_path)
    assert props["network-type"] == "2" and props["onnx-file"] == "tiny.onnx" and props["infer-dims"] == "3;64;128"
    assert props["network-input-order"] == "0" and props["model-color-format"] == "0"
    assert props["num-detected-classes"] == "19" and props["output-blob-names"] == "logits"
    assert props["labelfile-path"] == "labels.txt" and props["segmentation-threshold"] == "0"
    assert props["network-mode"] == "0" and props["batch-size"] == "1" and "enable-dla" not in props
    assert float(props["net-scale-factor"]) == pytest.approx(1 / (255 * np.mean(TINY.std)))
    assert [float(v) for v in props["offsets"].split(";")] == pytest.approx([255 * m for m in TINY.mean])
    assert "APPROXIMATE" in result.config_path.read_text() and any("APPROXIMATE" in n for n in result.notes)
    assert (tmp_path / "ds" / "labels.txt").read_text().strip().split(";") == list(TINY.class_names)
    pipeline = (tmp_path / "ds" / "deepstream_pipeline.sh").read_text()
    assert "nvinfer config-file-path=nvinfer_config.txt" in pipeline and "width=128 height=64" in pipeline
    # The approximation's effect on one frame (a per-channel scale error of up to 1.3%).
    frame = generate_scene(7, 64, 128).image
    with Segmenter.load(fp32_onnx) as segmenter:
        ours = segmenter.predict(frame).labels
    agreement = float((nvinfer_labels(fp32_onnx, frame, result.config_path) == ours).mean())
    assert agreement > 0.9, agreement


@pytest.mark.slow  # exports a model of its own
def test_deepstream_exact_form_gives_our_labels(tiny_model: object, fp32_onnx: Path, tmp_path: Path) -> None:
    rgb255 = tmp_path / "rgb255.onnx"
    frame = generate_scene(3, 64, 128).image
    export_onnx(tiny_model, TINY, rgb255, ExportOptions(rgb255_input=True), frame)  # type: ignore[arg-type]
    io = read_model_io(rgb255)
    assert not io.spec.normalized and io.spec.layout == "NCHW"
    pre = nvinfer_preprocessing(io)
    assert (pre.net_scale_factor, pre.offsets, pre.exact) == (1.0, (0.0, 0.0, 0.0), True)
    result = deploy_deepstream(rgb255, tmp_path / "ds")
    props = read_nvinfer(result.config_path)
    assert props["net-scale-factor"] == "1" and props["offsets"] == "0;0;0" and not result.notes
    assert "APPROXIMATE" not in result.config_path.read_text()
    for seed in range(3):
        frame = generate_scene(seed, 64, 128).image
        with Segmenter.load(fp32_onnx) as segmenter:  # our preprocessing: (x / 255 - mean) / std, normalized model
            ours = segmenter.predict(frame).labels
        np.testing.assert_array_equal(nvinfer_labels(result.model_path, frame, result.config_path), ours)
        feed = apply_nvinfer_preprocessing(frame, pre)
        np.testing.assert_array_equal(feed, frame.transpose(2, 0, 1)[None].astype(np.float32))
    # The runners feed the RGB 0-255 form as its input spec says: the segmenter on it gives the same labels.
    with Segmenter.load(rgb255) as segmenter:
        np.testing.assert_array_equal(segmenter.predict(frame).labels, ours)


def test_deepstream_engine_with_dla_and_uint8_refused(tmp_path: Path) -> None:
    spec = InputSpec(batch=1, height=64, width=128, normalized=False)
    (tmp_path / "a").mkdir()
    engine = fake_engine(tmp_path / "a", spec, None, dla_core=1, precision="int8")
    result = deploy_deepstream(engine, tmp_path / "ds")
    props = read_nvinfer(result.config_path)
    assert props["model-engine-file"] == "model.engine" and "onnx-file" not in props
    assert (props["enable-dla"], props["use-dla-core"], props["network-mode"]) == ("1", "1", "1")
    assert props["net-scale-factor"] == "1" and result.model_path.read_bytes() == engine.read_bytes()
    (tmp_path / "b").mkdir()
    uint8 = fake_engine(tmp_path / "b", InputSpec(layout="NHWC", dtype="uint8", batch=1, height=64, width=128), None)
    with pytest.raises(BadInputError, match="uint8 NHWC"):
        deploy_deepstream(uint8, tmp_path / "ds2")
    with pytest.raises(BadInputError, match="batch size"):
        DeepStreamOptions(batch_size=0).check()


@pytest.mark.slow
def test_cli_deploy_commands(fp32_onnx: Path, tmp_path: Path) -> None:
    result = run("deploy", "triton", fp32_onnx, "-o", tmp_path / "repo", "--name", "danet")
    assert result.returncode == 0, result.stderr
    assert parse_config(tmp_path / "repo" / "danet" / "config.pbtxt").name == "danet"  # type: ignore[attr-defined]
    result = run("deploy", "deepstream", fp32_onnx, "-o", tmp_path / "ds")
    assert result.returncode == 0 and "APPROXIMATE" in result.stderr, result.stderr
    assert_one_line_error(run("deploy", "triton", fp32_onnx, "-o", tmp_path / "r2", "--argmax"), 2, "'labels'")
