"""System discovery without NVML: Jetson from its release files, the GPU from the CUDA runtime (faked here: a
table, or a stand-in libcudart that fills in what the real one fills in), CUDA_VISIBLE_DEVICES left to CUDA."""

from __future__ import annotations

import ctypes
import sys
import types
from pathlib import Path

import pytest

from danet_deploy import api
from danet_deploy.engine import system
from danet_deploy.engine.plan import BuildOptions
from danet_deploy.engine.system import (
    CudaRuntime,
    CudaUnavailable,
    Gpu,
    Platform,
    discover_gpu,
    read_platform,
    require_tensorrt,
    running_system,
)
from danet_deploy.errors import EXIT_MISSING_DEPENDENCY, DeployError

from .support.fake_system import H100, ORIN, FakeCuda, jetson_root


@pytest.mark.parametrize(
    ("release", "model", "l4t", "jetpack", "tensorrt", "no_dla"),
    [
        (
            "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 "
            "UTC 2024",
            "NVIDIA Jetson AGX Orin Developer Kit",
            "36.3.0",
            "6.0",
            "8.6",
            None,
        ),
        (
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 "
            "UTC 2025",
            "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
            "36.4.3",
            "6.2",
            "10.3",
            None,
        ),
        (
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
            "NVIDIA Jetson Orin Nano Developer Kit",
            "36.4.3",
            "6.2",
            "10.3",
            "Jetson Orin Nano has no DLA",
        ),
        (
            "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64",
            "NVIDIA Jetson AGX Thor Developer Kit",
            "38.2.0",
            "7.0",
            "10.13",
            "Jetson Thor has no DLA",
        ),
    ],
)
def test_jetson_is_recognised_from_its_release_files(
    tmp_path: Path, release: str, model: str, l4t: str, jetpack: str, tensorrt: str, no_dla: str | None
) -> None:
    platform = read_platform(jetson_root(tmp_path, release, model), machine="aarch64")
    assert platform.is_jetson and platform.jetson_model == model
    assert (platform.l4t_release, platform.jetpack, platform.jetpack_tensorrt) == (l4t, jetpack, tensorrt)
    assert platform.no_dla_reason == no_dla
    assert platform.describe() == f"{model.removeprefix('NVIDIA ')} (JetPack {jetpack}, Jetson Linux {l4t})"


def test_jetson_without_release_file_and_unknown_release(tmp_path: Path) -> None:
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson AGX Orin\x00")
    platform = read_platform(tmp_path, machine="aarch64")  # in a container without /etc/nv_tegra_release
    assert platform.is_jetson and platform.jetpack is None and platform.no_dla_reason is None
    unknown = read_platform(jetson_root(tmp_path / "new", "# R39 (release), REVISION: 1.0"), machine="aarch64")
    assert unknown.l4t_release == "39.1.0" and unknown.jetpack is None and "Jetson Linux 39.1.0" in unknown.describe()


def test_x86_datacenter_machine(tmp_path: Path) -> None:
    platform = read_platform(tmp_path, machine="x86_64")
    assert platform == Platform("x86_64") and not platform.is_jetson
    assert "exist only on Jetson" in platform.no_dla_reason
    assert discover_gpu(FakeCuda(H100), environ={}) == H100


