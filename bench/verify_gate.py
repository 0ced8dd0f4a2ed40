"""verify's FP32 gate on deep models at deployment sizes: a faithful export passes, a broken bias or a wrong
normalization fails.

    python bench/verify_gate.py                                   # R50 and R101 at 512x1024, 2 bundled images
    python bench/verify_gate.py --depths 101 --sizes 512x1024 1024x2048 --images 2

Each model is a random-weight DANet with trained-scale statistics (BatchNorm statistics measured on images, PAM and
CAM active: `bench.common`), exported to ONNX at the size, and verified on bundled labeled scenes three ways: as
exported (faithful), with one BatchNorm bias in layer3 shifted by a tenth of its scale in the reference (a broken
bias), and with the reference normalizing with a mean 0.01 off (a wrong normalization). Prints, per case, the FP32
noise floor, the tolerance derived from it and the measured max |diff|, label agreement and verdict.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import active_attention, trained_statistics  # noqa: E402
from danet_deploy.config import ModelConfig, parse_size  # noqa: E402
from danet_deploy.data.bundled import sample_image  # noqa: E402
from danet_deploy.data.datasets import open_dataset  # noqa: E402
from danet_deploy.data.preprocess import resize_image  # noqa: E402
from danet_deploy.evaluate.verify import verify  # noqa: E402
from danet_deploy.model import build_danet  # noqa: E402
from danet_deploy.onnx_export import ExportOptions, export_onnx  # noqa: E402
from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from danet_deploy.runners.pytorch import PyTorchRunner  # noqa: E402

DATA = ROOT / "danet_deploy" / "assets" / "demo_data"


def run(depth: int, size: tuple[int, int], images: int, work: Path) -> list[str]:
    config = ModelConfig(depth=depth, input_size=size)
    torch.manual_seed(0)
    model = trained_statistics(active_attention(build_danet(config)))
    path = work / f"r{depth}_{size[0]}x{size[1]}.onnx"
    started = time.perf_counter()
    export_onnx(model, config, path, ExportOptions(atol=1e-1, rtol=0.0), resize_image(sample_image(), size))
    print(f"R{depth} {size}: exported in {time.perf_counter() - started:.0f} s", flush=True)
    dataset = open_dataset(DATA).head(images)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        bn = broken.backbone.layer3[len(broken.backbone.layer3) // 2].bn2
        bn.bias.add_(0.1 * bn.weight.abs().mean())
    wrong = dataclasses.replace(config, mean=tuple(m + 0.01 for m in config.mean))
    rows = []
    for case, reference, ref_config in (
        ("faithful", model, config),
        ("broken bias", broken, config),
        ("wrong normalization", model, wrong),
    ):
        started = time.perf_counter()
        report = verify(dataset, [PyTorchRunner(reference, ref_config), OnnxRuntimeRunner(path, bounded=True)], config)
        b, noise = report.backends[1], report.fp32_noise
        (tolerance,) = [t.value for t in report.limits("fp32") if t.name == "max_abs_diff"]
        row = (
            f"| R{depth} | {size[0]}x{size[1]} | {case} | {noise.max_abs:.2e} | {noise.max_logit:.3g} | "
            f"{tolerance:.2e} | {b.max_abs_diff:.2e} | {b.pixel_agreement:.4%} | "
            f"{'pass' if report.passed else 'FAIL: ' + '; '.join(b.failures)} | {time.perf_counter() - started:.0f} s |"
        )
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", nargs="+", type=int, default=[50, 101])
    parser.add_argument("--sizes", nargs="+", default=["512x1024"])
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()
    print(
        "| model | input | case | FP32 noise (vs float64) | max abs logit | FP32 tolerance | max abs diff | "
        "pixel agreement | verify | time |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory(prefix="danet-verify-gate-") as tmp:
        for size in args.sizes:
            for depth in args.depths:
                run(depth, parse_size(size), args.images, Path(tmp))


if __name__ == "__main__":
    main()
