"""A content-keyed cache of INT8 calibration results.

`CalibrationCache` stores the finished quantized ONNX bytes, keyed by everything that shapes them (see
`cache_key_material`). Storing activation ranges instead would not save the expensive step: ModelOpt's
`calibration_cache_path` only overrides scales after it has run its own calibration pass.

The cache folder is not trusted: an entry is used only when its bytes match the sha256 its JSON record holds
and the record's key material hashes to the entry's key. A missing, truncated, altered or replaced entry, or
a missing or unreadable record, is a `CalibrationWarning` (one line), removed, and recalibrated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from danet_deploy.artifact import OnnxModel
from danet_deploy.errors import BadInputError
from danet_deploy.files import kept, write_bytes, write_json
from danet_deploy.precision.calibration_data import CalibrationSet, CalibrationWarning
from danet_deploy.version import __version__
from danet_deploy.versions import onnxruntime_package, package_version

log = logging.getLogger(__name__)

CACHE_ENV = "DANET_DEPLOY_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/danet-deploy/calib")
CACHE_FORMAT = 2  # bump when what the cache stores changes meaning (2: the record holds the entry's sha256)
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
    """`<dir>/<key>.onnx` holds a result; `<dir>/<key>.json` its record: the entry's sha256 and size, and the key
    material (to see why a key differs). `warnings` collects the bad entries `get` found, one line each."""

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = cache_dir(directory)
        self.warnings: list[str] = []

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.onnx"

    def record_path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> bytes | None:
        """The entry's bytes if it is intact; None on a miss. A bad entry is reported, removed and a miss."""
        data, problem = self._read(key)
        if problem is None:
            return data
        removed = self._remove(key)
        message = f"calibration cache: {self.path(key)} {problem}; {removed}, recalibrating"
        self.warnings.append(message)
        warnings.warn(message, CalibrationWarning, stacklevel=2)  # the CLI shows it as one 'warning:' line
        return None

    def _read(self, key: str) -> tuple[bytes | None, str | None]:
        """(bytes, None) for an intact entry, (None, None) for no entry, else (None, what is wrong)."""
        entry, record = self.path(key), self.record_path(key)
        try:
            data = entry.read_bytes()
        except FileNotFoundError:
            return None, ("is missing but its record is there" if record.exists() else None)
        except OSError as exc:
            return None, f"cannot be read ({exc.strerror or exc})"
        try:
            stored = json.loads(record.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, f"has no record {record.name} (its content hash)"
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return None, f"has an unreadable record {record.name} ({type(exc).__name__})"
        expected = stored.get("entry_sha256") if isinstance(stored, dict) else None
        material = stored.get("key_material") if isinstance(stored, dict) else None
        if not isinstance(expected, str) or not isinstance(material, dict):
            return None, f"has a record {record.name} without a content hash and key material"
        if cache_key(material) != key:  # a record copied from another entry
            return None, f"has a record {record.name} of another key"
        if hashlib.sha256(data).hexdigest() != expected:  # truncated, altered or replaced after it was written
            size = stored.get("entry_bytes")
            return None, f"does not match its recorded sha256 ({len(data)} bytes, recorded {size})"
        return data, None

    def _remove(self, key: str) -> str:
        try:
            for path in (self.path(key), self.record_path(key)):
                path.unlink(missing_ok=True)
        except OSError as exc:  # the next put() replaces it anyway (atomic rename)
            return f"could not remove it ({exc.strerror or exc})"
        return "removed it"

    def put(self, key: str, data: bytes, material: dict[str, Any]) -> None:
        """Atomic writes, the record last: an entry whose record is missing is never used. A cache that cannot
        be written only costs the next run time, so it only warns."""
        record = {
            "format": CACHE_FORMAT,
            "entry_sha256": hashlib.sha256(data).hexdigest(),
            "entry_bytes": len(data),
            "key_material": material,
        }
        try:
            with kept():  # a valid entry outlives a later failure of the command (a rerun would recalibrate)
                write_bytes(self.path(key), data)
                write_json(self.record_path(key), record)
        except (OSError, BadInputError) as exc:  # the writer names a full or read-only destination as bad input
            log.warning("calibration cache: cannot write to %s (%s)", self.directory, exc)
