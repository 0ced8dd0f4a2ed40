"""What a build or a run happens on: TensorRT, the GPU CUDA hands this process, and the platform (Jetson or not).

Nothing here needs NVML, which Jetson does not provide:
- the GPU (name, compute capability, memory) comes from the CUDA runtime, through the libcudart Polygraphy
  already finds (`polygraphy.cuda.wrapper()`); CUDA applies `CUDA_VISIBLE_DEVICES` itself, whatever its entries
  are (indices, `GPU-<uuid>`, `MIG-<uuid>`), and device 0 is the first visible one, so the ids are never parsed;
- a Jetson is recognised from `/etc/nv_tegra_release` (Jetson Linux release) and `/proc/device-tree/model`,
  and the JetPack release (with the TensorRT it installs) follows from the Jetson Linux release;
- NVML, where it exists, adds the driver version and nothing else.
Every source is injectable (a CUDA device source, a file-system root, the environment), so the logic is tested
on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import os
import platform as platform_module
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from danet_deploy.errors import EXIT_MISSING_DEPENDENCY, DeployError

INSTALL_HINT = (
    'install it on a machine with an NVIDIA GPU and driver: pip install "danet-deploy[tensorrt]", '
    "or use NVIDIA's TensorRT container (docker/Dockerfile); on Jetson it comes with JetPack"
)

# Jetson Linux (L4T) release -> JetPack release -> the TensorRT it installs (deploy facts; the longest matching
# release prefix wins). JetPack 5 (L4T 35, TensorRT 8.5) is listed so its users are told it is too old.
JETPACK_RELEASES: tuple[tuple[tuple[int, ...], str, str], ...] = (
    ((35,), "5.x", "8.5"),
    ((36, 2), "6.0 DP", "8.6"),
    ((36, 3), "6.0", "8.6"),
    ((36, 4), "6.1", "10.3"),
    ((36, 4, 3), "6.2", "10.3"),
    ((36, 4, 4), "6.2.1", "10.3"),
    ((38, 2), "7.0", "10.13"),
    ((38, 4), "7.1", "10.13"),  # 38.4 as JetPack 7.1: from NVIDIA's Jetson Linux archive naming, not a table
)


@dataclass(frozen=True)
class Platform:
    """The machine: CPU architecture and, on a Jetson, its model and software release."""

    machine: str  # "x86_64", "aarch64"
    jetson_model: str | None = None  # "NVIDIA Jetson AGX Orin Developer Kit"
    l4t_release: str | None = None  # Jetson Linux release, "36.4.3"
    jetpack: str | None = None  # "6.2"
    jetpack_tensorrt: str | None = None  # the TensorRT that JetPack installs, "10.3"

    @property
    def is_jetson(self) -> bool:
        return self.jetson_model is not None or self.l4t_release is not None

    @property
    def no_dla_reason(self) -> str | None:
        """Why this platform has no DLA, or None where it may have one (TensorRT reports the core count)."""
        if not self.is_jetson:
            return f"DLA cores exist only on Jetson (Orin, Xavier); this is a {self.machine} machine with a GPU"
        model = (self.jetson_model or "").lower()
        if "thor" in model:
            return "Jetson Thor has no DLA"
        if "orin nano" in model:
            return "Jetson Orin Nano has no DLA"
        return None

    def describe(self) -> str:
        if not self.is_jetson:
            return self.machine
        name = (self.jetson_model or "Jetson").removeprefix("NVIDIA ")
        release = f"Jetson Linux {self.l4t_release}" if self.l4t_release else "Jetson Linux release unknown"
        return f"{name} (JetPack {self.jetpack}, {release})" if self.jetpack else f"{name} ({release})"


def _release_tuple(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.split(".") if part.isdigit())


def jetpack_for(l4t_release: str) -> tuple[str, str] | None:
    """(JetPack, TensorRT) for a Jetson Linux release like '36.4.3', or None when it is not in the table."""
    release = _release_tuple(l4t_release)
    matches = [(prefix, jp, trt) for prefix, jp, trt in JETPACK_RELEASES if release[: len(prefix)] == prefix]
    if not matches:
        return None
    _, jetpack, tensorrt = max(matches, key=lambda match: len(match[0]))
    return jetpack, tensorrt


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def read_platform(root: str | os.PathLike[str] = "/", machine: str | None = None) -> Platform:
    """The platform from the files a Jetson has (`/etc/nv_tegra_release`, `/proc/device-tree/model`) under `root`."""
    base = Path(root)
    machine = machine or platform_module.machine()
    release_text = _read_text(base / "etc" / "nv_tegra_release")
    model = _read_text(base / "proc" / "device-tree" / "model")
    l4t = None
    if release_text:
        # "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ..."
        found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release_text)
        l4t = f"{found.group(1)}.{found.group(2)}" if found else None
    jetson_model = model if model and "jetson" in model.lower() else None
    if l4t is None and jetson_model is None:
        return Platform(machine)
    jetpack = jetpack_for(l4t) if l4t else None
    return Platform(machine, jetson_model or "NVIDIA Jetson", l4t, *(jetpack or (None, None)))


@dataclass(frozen=True)
class Gpu:
    """The CUDA device this process uses (device 0 of those CUDA_VISIBLE_DEVICES leaves visible)."""

    name: str
    compute_capability: str  # "8.7"
    memory_bytes: int
    integrated: bool  # shares memory with the CPU (Jetson)
    uuid: str | None = None


class CudaDevices(Protocol):
    """Where GPU facts come from: the CUDA runtime on a real machine, a table in tests."""

    def device_count(self) -> int:
        """Visible devices; raises CudaUnavailable with CUDA's reason when there are none."""

    def device(self, index: int) -> Gpu: ...

    def driver_cuda_version(self) -> str | None:
        """The CUDA version the driver supports, '12.6'."""


