"""Time and peak resident memory of every command, as a user runs them, for DANet-R50 and R101 at 512x1024 and
1024x2048 (batch 1): export, simplify for ort / trt10.3 / trt11, quantize FP16 and INT8 (TensorRT Q/DQ and ONNX
Runtime), verify and benchmark.

    python bench/memory_bench.py                                   # all; writes the "memory" section
    python bench/memory_bench.py --depths 50 --sizes 512x1024 --images 2

Each command runs in its own process under `/usr/bin/time -v` (its "Maximum resident set size": the largest
process of the command, so benchmark's per-backend processes count one at a time). Weights are random and
seeded, in our checkpoint layout, with PAM/CAM gamma 0.5/0.3 and BatchNorm statistics measured on synthetic
scenes (`bench.common.trained_statistics`), so activations have a trained network's scale. Calibration and
verification use `--images` synthetic scenes / bundled labeled scenes each (resized to the model's size): 2
cores make a full-size R101 forward take tens of seconds. Results also go to a JSON file beside the doc.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import active_attention, machine, trained_statistics, write_section  # noqa: E402
from danet_deploy.checkpoints import save_checkpoint  # noqa: E402
from danet_deploy.config import ModelConfig, parse_size  # noqa: E402
from danet_deploy.data.bundled import DEMO_DATA  # noqa: E402
from danet_deploy.data.synthetic import write_calibration_images  # noqa: E402
from danet_deploy.model import build_danet  # noqa: E402

GIB = 1 << 30
LIMITS = {50: 4 * GIB, 101: 5 * GIB}  # the targets
RESULTS = ROOT / "docs" / "memory_bench.json"


# FP32 rounding alone puts R101's logits ~5e-4 from the exact ones at 1024x2048 (`bench/fp32_noise.py`), beyond
# export's default parity tolerance; R101 is exported with verify's FP32 threshold instead.
EXPORT_ATOL = {101: ["--atol", "1e-3"]}


def commands(
    ckpt: Path, work: Path, size: str, calib: Path, images: int, depth: int = 50
) -> list[tuple[str, list[str]]]:
    m = lambda suffix: str(work / f"model{suffix}.onnx")  # noqa: E731
    count = ["--count", str(images)]
    return [
        ("export", ["export", str(ckpt), "-o", m(""), "--input-size", size, *EXPORT_ATOL.get(depth, [])]),
        ("simplify --target ort", ["simplify", m(""), "-o", m(".ort"), "--target", "ort"]),
        ("simplify --target trt10.3", ["simplify", m(""), "-o", m(".trt103"), "--target", "trt10.3"]),
        ("simplify --target trt11", ["simplify", m(""), "-o", m(".trt11"), "--target", "trt11"]),
        ("quantize --fp16", ["quantize", m(""), "--fp16", "--calib", str(calib), *count, "-o", m(".fp16")]),
        (
            "quantize (INT8, TensorRT Q/DQ)",
            ["quantize", m(""), "--calib", str(calib), *count, "--cache-dir", str(work / "cache"), "-o", m(".int8")],
        ),
        (
            "quantize --target ort (INT8)",
            [
                "quantize",
                m(".ort"),
                "--calib",
                str(calib),
                *count,
                "--target",
                "ort",
                "--cache-dir",
                str(work / "cache"),
                "-o",
                m(".int8.ort"),
            ],
        ),
        (
            "verify",
            [
                "verify",
                "--ckpt",
                str(ckpt),
                "--onnx",
                m(".ort"),
                "--onnx",
                m(".fp16"),
                "--onnx",
                m(".int8"),
                "--onnx",
                m(".int8.ort"),
                "--data",
                str(DEMO_DATA),
                "--limit",
                str(images),
                "--json",
                str(work / "verify.json"),
            ],
        ),
        (
            "benchmark",
            [
                "benchmark",
                "--ckpt",
                str(ckpt),
                "--onnx",
                m(".ort"),
                "--onnx",
                m(".int8.ort"),
                "--warmup",
                "1",
                "--iterations",
                "3",
                "--json",
                str(work / "benchmark.json"),
            ],
        ),
    ]


def run(args: list[str], log: Path) -> dict:
    """One command under /usr/bin/time -v: wall time, peak RSS, exit code, the memory plan's estimate."""
    cli = [sys.executable, "-m", "danet_deploy", *args]
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *cli], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    planned = planned_peaks(result.stderr)
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
    evaluated = sorted(
        {
            line.split("evaluated", 1)[1].strip(" :[]")
            for line in lines
            if "query blocks" in line and "evaluated" in line
        }
    )
    return {
        "exit_code": result.returncode,
        "seconds": round(seconds, 1),
        "peak_rss_bytes": int(peak.group(1)) * 1024 if peak else None,
        "planned_peak_gib": round(max(planned), 2) if planned else None,
        "evaluated": evaluated[:3],
        "error": next((line for line in reversed(lines) if line.startswith(("error:", "internal error:"))), None),
    }


