"""General cleanup with onnxslim: constant folding, shape-op simplification, dead nodes, CSE."""

from __future__ import annotations

import contextlib
import io

import onnx


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim keeps symbolic dims (dynamic axes stay dynamic) and the metadata props."""
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()):
        slim = onnxslim.slim(model)
    assert isinstance(slim, onnx.ModelProto)
    if not slim.metadata_props:
        slim.metadata_props.extend(model.metadata_props)
    return slim