class CudaUnavailable(Exception):
    """No usable CUDA device; the message is CUDA's reason."""


class CudaRuntimeMissing(CudaUnavailable):
    """libcudart itself was not found."""


class CudaRuntime:
    """libcudart through Polygraphy's CUDA wrapper (it searches LD_LIBRARY_PATH, the CUDA toolkit and pip wheels).

    Names, memory and UUID come from `cudaGetDeviceProperties`, whose leading fields (name[256], uuid[16],
    luid[8], luidDeviceNodeMask, totalGlobalMem) have kept their layout since CUDA 10; compute capability and
    'integrated' come from `cudaDeviceGetAttribute`, which has no layout at all.
    """

    _MAJOR, _MINOR, _INTEGRATED = 75, 76, 18  # cudaDevAttrComputeCapabilityMajor / Minor, cudaDevAttrIntegrated

    def __init__(self, handle: Any = None):
        self._handle = handle

    @property
    def handle(self) -> Any:
        if self._handle is None:
            from danet_deploy.library_noise import quiet

            try:
                with quiet(capture_stdout=True):  # Polygraphy logs its library search on stdout
                    from polygraphy import cuda

                    self._handle = cuda.wrapper().handle
            except Exception as exc:  # PolygraphyException or OSError: no libcudart on this machine
                raise CudaRuntimeMissing(_first_line(exc)) from None
        return self._handle

    def _check(self, status: int) -> None:
        if status != 0:
            self.handle.cudaGetErrorString.restype = ctypes.c_char_p
            reason = self.handle.cudaGetErrorString(status)
            raise CudaUnavailable(f"CUDA error {status}: {reason.decode() if reason else 'unknown'}")

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._check(self.handle.cudaGetDeviceCount(ctypes.byref(count)))
        return count.value

    def _attribute(self, attribute: int, index: int) -> int:
        value = ctypes.c_int(0)
        self._check(self.handle.cudaDeviceGetAttribute(ctypes.byref(value), attribute, index))
        return value.value

    def device(self, index: int) -> Gpu:
        props = ctypes.create_string_buffer(4096)  # larger than cudaDeviceProp of any CUDA release
        query = getattr(self.handle, "cudaGetDeviceProperties_v2", None) or self.handle.cudaGetDeviceProperties
        self._check(query(props, index))
        raw = props.raw
        name = raw[:256].split(b"\x00", 1)[0].decode("utf-8", "replace")
        uuid = raw[256:272].hex()
        memory = int.from_bytes(raw[288:296], "little")  # size_t totalGlobalMem, 8-byte aligned after 284 bytes
        major, minor = self._attribute(self._MAJOR, index), self._attribute(self._MINOR, index)
        integrated = bool(self._attribute(self._INTEGRATED, index))
        dashed = f"GPU-{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
        return Gpu(name, f"{major}.{minor}", memory, integrated, dashed)

    def driver_cuda_version(self) -> str | None:
        version = ctypes.c_int(0)
        if self.handle.cudaDriverGetVersion(ctypes.byref(version)) != 0 or not version.value:
            return None
        return f"{version.value // 1000}.{(version.value % 1000) // 10}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def cuda_devices() -> CudaDevices:
    """The default GPU source (replaced in tests)."""
    return CudaRuntime()


