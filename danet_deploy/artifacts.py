"""Artifact plumbing shared by every stage: atomic writes, content hashes, provenance."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from . import __version__


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A failed or interrupted stage therefore never leaves a half-written artifact behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_versions(*extra: str) -> dict[str, str | None]:
    """Versions of the tools that shape an artifact, recorded in its provenance."""
    names = ("torch", "onnx", "onnxruntime", "onnxscript", *extra)
    versions: dict[str, str | None] = {"danet-deploy": __version__, "python": platform.python_version()}
    for name in names:
        version = package_version(name)
        if version is None and name == "onnxruntime":
            version = package_version("onnxruntime-gpu")
        versions[name] = version
    return versions
