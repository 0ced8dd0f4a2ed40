"""What the INT8 and FP16 stages share: their FP32 source, their output's metadata, ModelOpt node patterns."""

from __future__ import annotations

import os
import re
from typing import Any

import onnx

from ..errors import BadInputError
from ..export.artifact import META_PRECISION, OnnxModel, Precision, write_metadata


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


def compile_patterns(patterns: list[str]) -> list[re.Pattern[str]]:
    """`--exclude` node patterns (names or regular expressions); a bad one is a one-line BadInputError."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, OverflowError, RecursionError) as exc:
            raise BadInputError(f"--exclude {pattern!r}: not a valid regular expression ({exc})") from None
    return compiled


def check_patterns_match(model: onnx.ModelProto, patterns: list[str], path: object) -> None:
    """Each `--exclude` pattern must select a node (`re.match` on node names, as ModelOpt applies them): one that
    selects none would be reported as kept in higher precision while nothing was."""
    names = [node.name for node in model.graph.node]
    for pattern, compiled in zip(patterns, compile_patterns(patterns)):
        if not any(compiled.match(name) for name in names):
            raise BadInputError(f"--exclude {pattern!r}: matches no node of {path} (`inspect --json` lists them)")


def exact_names(names: list[str]) -> list[str]:
    """Node names as anchored regular expressions (ModelOpt's nodes_to_exclude are `re.match` patterns)."""
    return [f"^{re.escape(n)}$" for n in names]
