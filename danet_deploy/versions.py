"""Versions of the tools that shape an artifact, recorded in its provenance and in cache keys."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from danet_deploy.version import __version__


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """This machine's CPU model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_memory() -> int | None:
    """Bytes this process can still use: MemAvailable, capped by a cgroup v2 limit; None where unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        usage = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(int(limit) - usage)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def onnxruntime_package() -> tuple[str | None, str | None]:
    """(distribution name, version) of the installed ONNX Runtime: `onnxruntime` or `onnxruntime-gpu`."""
    for name in ("onnxruntime", "onnxruntime-gpu"):
        version = package_version(name)
        if version is not None:
            return name, version
    return None, None


def tool_versions(*extra: str) -> dict[str, Any]:
    """Versions of the tools that shape an artifact, recorded in its provenance.

    torch is recorded as the build that ran (`torch.__version__` keeps the local tag, e.g. `+cpu` or
    `+cu130`, which the distribution version drops) with its CUDA and cuDNN versions (None on a CPU build);
    ONNX Runtime with its package (the GPU package runs on the CPU too) and the providers it offers.
    """
    versions: dict[str, Any] = {"danet-deploy": __version__, "python": platform.python_version()}
    versions.update(torch_build())
    ort_package, versions["onnxruntime"] = onnxruntime_package()
    versions["onnxruntime_package"] = ort_package
    versions["onnxruntime_providers"] = onnxruntime_providers() if ort_package else None
    for name in ("onnx", "onnxscript", *extra):
        versions[name] = package_version(name)
    return versions


def torch_build() -> dict[str, str | None]:
    try:
        import torch
    except ImportError:
        return {"torch": None, "torch_cuda": None, "cudnn": None}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cudnn": str(cudnn) if cudnn else None}


def onnxruntime_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())
