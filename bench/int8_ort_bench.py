"""INT8 for ONNX Runtime's CPU provider vs FP32 and vs TensorRT-style Q/DQ, measured with `danet-deploy benchmark`.

    python bench/int8_ort_bench.py                 # writes the "int8-ort" section of docs/benchmarks.md
    python bench/int8_ort_bench.py --skip-r50      # the demo model only (a few minutes)

1. DANet ResNet-50 at 512x1024 (random seeded weights, PAM/CAM gamma 0.5/0.3): export, `quantize --target ort`
   and `quantize` (TensorRT Q/DQ) on synthetic 512x1024 scenes, then one `danet-deploy benchmark` run of all three.
2. The bundled demo model at 256x512: the same three models (calibrated as `danet-deploy demo` does, on 100
   synthetic scenes), one benchmark run, and `danet-deploy verify` on the 24 bundled labeled scenes (mIoU drop).

Every step is the CLI a user runs, each in its own process; the commands are printed as they run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import active_attention, machine, write_section
from danet_deploy.checkpoints import save_checkpoint
from danet_deploy.config import ModelConfig
from danet_deploy.data.bundled import DEMO_CHECKPOINT, DEMO_DATA
from danet_deploy.data.synthetic import write_calibration_images
from danet_deploy.model import build_danet
from danet_deploy.precision.int8_ort import detect_cpu_profile, isa_summary

CLI = [sys.executable, "-m", "danet_deploy.cli"]


TIME = Path("/usr/bin/time")  # GNU time: the peak RSS of the command alone (not of this process)
PEAK_RSS: dict[str, float] = {}  # command label -> peak resident MiB


def cli(*args: str | Path, label: str | None = None) -> float:
    """Run one danet-deploy command; return its wall time (and record its peak RSS under `label`)."""
    command = [*CLI, *map(str, args)]
    print("+ danet-deploy " + " ".join(map(str, args)), flush=True)
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        if label and TIME.is_file():
            command = [str(TIME), "-f", "%M", "-o", rss.name, *command]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
        if label and TIME.is_file():
            PEAK_RSS[label] = int(rss.read().split()[-1]) / 1024
    return seconds


def three_models(checkpoint: Path, work: Path, size: str, calib: Path, count: int) -> dict[str, Path]:
    paths = {"fp32": work / "fp32.onnx", "ort": work / "int8.ort.onnx", "trt": work / "int8.trt.onnx"}
    cli("export", checkpoint, "-o", paths["fp32"], "--input-size", size)
    cache = ("--cache-dir", work / "cache", "--count", str(count))
    seconds = {
        "ort": cli(
            "quantize",
            paths["fp32"],
            "--calib",
            calib,
            "--target",
            "ort",
            *cache,
            "-o",
            paths["ort"],
            label=f"{size} ort",
        ),
        "trt": cli("quantize", paths["fp32"], "--calib", calib, *cache, "-o", paths["trt"], label=f"{size} trt"),
    }
    QUANTIZE_SECONDS[size] = seconds
    return paths


QUANTIZE_SECONDS: dict[str, dict[str, float]] = {}


def quantize_line(size: str, count: int) -> str:
    """Time and peak RSS of both quantize commands at `size`."""
    seconds = QUANTIZE_SECONDS[size]
    rss = {k: f", peak RSS {PEAK_RSS[f'{size} {k}']:,.0f} MiB" if f"{size} {k}" in PEAK_RSS else "" for k in seconds}
    return (
        f"`quantize` on {count} images: `--target ort` {seconds['ort']:.0f} s{rss['ort']}; TensorRT Q/DQ "
        f"(ModelOpt) {seconds['trt']:.0f} s{rss['trt']}."
    )


def bench_rows(paths: dict[str, Path], work: Path, iterations: int) -> tuple[list[str], dict[str, float]]:
    out = work / "benchmark.json"
    cli(
        "benchmark",
        "--onnx",
        paths["fp32"],
        "--onnx",
        paths["ort"],
        "--onnx",
        paths["trt"],
        "--warmup",
        "2",
        "--iterations",
        str(iterations),
        "--json",
        out,
    )
    backends = json.loads(out.read_text())["backends"]
    labels = {"fp32": "FP32", "ort": "INT8 for ONNX Runtime (`--target ort`)", "trt": "INT8 Q/DQ for TensorRT"}
    medians, rows = {}, []
    for key, result in zip(paths, backends):
        if "error" in result:
            sys.exit(f"benchmark of {paths[key]} failed: {result['error']}")
        medians[key] = result["median_ms"]
        rows.append(
            f"| {labels[key]} | {result['median_ms']:,.0f} ms | {result['p90_ms']:,.0f} ms | "
            f"{result['median_ms'] / backends[0]['median_ms']:.2f}x | {result['peak_rss_mib']:,.0f} MiB |"
        )
    return rows, medians


def r50(work: Path, count: int, iterations: int) -> list[str]:
    torch.manual_seed(0)
    config = ModelConfig(depth=50, input_size=(512, 1024))
    checkpoint = save_checkpoint(active_attention(build_danet(config).eval()), work / "danet_r50.pth")
    calib = write_calibration_images(work / "calib", count, 512, 1024)
    paths = three_models(checkpoint, work, "512x1024", calib, count)
    rows, medians = bench_rows(paths, work, iterations)
    cli("inspect", paths["ort"], "--target", "ort", "--json", work / "inspect.json")
    kernels = json.loads((work / "inspect.json").read_text())["onnxruntime_kernels"]
    integer = sum(k["integer"] for k in kernels)
    return [
        "### DANet ResNet-50, 512x1024, batch 1 (random seeded weights, PAM/CAM gamma 0.5/0.3)",
        "",
        f"Calibration: {count} synthetic 512x1024 scenes (`--count {count}`). `inspect`: {integer} of {len(kernels)} "
        "Conv/MatMul nodes run as ONNX Runtime integer kernels. " + quantize_line("512x1024", count),
        "",
        "| model | median | p90 | vs FP32 | peak RSS |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"ONNX Runtime INT8 / FP32 median latency: **{medians['ort'] / medians['fp32']:.2f}x** "
        f"(TensorRT Q/DQ on ONNX Runtime: {medians['trt'] / medians['fp32']:.2f}x).",
    ]


def demo(work: Path, iterations: int) -> list[str]:
    calib = write_calibration_images(work / "calib", 100)
    paths = three_models(DEMO_CHECKPOINT, work, "256x512", calib, 100)
    rows, medians = bench_rows(paths, work, iterations)
    report = work / "verify.json"
    cli(
        "verify",
        "--ckpt",
        DEMO_CHECKPOINT,
        "--onnx",
        paths["fp32"],
        "--onnx",
        paths["ort"],
        "--onnx",
        paths["trt"],
        "--data",
        DEMO_DATA,
        "--json",
        report,
    )
    backends = json.loads(report.read_text())["backends"]
    miou = [
        f"| {b['name']} | {b['precision']}{' (' + b['quantized_for'] + ')' if b['quantized_for'] else ''} | "
        f"{b['miou']:.2f} | {b['miou_delta']:+.2f} | {b['pixel_agreement']:.4%} |"
        for b in backends
    ]
    return [
        "### Demo model (ResNet-18 w32, trained), 256x512, batch 1",
        "",
        "Calibration as in `danet-deploy demo`: 100 synthetic scenes. " + quantize_line("256x512", 100),
        "",
        "| model | median | p90 | vs FP32 | peak RSS |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"ONNX Runtime INT8 / FP32 median latency: **{medians['ort'] / medians['fp32']:.2f}x**.",
        "",
        "`danet-deploy verify` on the 24 bundled labeled scenes (PyTorch FP32 is the reference):",
        "",
        "| backend | precision | mIoU % | delta | pixel agreement |",
        "|---|---|---|---|---|",
        *miou,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-r50", action="store_true", help="only the demo model")
    parser.add_argument("--r50-calib", type=int, default=16, help="calibration images for ResNet-50")
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    body = [
        "## INT8 for ONNX Runtime on CPU (`quantize --target ort`) vs FP32 and TensorRT Q/DQ",
        "",
        f"Machine: {machine()}. CPU instruction sets: {isa_summary()}; quantized with the "
        f"`{detect_cpu_profile().name}` profile (`--cpu auto`). Command: `python bench/int8_ort_bench.py"
        f"{' --skip-r50' if args.skip_r50 else ''}` (each model in its own process: 2 warm-up + "
        f"{args.iterations} timed runs, one `danet-deploy benchmark` run per model set).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_r50:
            (Path(tmp) / "r50").mkdir()
            body += [*r50(Path(tmp) / "r50", args.r50_calib, args.iterations), ""]
        (Path(tmp) / "demo").mkdir()
        body += demo(Path(tmp) / "demo", args.iterations)
    text = "\n".join(body)
    print(text)
    write_section("int8-ort", text)


if __name__ == "__main__":
    main()
