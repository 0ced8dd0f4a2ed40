"""The FP32 model a precision stage starts from, and the metadata its output carries."""

from __future__ import annotations

import os
from typing import Any

import onnx

from danet_deploy.artifact import META_PRECISION, OnnxModel, Precision, write_metadata
from danet_deploy.errors import BadInputError


def fp32_source(model: OnnxModel | str | os.PathLike[str]) -> OnnxModel:
    """The FP32 model a precision stage starts from (loaded once, weights included, when given a path).

    One-line BadInputError for a missing, corrupt or foreign file (no danet-deploy model config) and for a
    model that is already INT8 or FP16.
    """
    if not isinstance(model, OnnxModel):
        model = OnnxModel.load(model)
    _ = model.config  # raises when not exported by danet-deploy
    model.require_runnable()
    if model.precision is Precision.INT8:
        raise BadInputError(f"{model.path}: already quantized (INT8); start from the FP32 ONNX")
    if model.precision is not Precision.FP32:
        raise BadInputError(f"{model.path}: already {model.precision.value.upper()}; start from the FP32 ONNX")
    return model


def finish_model(model: onnx.ModelProto, source: OnnxModel, entry: dict[str, Any]) -> None:
    """Carry the source's danet-deploy metadata over (the tools drop it) and add the precision entry."""
    have = {p.key for p in model.metadata_props}
    for prop in source.proto.metadata_props:
        if prop.key not in have:
            model.metadata_props.add(key=prop.key, value=prop.value)
    write_metadata(model, {META_PRECISION: entry})
    model.producer_name = "danet-deploy"
    if source.proto.doc_string:
        model.doc_string = source.proto.doc_string
