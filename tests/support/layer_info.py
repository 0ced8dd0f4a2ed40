"""Rewrite real TensorRT 8.x/10.x layer information into the TensorRT 11 layout, for the audit tests.

TensorRT 11 split each tensor's "Format/Datatype" string into "Datatype" and "Format" (TensorRT 11.0 migration
guide; Polygraphy 0.53.6 `extractors/_trt.py` reads both). The exact TensorRT 11 spellings of the two values are
not in any source we have, so the rewrite takes a data type spelling as a parameter: the audit must read each.
"""

from __future__ import annotations

import copy
import re
from typing import Any

# Type word in the 8.x/10.x string -> our name.
_OLD_WORDS = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8", "int32": "INT32", "bfloat16": "BF16"}
SPELLINGS = {
    "enum": {"FP32": "FLOAT", "FP16": "HALF", "INT8": "INT8", "INT32": "INT32", "BF16": "BF16"},  # trt.DataType
    "words": {"FP32": "Float", "FP16": "Half", "INT8": "Int8", "INT32": "Int32", "BF16": "BFloat16"},
    "short": {"FP32": "FP32", "FP16": "FP16", "INT8": "Int8", "INT32": "Int32", "BF16": "BF16"},
}


def split_tensor(tensor: dict[str, Any], spelling: str) -> dict[str, Any]:
    """{"Format/Datatype": "Row major linear FP16 format"} -> {"Datatype": "Half", "Format": "Row major linear"}."""
    text = tensor.pop("Format/Datatype")
    found = re.search(r"\b(fp32|fp16|int8|int32|bfloat16)\b", text, re.IGNORECASE)
    assert found, text
    ours = _OLD_WORDS[found.group(1).lower()]
    layout = re.sub(r"\s+", " ", (text[: found.start()] + text[found.end() :]).replace(" format", "")).strip()
    return {**tensor, "Datatype": SPELLINGS[spelling][ours], "Format": layout}


def to_trt11_layout(data: dict[str, Any], spelling: str = "words") -> dict[str, Any]:
    out = copy.deepcopy(data)
    for layer in out["Layers"]:
        for key in ("Inputs", "Outputs"):
            layer[key] = [split_tensor(dict(t), spelling) for t in layer.get(key, [])]
    return out
