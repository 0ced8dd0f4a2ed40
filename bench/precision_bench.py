"""Quantization time and ONNX Runtime CPU latency of the demo DANet at 512x1024: FP32 vs INT8 (and FP16).

    python bench/precision_bench.py        # writes the "precision" section of docs/benchmarks.md

FP16 on the CPU provider is emulated (most FP16 kernels run in FP32 with casts): its latency says nothing
about a GPU and is listed only for completeness.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_section
from danet_deploy.checkpoints import load_checkpoint
from danet_deploy.data.bundled import DEMO_CHECKPOINT, sample_image
from danet_deploy.data.synthetic import write_calibration_images
from danet_deploy.evaluate.benchmark import benchmark
from danet_deploy.onnx_export import ExportOptions, export_onnx
from danet_deploy.options import Fp16Options, Int8Options
from danet_deploy.precision import convert_fp16, quantize_int8
from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner

SIZE = (512, 1024)


def main() -> None:
    loaded = load_checkpoint(DEMO_CHECKPOINT)
    image = sample_image()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = work / "demo_512x1024.onnx"
        export_onnx(loaded.model, loaded.config, fp32, ExportOptions(input_size=SIZE), image, loaded.provenance())
        calib = write_calibration_images(work / "calib", 100)
        started = time.perf_counter()
        int8, int8_record = quantize_int8(
            fp32, work / "demo_512x1024.int8.onnx", Int8Options(calib=calib, cache_dir=work / "cache")
        )
        int8_seconds = time.perf_counter() - started
        started = time.perf_counter()
        fp16, _ = convert_fp16(fp32, work / "demo_512x1024.fp16.onnx", Fp16Options(calib=calib, count=32))
        fp16_seconds = time.perf_counter() - started
        runners = [
            OnnxRuntimeRunner(p, name)
            for p, name in ((fp32, "FP32"), (int8, "INT8 (Q/DQ)"), (fp16, "FP16 (emulated on CPU)"))
        ]
        results = benchmark(runners, image, warmup=3, iterations=10)
    rows = []
    for r in results["backends"]:
        if "error" in r:
            rows.append(f"| {r.get('name', '?')} | failed: {r['error']} | | | |")
            continue
        rows.append(
            f"| {r['name']} | {r['median_ms']:.0f} ms | {r['p90_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
            f"{r['peak_rss_mib']:.0f} MiB |"
        )
    ok = [r for r in results["backends"] if "error" not in r]
    ratio = ok[0]["median_ms"] / ok[1]["median_ms"] if len(ok) > 1 else float("nan")
    body = "\n".join(
        [
            "## Precision: demo DANet (ResNet-18 w32) at 512x1024, ONNX Runtime CPU provider",
            "",
            f"Machine: {machine()}. Command: `python bench/precision_bench.py` (3 warm-up + 10 timed runs per model,",
            "each in its own process, one run of the script).",
            "",
            f"Quantization time: INT8 (ModelOpt, entropy, {int8_record.calibration.images} calibration images) "
            f"{int8_seconds:.0f} s; FP16 (protected, magnitudes from 32 images) {fp16_seconds:.0f} s.",
            "",
            "| model | median | p90 | p99 | peak RSS |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"FP32 / INT8 median latency ratio: {ratio:.2f}x.",
        ]
    )
    print(body)
    write_section("precision", body)


if __name__ == "__main__":
    main()
