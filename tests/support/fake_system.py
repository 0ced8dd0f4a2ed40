"""The machine the engine code asks about, faked for tests without a GPU: what the CUDA runtime reports for one
device, Polygraphy's CUDA stream, and a Jetson's release files under a temporary root."""

from __future__ import annotations

from pathlib import Path

from danet_deploy.engine.system import Gpu


class FakeCuda:
    """The CUDA runtime's answer for one GPU (the system module asks it instead of libcudart)."""

    def __init__(self, gpu: Gpu):
        self.gpu = gpu

    def device_count(self) -> int:
        return 1

    def device(self, index: int) -> Gpu:
        return self.gpu

    def driver_cuda_version(self) -> str | None:
        return "12.6"


class FakeStream:
    """Polygraphy's CUDA stream for TrtRunner.activate (CUDA runtime, not TensorRT API)."""

    ptr = 0

    def free(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


ORIN = Gpu("Orin", "8.7", 64 * 2**30, True, "GPU-00000000-0000-0000-0000-000000000000")
H100 = Gpu("NVIDIA H100 80GB HBM3", "9.0", 80 * 2**30, False, "GPU-11111111-1111-1111-1111-111111111111")


def jetson_root(
    tmp: Path,
    release: str = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
    model: str = "NVIDIA Jetson AGX Orin Developer Kit",
) -> Path:
    (tmp / "etc").mkdir(parents=True, exist_ok=True)
    (tmp / "proc" / "device-tree").mkdir(parents=True, exist_ok=True)
    (tmp / "etc" / "nv_tegra_release").write_text(release + "\n")
    (tmp / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\x00")
    return tmp
