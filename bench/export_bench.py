"""Export time and ONNX size of DANet ResNet-50 / ResNet-101 at 512x1024 (Cityscapes, 19 classes).

    python bench/export_bench.py            # writes the "export" section of docs/benchmarks.md

Weights are randomly initialized (seeded): export time, size and parity do not depend on training.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import active_attention, machine, mib, write_section
from danet_deploy.config import ModelConfig
from danet_deploy.data.bundled import sample_image
from danet_deploy.model import build_danet
from danet_deploy.onnx_export import ExportOptions, export_onnx


def main() -> None:
    rows = []
    image = sample_image()
    for depth in (50, 101):
        torch.manual_seed(0)
        config = ModelConfig(depth=depth, input_size=(512, 1024))
        model = active_attention(build_danet(config).eval())
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"danet_r{depth}.onnx"
            started = time.perf_counter()
            record = export_onnx(model, config, path, ExportOptions(), image)
            total = time.perf_counter() - started
        parity = record.parity[0]
        row = (
            f"| ResNet-{depth} | {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M | "
            f"{record.export_seconds:.1f} s | {total:.1f} s | {mib(record.size_bytes)} | "
            f"{parity.max_abs_diff:.2e} (tol {parity.tolerance:.1e}) | {parity.label_agreement:.4%} |"
        )
        print(row, flush=True)
        rows.append(row)
    body = "\n".join(
        [
            "## Export: DANet at 512x1024, static batch 1, opset 18 (dynamo exporter)",
            "",
            f"Machine: {machine()}. Command: `python bench/export_bench.py`. Random (seeded) weights, PAM/CAM gamma 0.5/0.3 so attention reaches the output.",
            "Export = torch.onnx export + metadata; total adds onnx.checker (full) and the ONNX Runtime vs PyTorch",
            "parity run on a bundled image resized to 512x1024.",
            "",
            "| backbone | parameters | export | export + checks | ONNX size | max abs diff ORT vs PyTorch | label agreement |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_section("export", body)


if __name__ == "__main__":
    main()
