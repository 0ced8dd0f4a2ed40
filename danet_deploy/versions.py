"""Versions of the tools that shape an artifact, recorded in its provenance and in cache keys."""

from __future__ import annotations

import platform
import resource
from dataclasses import dataclass
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


@dataclass(frozen=True)
class MemoryBound:
    """Memory this process can still use by one measure, and which measure it is."""

    bytes: int
    source: str  # "MemAvailable", "cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes" or "RLIMIT_AS"


# cgroup v1 says "no limit" with a page-rounded 2**63 - 1; anything from 2**62 up is no limit.
CGROUP_V1_UNLIMITED = 1 << 62


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # missing, unreadable, or "max"
        return None


def _cgroup_paths(proc: Path) -> dict[str, str]:
    """This process's cgroup per controller from /proc/self/cgroup ('' is the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    return paths


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """The process's cgroup folder and its ancestors up to the mount (any of them may hold the tightest limit).
    In a container the mount is the container's own cgroup while /proc names the host's path: then the mount."""
    deepest = mount / path.lstrip("/")
    if not deepest.is_dir():
        return [mount]
    return [deepest, *(p for p in deepest.parents if p == mount or mount in p.parents)]


def _cgroup_bounds(kind: str, mount: Path, path: str, limit_file: str, usage_file: str) -> list[MemoryBound]:
    bounds = []
    for folder in _cgroup_dirs(mount, path):
        limit = _read_int(folder / limit_file)
        if limit is None or limit >= CGROUP_V1_UNLIMITED:
            continue
        usage = _read_int(folder / usage_file) or 0
        bounds.append(MemoryBound(max(limit - usage, 0), f"{kind} {limit_file}"))
    return bounds


def _virtual_size(proc: Path) -> int:
    try:
        with open(proc / "self" / "status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
    except (OSError, ValueError):
        return 0


def memory_bounds(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> list[MemoryBound]:
    """Every limit on the memory this process can still use: the machine's MemAvailable, a cgroup v2 memory.max
    or cgroup v1 memory.limit_in_bytes (less the group's usage; the group's ancestors too) and the process's
    address-space limit RLIMIT_AS (`ulimit -v`, less what is mapped)."""
    bounds: list[MemoryBound] = []
    try:
        with open(proc / "meminfo") as f:
            bounds += [
                MemoryBound(int(line.split()[1]) * 1024, "MemAvailable")
                for line in f
                if line.startswith("MemAvailable:")
            ]
    except (OSError, ValueError):
        pass
    paths = _cgroup_paths(proc)
    if "" in paths:  # v2: mounted at the root (unified) or beside v1 controllers (hybrid)
        for mount in (cgroup, cgroup / "unified"):
            if (mount / "cgroup.controllers").exists():
                bounds += _cgroup_bounds("cgroup v2", mount, paths[""], "memory.max", "memory.current")
    if "memory" in paths:
        bounds += _cgroup_bounds(
            "cgroup v1", cgroup / "memory", paths["memory"], "memory.limit_in_bytes", "memory.usage_in_bytes"
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        bounds.append(MemoryBound(max(soft - _virtual_size(proc), 0), "RLIMIT_AS"))
    return bounds


def memory_bound() -> MemoryBound | None:
    """The tightest of `memory_bounds`: what this process can still use and which limit says so; None if unknown."""
    return min(memory_bounds(), key=lambda b: b.bytes, default=None)


def available_memory() -> int | None:
    """Bytes this process can still use (`memory_bound`); None where unknown."""
    bound = memory_bound()
    return bound.bytes if bound is not None else None


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