def discover_gpu(cuda: CudaDevices | None = None, environ: Mapping[str, str] | None = None) -> Gpu:
    """Device 0 as CUDA numbers it; a DeployError (exit 3) saying why when there is none."""
    cuda = cuda or cuda_devices()
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    try:
        if cuda.device_count() < 1:
            raise CudaUnavailable("CUDA reports 0 devices")
        return cuda.device(0)
    except CudaRuntimeMissing as exc:
        raise DeployError(
            f"no CUDA runtime library (libcudart) found ({exc}); TensorRT engines need the NVIDIA "
            "driver and CUDA runtime: JetPack and NVIDIA's containers have them, pip installs it "
            "with tensorrt-cu12",
            EXIT_MISSING_DEPENDENCY,
        ) from None
    except CudaUnavailable as exc:
        hint = f"; CUDA_VISIBLE_DEVICES={visible!r} selects which GPUs are visible" if visible is not None else ""
        raise DeployError(
            f"no NVIDIA GPU visible to CUDA ({exc}){hint}; TensorRT engines need one", EXIT_MISSING_DEPENDENCY
        ) from None


def require_tensorrt(platform: Platform | None = None) -> Any:
    """The `tensorrt` module, or a DeployError (exit 3) saying how to get it on this platform."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # PyPI stubs without their native libraries fail here too
        detail = f" ({_first_line(exc)[:100]})" if str(exc) else ""
        platform = platform or read_platform()
        if platform.is_jetson:
            shipped = (
                f"JetPack {platform.jetpack} installs TensorRT {platform.jetpack_tensorrt}"
                if (platform.jetpack)
                else "JetPack installs TensorRT"
            )
            hint = (
                f"{shipped} system-wide (python3-libnvinfer): use a virtual environment made with "
                "`python3 -m venv --system-site-packages`"
            )
        else:
            hint = INSTALL_HINT
        raise DeployError(f"TensorRT is not installed{detail}; {hint}", EXIT_MISSING_DEPENDENCY) from None
    return trt


def nvml_driver_version() -> str | None:
    """The NVIDIA driver version from NVML where it exists (not on Jetson); extra information only."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


@dataclass(frozen=True)
class RunningSystem:
    """TensorRT version and GPU this process would build or run an engine with."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    gpu_memory_bytes: int | None = None
    platform: Platform | None = None
    cuda_version: str | None = None  # the CUDA version the driver supports
    driver_version: str | None = None  # from NVML, where there is NVML

    @property
    def device(self) -> str:
        """'GPU: NVIDIA H200 (SM 9.0, 139.8 GiB)' as runners and tables show it."""
        memory = f", {self.gpu_memory_bytes / 2**30:.1f} GiB" if self.gpu_memory_bytes else ""
        return f"GPU: {self.gpu_name} (SM {self.compute_capability}{memory})"


def running_system(
    cuda: CudaDevices | None = None, root: str | os.PathLike[str] = "/", environ: Mapping[str, str] | None = None
) -> RunningSystem:
    """TensorRT and the GPU here; exit 3 naming what is missing (TensorRT first: nothing works without it)."""
    platform = read_platform(root)
    trt = require_tensorrt(platform)
    cuda = cuda or cuda_devices()
    gpu = discover_gpu(cuda, environ)
    return RunningSystem(
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        gpu_memory_bytes=gpu.memory_bytes,
        platform=platform,
        cuda_version=cuda.driver_cuda_version(),
        driver_version=None if platform.is_jetson else nvml_driver_version(),
    )
