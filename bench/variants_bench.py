"""The two bundled demo variants side by side: DANet (PAM + CAM) vs Shuffle Attention (SA + CAM).

    python bench/variants_bench.py                                    # writes docs/benchmarks.md
    python bench/variants_bench.py --sizes 512x1024 --iters 2 --skip-demo

Accuracy: `danet-deploy demo --variant V` for each variant (export, simplify, FP16, INT8, verify on the 24
bundled scenes at 256x512; exactly what a user runs). Speed and memory: each trained checkpoint exported
static at each size, raw and simplified for ONNX Runtime (`--target ort`: PAM blocked, GroupNorm as
GroupNormalization, shuffle folded; for SA also GroupNorm decomposed); each model runs in its own process
(danet_deploy.bench), so peak RSS is that model's alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_section  # noqa: E402
from danet_deploy.checkpoints import load_checkpoint  # noqa: E402
from danet_deploy.config import parse_size  # noqa: E402
from danet_deploy.data.bundled import DEMO_CHECKPOINTS, sample_images  # noqa: E402
from danet_deploy.evaluate.benchmark import benchmark  # noqa: E402
from danet_deploy.onnx_export import ExportOptions, export_onnx  # noqa: E402
from danet_deploy.options import SimplifyOptions  # noqa: E402
from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from danet_deploy.simplify import SimplifyReport, simplify_model  # noqa: E402

LABELS = {"danet": "DANet (PAM + CAM)", "shuffle": "Shuffle Attention (SA, G=8) + CAM"}


def demo_accuracy(variant: str, workdir: Path) -> dict:
    """Run the demo for one variant; its verify report (mIoU per backend) and benchmark at 256x512."""
    cmd = [sys.executable, "-m", "danet_deploy.cli", "demo", "--variant", variant, "--workdir", str(workdir)]
    print(f"running danet-deploy demo --variant {variant}", flush=True)
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return {
        "report": json.loads((workdir / "report.json").read_text()),
        "benchmark": json.loads((workdir / "benchmark.json").read_text()),
    }


def speed_rows(variant: str, size: tuple[int, int], iters: int, workdir: Path) -> list[dict]:
    loaded = load_checkpoint(DEMO_CHECKPOINTS[variant])
    image = sample_images(1)[0]
    raw = workdir / f"{variant}_{size[0]}x{size[1]}.onnx"
    print(f"exporting {variant} at {size}", flush=True)
    export_onnx(loaded.model, loaded.config, raw, ExportOptions(input_size=size), image)
    simplified, report = simplify_model(onnx.load(str(raw)), SimplifyOptions(target="ort"), images=[image])
    ort_path = workdir / f"{variant}_{size[0]}x{size[1]}.ort.onnx"
    onnx.save(simplified, str(ort_path))
    graphs = [
        (
            raw,
            "raw export (PAM naive)" if variant == "danet" else "raw export (GroupNorm as InstanceNormalization)",
            len(onnx.load(str(raw)).graph.node),
        ),
        (ort_path, f"simplified for ort ({_forms(report)})", len(simplified.graph.node)),
    ]
    if variant != "danet":  # the other GroupNorm form, as TensorRT 8.6 gets it
        decomposed, report = simplify_model(
            onnx.load(str(raw)), SimplifyOptions(target="ort", group_norm="decomposed"), images=[image]
        )
        path = workdir / f"{variant}_{size[0]}x{size[1]}.decomposed.onnx"
        onnx.save(decomposed, str(path))
        graphs.append((path, f"simplified, {_forms(report)}", len(decomposed.graph.node)))
    rows = []
    for path, graph, nodes in graphs:
        print(f"benchmarking {variant} {graph} at {size}", flush=True)
        result = benchmark([OnnxRuntimeRunner(path, path.name)], image, warmup=1, iterations=iters)
        stats = result["backends"][0]
        rows.append({"variant": variant, "graph": graph, "nodes": nodes, "size": size, **stats})
        print(f"  median {stats.get('median_ms', float('nan')):.0f} ms, peak {stats.get('peak_rss_mib', 0):.0f} MiB")
    return rows


def _forms(report: SimplifyReport) -> str:
    return f"PAM {report.attention}" if report.attention != "none" else f"GroupNorm {report.group_norm}, shuffle folded"


def accuracy_table(results: dict[str, dict]) -> list[str]:
    lines = [
        "| variant | params | checkpoint | val mIoU (train script, 100 scenes) | PyTorch | ONNX FP32 | "
        "simplified (ort) | FP16 | INT8 | ORT FP32 256x512 median | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, result in results.items():
        loaded = load_checkpoint(DEMO_CHECKPOINTS[variant])
        params = sum(p.numel() for p in loaded.model.parameters()) / 1e6
        size = DEMO_CHECKPOINTS[variant].stat().st_size / 2**20
        extra = torch.load(DEMO_CHECKPOINTS[variant], weights_only=True).get("extra", {})
        val = f"{extra['val_miou']:.2f} (step {extra['step']})" if "val_miou" in extra else "-"
        backends = result["report"]["backends"]

        def cell(b: dict) -> str:
            delta = "" if b["name"] == "pytorch" else f" ({b['miou_delta']:+.2f})"
            return f"{b['miou']:.2f}{delta}"

        ort = next(b for b in result["benchmark"]["backends"] if b["name"] == "onnxruntime:demo.onnx")
        lines.append(
            f"| {LABELS[variant]} | {params:.2f} M | {size:.1f} MiB | {val} | "
            + " | ".join(cell(b) for b in backends)
            + f" | {ort['median_ms']:.1f} ms | {ort['peak_rss_mib']:.0f} MiB |"
        )
    return lines


def speed_table(rows: list[dict]) -> list[str]:
    lines = ["| variant | graph | nodes | input | median latency | p90 | peak RSS |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['size'][0]}x{r['size'][1]}"
        if "median_ms" not in r:
            lines.append(
                f"| {LABELS[r['variant']]} | {r['graph']} | {r['nodes']} | {size} | failed: "
                f"{r.get('error', '?')} | - | - |"
            )
            continue
        lines.append(
            f"| {LABELS[r['variant']]} | {r['graph']} | {r['nodes']} | {size} | {r['median_ms']:,.0f} ms | "
            f"{r['p90_ms']:,.0f} ms | {r['peak_rss_mib']:,.0f} MiB |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--skip-demo", action="store_true", help="Speed and memory only.")
    args = parser.parse_args()
    command = f"python bench/variants_bench.py --sizes {' '.join(args.sizes)} --iters {args.iters}"
    body = [
        "## Demo variants: DANet (PAM + CAM) vs Shuffle Attention (SA + CAM)",
        "",
        f"Machine: {machine()}. Command: `{command}`.",
        "",
        "Both are ResNet-18 width 32 trained by `scripts/train_demo.py` with the same recipe (2000 steps, batch 8,",
        "160x320 crops of 1000 synthetic scenes); only the position branch differs.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_demo:
            results = {v: demo_accuracy(v, work / f"demo_{v}") for v in DEMO_CHECKPOINTS}
            body += [
                "",
                "### Accuracy: `danet-deploy demo --variant danet|shuffle` (24 bundled scenes, 256x512, whole image)",
                "",
                "mIoU %, delta vs the variant's own PyTorch model in brackets; FP16 is run with FP16 rounding",
                "emulated on the CPU, INT8 is the Q/DQ model (entropy, 100 calibration images).",
                "",
                *accuracy_table(results),
            ]
        rows = []
        for text in args.sizes:
            for variant in DEMO_CHECKPOINTS:
                rows += speed_rows(variant, parse_size(text), args.iters, work)
        body += [
            "",
            "### Latency and peak memory on ONNX Runtime CPU (batch 1, 1 warm-up, median of the timed runs)",
            "",
            *speed_table(rows),
        ]
    write_section("variants", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