@pytest.mark.parametrize(
    "visible",
    [
        "GPU-5a1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        "MIG-1d2c3b4a-5f6e-7d8c-9bab-cdef01234567",
        "MIG-GPU-5a1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/1/0",
        "1,GPU-5a1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
    ],
)
def test_cuda_visible_devices_ids_are_left_to_cuda(visible: str) -> None:
    """UUIDs and MIG ids are never parsed: CUDA applies them and numbers what is visible from 0."""
    mig = Gpu("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "8.0", 4864 * 2**20, False, visible.split(",")[-1])
    assert discover_gpu(FakeCuda(mig), environ={"CUDA_VISIBLE_DEVICES": visible}).name.endswith("MIG 1g.5gb")


class NoDevice:
    def __init__(self, reason: str):
        self.reason = reason

    def device_count(self) -> int:
        raise CudaUnavailable(self.reason)


@pytest.mark.parametrize("visible", [None, "", "MIG-1d2c3b4a-5f6e-7d8c-9bab-cdef01234567"])
def test_no_gpu_is_exit_3_saying_why(visible: str | None) -> None:
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    with pytest.raises(DeployError) as caught:
        discover_gpu(NoDevice("CUDA error 100: no CUDA-capable device is detected"), environ)
    assert caught.value.exit_code == EXIT_MISSING_DEPENDENCY
    message = str(caught.value)
    assert message.startswith("no NVIDIA GPU visible to CUDA (CUDA error 100: no CUDA-capable device is detected)")
    assert ("CUDA_VISIBLE_DEVICES" in message) == (visible is not None)


class FakeLibcudart:
    """What libcudart's functions write into their arguments (layout of cudaDeviceProp's leading fields)."""

    def __init__(self, count: int = 1, status: int = 0):
        self.count, self.status = count, status
        self.cudaGetErrorString = lambda status: b"no CUDA-capable device is detected"

    def cudaGetDeviceCount(self, count_ref: object) -> int:
        count_ref._obj.value = self.count  # type: ignore[attr-defined]
        return self.status

    def cudaGetDeviceProperties(self, props: ctypes.Array, index: int) -> int:
        raw = bytearray(4096)
        raw[:15] = b"NVIDIA H200 NVL"
        raw[256:272] = bytes(range(16))
        raw[288:296] = (143771 * 2**20).to_bytes(8, "little")
        ctypes.memmove(props, bytes(raw), len(raw))
        return 0

    def cudaDeviceGetAttribute(self, value_ref: object, attribute: int, index: int) -> int:
        value_ref._obj.value = {75: 9, 76: 0, 18: 0}[attribute]  # type: ignore[attr-defined]
        return 0

    def cudaDriverGetVersion(self, value_ref: object) -> int:
        value_ref._obj.value = 12080  # type: ignore[attr-defined]
        return 0


def test_cuda_runtime_reads_the_device_properties() -> None:
    cuda = CudaRuntime(FakeLibcudart())
    assert cuda.device_count() == 1 and cuda.driver_cuda_version() == "12.8"
    gpu = cuda.device(0)
    assert gpu == Gpu("NVIDIA H200 NVL", "9.0", 143771 * 2**20, False, "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f")
    with pytest.raises(CudaUnavailable, match="CUDA error 100: no CUDA-capable device is detected"):
        CudaRuntime(FakeLibcudart(count=0, status=100)).device_count()


def test_missing_cuda_runtime_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import polygraphy.cuda

    def no_libcudart() -> None:
        raise OSError("libcudart.so: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(polygraphy.cuda, "wrapper", no_libcudart)
    with pytest.raises(DeployError) as caught:
        discover_gpu(CudaRuntime(), environ={})
    assert caught.value.exit_code == EXIT_MISSING_DEPENDENCY
    assert str(caught.value).startswith("no CUDA runtime library (libcudart) found (libcudart.so: cannot open")


def test_this_machine_without_a_gpu_is_exit_3() -> None:
    try:
        gpu = discover_gpu()
    except DeployError as exc:
        assert exc.exit_code == EXIT_MISSING_DEPENDENCY
        assert str(exc).startswith(("no NVIDIA GPU visible to CUDA (", "no CUDA runtime library (libcudart) found ("))
    else:
        pytest.skip(f"this machine has a GPU ({gpu.name}): the missing-GPU error cannot be shown")


def test_missing_tensorrt_on_jetson_says_how_jetpack_provides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(DeployError) as caught:
        require_tensorrt(read_platform(jetson_root(tmp_path), machine="aarch64"))
    assert caught.value.exit_code == EXIT_MISSING_DEPENDENCY
    assert "JetPack 6.2 installs TensorRT 10.3 system-wide" in str(caught.value)
    assert "--system-site-packages" in str(caught.value)
    with pytest.raises(DeployError, match=r'pip install "danet-deploy\[tensorrt\]"'):
        require_tensorrt(Platform("x86_64"))


def test_running_system_on_a_jetson_without_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVML-only discovery stopped here with "no NVIDIA GPU found"; the CUDA runtime answers on Jetson."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # Jetson: no usable NVML
    here = running_system(FakeCuda(ORIN), root=jetson_root(tmp_path), environ={})
    assert (here.tensorrt_version, here.gpu_name, here.compute_capability) == ("10.3.0", "Orin", "8.7")
    assert here.platform.jetpack == "6.2" and here.driver_version is None and here.cuda_version == "12.6"
    assert here.device == "GPU: Orin (SM 8.7, 64.0 GiB)"


def test_dry_run_on_a_jetson_without_tensorrt_plans_for_its_jetpack(
    fp32_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    orin = read_platform(jetson_root(tmp_path), machine="aarch64")
    monkeypatch.setattr(system, "read_platform", lambda *args, **kwargs: orin)
    result = api.plan_engine(fp32_onnx, BuildOptions(precision="fp16"), dry_run=True)
    assert result.plan.tensorrt_version == "10.3" and result.plan.path == "weakly typed"
    assert result.notes == ["TensorRT not available here; planning for TensorRT 10.3 (what JetPack 6.2 installs)"]


@pytest.mark.parametrize(
    ("release", "version", "refused"),
    [
        ("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64", "11.4.1", True),  # JetPack 6.2
        ("# R36 (release), REVISION: 2.0, GCID: 1, BOARD: generic, EABI: aarch64", "10.3", False),  # JetPack 6.0 DP
        ("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64", "10.3", False),
    ],
)
def test_dla_on_tensorrt_11_needs_jetpack_7_2_2(tmp_path: Path, release: str, version: str, refused: bool) -> None:
    """TensorRT 11.4.1 brings DLA back on AGX Orin with JetPack 7.2.2+ only (11.4.1 release notes)."""
    from danet_deploy.engine.build import check_platform
    from danet_deploy.engine.plan import BuildPlan
    from danet_deploy.errors import BadInputError

    from .support.fake_system import jetson_root

    platform = read_platform(jetson_root(tmp_path, release))
    options = BuildOptions(precision="fp16", dla_core=0, gpu_fallback=True)
    plan = BuildPlan(version, "weakly typed", "fp16", "m.onnx", "fp32", "m.onnx", [], [], [], {}, [], options)
    if refused:
        with pytest.raises(BadInputError, match=r"needs JetPack 7\.2\.2 or later"):
            check_platform(plan, platform)
    else:
        check_platform(plan, platform)
