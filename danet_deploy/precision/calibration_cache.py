"""A content-keyed cache of INT8 calibration results.

`CalibrationCache` stores the finished quantized ONNX bytes, keyed by everything that shapes them (see
`cache_key_material`). Storing activation ranges instead would not save the expensive step: ModelOpt's
`calibration_cache_path` only overrides scales after it has run its own calibration pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..export.artifact import OnnxModel
from ..files import write_bytes, write_text
from ..versions import onnxruntime_package, package_version
from .calibration_data import CalibrationSet

log = logging.getLogger(__name__)

CACHE_ENV = "DANET_DEPLOY_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/danet-deploy/calib")
CACHE_FORMAT = 1  # bump when what the cache stores changes meaning
# Packages whose version can change the cached bytes (decoding, calibration, Q/DQ placement); ONNX Runtime
# too, under either of its package names.
KEY_PACKAGES = ("nvidia-modelopt", "onnx", "numpy", "pillow")


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The argument, else $DANET_DEPLOY_CACHE, else ~/.cache/danet-deploy/calib."""
    chosen = override or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def key_tool_versions() -> dict[str, str | None]:
    """Versions of the tools that can change a precision stage's output (cache key and output metadata)."""
    versions = {name: package_version(name) for name in KEY_PACKAGES}
    versions["onnxruntime"] = onnxruntime_package()[1]
    versions["danet-deploy"] = __version__
    return versions


def cache_key_material(model: OnnxModel, calib: CalibrationSet, **settings: Any) -> dict[str, Any]:
    """Everything that shapes the cached result: model bytes, image bytes, settings, tool versions.

    Images enter by name (relative to the data folder, so moving the folder keeps the key) and content hash.
    """
    return {
        "format": CACHE_FORMAT,
        "onnx_sha256": model.sha256,
        "images": [[n, h] for n, h in zip(calib.names, calib.hashes)],
        "count": len(calib),
        "seed": calib.seed,
        "input": {"name": calib.input_name, "dtype": calib.input.dtype, "size": list(calib.size)},
        "preprocess": {"mean": list(calib.config.mean), "std": list(calib.config.std)},
        "settings": settings,
        "tools": key_tool_versions(),
    }


def cache_key(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class CalibrationCache:
    """`<dir>/<key>.onnx` holds a result, `<dir>/<key>.json` the key material (to see why a key differs)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = cache_dir(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.onnx"

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # an unreadable cache entry is a miss, not a failure
            log.warning("calibration cache: cannot read %s (%s); recalibrating", path, exc)
            return None

    def put(self, key: str, data: bytes, material: dict[str, Any]) -> None:
        """Atomic writes; a cache that cannot be written only costs the next run time, so it only warns."""
        try:
            write_text(self.directory / f"{key}.json", json.dumps(material, indent=1))
            write_bytes(self.path(key), data)
        except OSError as exc:
            log.warning("calibration cache: cannot write to %s (%s)", self.directory, exc)
