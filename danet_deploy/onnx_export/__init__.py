"""Export stage: PyTorch DANet -> ONNX with config and provenance inside (`torch_export`), and the ONNX
model artifact every later stage takes (`artifact`)."""

from danet_deploy.artifact import (
    META_CONFIG,
    META_GRAPH,
    META_IO,
    META_PRECISION,
    META_PROVENANCE,
    InputSpec,
    OnnxModel,
    Precision,
    graph_precision,
    onnxruntime_session,
    read_metadata,
    write_metadata,
)
from danet_deploy.onnx_export.torch_export import (
    ExportOptions,
    ExportRecord,
    ParityResult,
    check_parity,
    export_onnx,
    io_spec,
)

__all__ = [
    "META_CONFIG",
    "META_GRAPH",
    "META_IO",
    "META_PRECISION",
    "META_PROVENANCE",
    "ExportOptions",
    "ExportRecord",
    "InputSpec",
    "OnnxModel",
    "ParityResult",
    "Precision",
    "check_parity",
    "export_onnx",
    "graph_precision",
    "io_spec",
    "onnxruntime_session",
    "read_metadata",
    "write_metadata",
]