def planned_peaks(text: str) -> list[float]:
    """GiB of every step of the memory plans a command printed ("memory plan for ...:" then "  step: 1.2 GiB")."""
    peaks, in_plan = [], False
    for line in text.splitlines():
        if line.startswith("memory plan for"):
            in_plan = True
        elif in_plan and line.startswith("  "):
            found = re.search(r": ([\d.]+) (MiB|GiB)", line)
            if found:
                peaks.append(float(found.group(1)) * {"MiB": 1 / 1024, "GiB": 1.0}[found.group(2)])
        else:
            in_plan = False
    return peaks


def checkpoint(depth: int, work: Path) -> Path:
    path = work / f"danet_r{depth}.pth"
    if not path.is_file():
        torch.manual_seed(0)
        model = trained_statistics(active_attention(build_danet(ModelConfig(depth=depth, input_size=(512, 1024)))))
        save_checkpoint(model, path)
    return path


def table(results: dict) -> list[str]:
    rows = [
        "| model | input | command | time | peak RSS | target | exit | planned peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, entries in results.items():
        depth, size = key.split("@")
        limit = LIMITS[int(depth)]
        for name, r in entries.items():
            peak = r["peak_rss_bytes"]
            within = "-" if peak is None else ("within" if peak <= limit else "**over**")
            rows.append(
                f"| R{depth} | {size} | `{name}` | {r['seconds']:.0f} s | "
                f"{'-' if peak is None else f'{peak / GIB:.2f} GiB'} | {within} ({limit // GIB} GiB) | "
                f"{r['exit_code']} | {r['planned_peak_gib'] or '-'} GiB |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", nargs="+", type=int, default=[50, 101])
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    parser.add_argument("--images", type=int, default=4, help="calibration and verification images")
    parser.add_argument("--work", type=Path, default=Path("/tmp/danet-memory-bench"))
    parser.add_argument("--only", nargs="*", help="command names to run (default: all)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    calib = write_calibration_images(args.work / "calib", args.images, 512, 1024)
    for size in args.sizes:
        parse_size(size)
        for depth in args.depths:
            work = args.work / f"r{depth}_{size}"
            work.mkdir(exist_ok=True)
            ckpt = checkpoint(depth, args.work)
            key = f"{depth}@{size}"
            entries = results.setdefault(key, {})
            for name, command in commands(ckpt, work, size, calib, args.images, depth):
                if args.only and name not in args.only:
                    continue
                print(f"R{depth} {size}: danet-deploy {' '.join(command)}", flush=True)
                log = work / f"{len(entries)}.{name.split()[0]}.log"
                entries[name] = {"command": "danet-deploy " + " ".join(command), "log": str(log), **run(command, log)}
                print(f"  -> {entries[name]}", flush=True)
                RESULTS.write_text(json.dumps(results, indent=1))
            write(results, args.images)


def write(results: dict, images: int) -> None:
    body = [
        "## Memory: every command at 512x1024 and 1024x2048 (batch 1), ONNX Runtime CPU",
        "",
        f"Machine: {machine()}. Command: `python bench/memory_bench.py --images {images}` (each command in its own "
        'process under `/usr/bin/time -v`; peak RSS is its "Maximum resident set size").',
        "",
        "DANet-R50 / R101 with random seeded weights (our checkpoint layout), PAM/CAM gamma 0.5/0.3 and BatchNorm "
        "statistics measured on synthetic scenes, so activations have a trained network's scale. Calibration: "
        f"{images} synthetic scenes (`--count {images}`); verify: the first {images} bundled labeled scenes "
        "(`--limit`), resized to the model's size; verify runs PyTorch plus the ONNX Runtime FP32 (`ort`), FP16, "
        "INT8 (TensorRT Q/DQ) and INT8 (ONNX Runtime) models; benchmark runs PyTorch and the two ONNX Runtime "
        "models (1 warm-up + 3 timed runs each, each backend in its own process). Targets from issue 14: "
        "4 GiB (R50), 5 GiB (R101). 'planned peak' is the memory plan the command printed before its work.",
        "",
        *table(results),
        "",
        "Every check runs at the model's size. Where PAM's maps as written would exceed 1 GiB (1024x2048: 8 GiB "
        "naive, 8 heads x that for the multi-head forms) the checks evaluate attention in query blocks (exact; "
        "`bounded_ort.query_blocks`) and say so in their output; PyTorch runs PAM in query blocks too "
        "(`model.memory_efficient_attention`). simplify's pass checks run ONNX Runtime without its NCHWc layout pass "
        "(so each pass is compared on the same Conv kernels), which holds more memory than a deployed session.",
    ]
    failed = [
        f"- R{k.replace('@', ' ')} `{n}` (exit {r['exit_code']}): {r['error']}"
        for k, e in results.items()
        for n, r in e.items()
        if r["exit_code"] != 0
    ]
    if failed:
        body += [
            "",
            "Commands that did not exit 0, with the line they ended with (exit 1 is a check that ran and "
            "failed: the measured memory is the whole run's):",
            "",
            *failed,
        ]
    evaluated = {
        f"R{k.replace('@', ' ')} `{n}`": r["evaluated"]
        for k, e in results.items()
        for n, r in e.items()
        if r.get("evaluated")
    }
    if evaluated:
        body += ["", "How the checks evaluated attention (from each command's output):", ""]
        body += [f"- {name}: {'; '.join(how)}" for name, how in evaluated.items()]
    write_section("memory", "\n".join(body))


if __name__ == "__main__":
    main()
