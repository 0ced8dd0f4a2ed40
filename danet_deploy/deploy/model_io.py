"""The tensors of a deployable model file (ONNX or TensorRT engine + sidecar), as serving runtimes describe them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from danet_deploy.artifact import InputSpec, OnnxModel
from danet_deploy.config import ModelConfig
from danet_deploy.errors import BadInputError

if TYPE_CHECKING:
    from danet_deploy.engine.sidecar import EngineSidecar

_ONNX_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
}


@dataclass(frozen=True)
class Tensor:
    """One input or output.

    Attributes:
        name: the tensor's name in the graph / engine.
        dtype: numpy name ("float32", "uint8", "int32", ...).
        shape: every dim, batch first; None for a dynamic dim.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class ModelIO:
    """What a serving runtime needs to know of a model file.

    Attributes:
        path: the ONNX file or engine.
        kind: "onnx" or "engine".
        config: the model config (classes, palette, normalization).
        spec: the input spec (layout, dtype, normalized or not, static or dynamic size).
        input: the image input.
        outputs: logits (and labels when exported with argmax).
        max_batch: the largest batch the model takes: a static batch, an engine profile's max, None when unbounded.
        precision: "fp32", "fp16" or "int8".
        sidecar: an engine's sidecar (engine.sidecar.EngineSidecar), None for ONNX.
        external_data: files an ONNX model's weights live in beside it.
    """

    path: Path
    kind: str
    config: ModelConfig
    spec: InputSpec
    input: Tensor
    outputs: tuple[Tensor, ...]
    max_batch: int | None
    precision: str
    sidecar: EngineSidecar | None = None
    external_data: tuple[Path, ...] = field(default=())

    @property
    def dynamic_batch(self) -> bool:
        return self.input.shape[0] is None

    def output(self, name: str) -> Tensor | None:
        return next((t for t in self.outputs if t.name == name), None)


def _tensor(value: onnx.ValueInfoProto, where: Path) -> Tensor:
    tensor = value.type.tensor_type
    dtype = _ONNX_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise BadInputError(f"{where}: tensor {value.name!r} has an unsupported element type {tensor.elem_type}")
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return Tensor(value.name, dtype, dims)


def read_model_io(path: str | os.PathLike[str]) -> ModelIO:
    """The tensors of an ONNX model (from its graph) or a TensorRT engine (from its sidecar: build-time names,
    dims and the optimization profile); one-line BadInputError for anything else."""
    from danet_deploy.engine.sidecar import ENGINE_SUFFIXES

    where = Path(path)
    if where.suffix.lower() in ENGINE_SUFFIXES:
        return _engine_io(where)
    if where.suffix.lower() != ".onnx":
        raise BadInputError(
            f"{where}: expected an ONNX model (.onnx) or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})"
        )
    from danet_deploy.files import onnx_external_data

    model = OnnxModel.load(where, external_data=False)
    graph = model.proto.graph
    inputs = [v for v in graph.input if v.name not in {i.name for i in graph.initializer}]
    image = _tensor(inputs[0], where)
    outputs = tuple(_tensor(v, where) for v in graph.output)
    batch = image.shape[0]
    return ModelIO(
        where,
        "onnx",
        model.config,
        model.input_spec,
        image,
        outputs,
        batch,
        model.precision.value,
        None,
        tuple(onnx_external_data(where)),
    )


def _engine_io(where: Path) -> ModelIO:
    from danet_deploy.engine.sidecar import read_sidecar

    if not where.is_file():
        raise BadInputError(f"{where}: no such engine file")
    sidecar = read_sidecar(where)
    spec = sidecar.spec
    if not sidecar.model_config:
        raise BadInputError(f"{where}: the sidecar has no model config")
    try:
        config = ModelConfig.from_dict(sidecar.model_config)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{where}: invalid model config in the sidecar ({exc})") from None
    profile = sidecar.profiles[0].get(spec.input_name) if sidecar.profiles else None
    batch: int | None = spec.batch
    if batch is None and profile:
        batch = int(profile[2][0])  # the profile's max batch
    dims: tuple[int | None, ...] = (
        (spec.batch, spec.height, spec.width, 3) if spec.uint8 else (spec.batch, 3, spec.height, spec.width)
    )
    image = Tensor(spec.input_name, spec.dtype, dims)
    outputs: list[Tensor] = []
    for name in spec.output_names:
        if name == "labels":  # export's argmax output
            outputs.append(Tensor(name, "int32", (spec.batch, spec.height, spec.width)))
        else:
            outputs.append(Tensor(name, "float32", (spec.batch, config.num_classes, spec.height, spec.width)))
    return ModelIO(where, "engine", config, spec, image, tuple(outputs), batch, sidecar.precision, sidecar)
