"""PAM forms of DANet ResNet-50 on ONNX Runtime CPU: nodes, median latency, peak RSS, max abs diff vs naive.

    python bench/attention_bench.py                       # 512x1024 and 1024x2048; writes docs/benchmarks.md
    python bench/attention_bench.py --sizes 512x1024 --iters 2

Each model runs in its own process (bench/run_onnx.py) so peak RSS is that model's alone. Forms whose
estimated attention memory exceeds this machine's RAM are reported with the estimate instead of run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import active_attention, machine, mib, write_section  # noqa: E402
from danet_deploy.config import ModelConfig, parse_size  # noqa: E402
from danet_deploy.data.bundled import sample_images  # noqa: E402
from danet_deploy.data.preprocess import normalize, resize_image  # noqa: E402
from danet_deploy.graph.lint import attention_memory  # noqa: E402
from danet_deploy.model import build_danet  # noqa: E402
from danet_deploy.onnx_export import ExportOptions, export_onnx  # noqa: E402
from danet_deploy.options import SimplifyOptions  # noqa: E402
from danet_deploy.progress import format_bytes  # noqa: E402
from danet_deploy.simplify import simplify_model  # noqa: E402

FORMS = ("naive", "mha", "onnx-attention", "blocked")


def total_ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return int(line.split()[1]) * 1024
    return 0


def run(model: Path, x_path: Path, out_path: Path, iters: int) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "run_onnx.py"),
        str(model),
        "--input",
        str(x_path),
        "--iters",
        str(iters),
        "--warmup",
        "1",
        "--save",
        str(out_path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["killed"])[-1][:120]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_size(size: tuple[int, int], iters: int, workdir: Path) -> list[str]:
    torch.manual_seed(0)
    config = ModelConfig(depth=50, input_size=size)
    model = active_attention(build_danet(config).eval())
    image = sample_images(1)[0]
    raw_path = workdir / f"raw_{size[0]}x{size[1]}.onnx"
    print(f"exporting ResNet-50 DANet at {size}", flush=True)
    export_onnx(model, config, raw_path, ExportOptions(input_size=size), image)
    del model
    x_path = workdir / "x.npy"
    np.save(x_path, normalize(resize_image(image, size), config))
    n = (size[0] // 8) * (size[1] // 8)
    estimates = {m.form: m.bytes for m in attention_memory(1, n, 512)}
    raw = onnx.load(str(raw_path))
    candidates = [("raw export (naive)", raw_path, len(raw.graph.node), "naive")]
    for form in FORMS:
        if estimates[form] > 0.6 * total_ram():
            candidates.append((f"simplified, {form}", None, None, form))
            continue
        print(f"simplifying to {form}", flush=True)
        simplified, _ = simplify_model(onnx.load(str(raw_path)), SimplifyOptions(attention=form), images=[image])
        path = workdir / f"{form}_{size[0]}x{size[1]}.onnx"
        onnx.save(simplified, str(path))
        candidates.append((f"simplified, {form}", path, len(simplified.graph.node), form))
    rows = []
    reference = None
    for label, path, nodes, form in candidates:
        if path is None:
            rows.append(
                f"| {label} | - | not run: needs ~{format_bytes(estimates[form])} for attention (estimate) | - | - |"
            )
            continue
        print(f"running {label}", flush=True)
        out_path = workdir / "out.npy"
        result = run(path, x_path, out_path, iters)
        if "error" in result:
            rows.append(f"| {label} | {nodes} | failed: {result['error']} | - | - |")
            continue
        out = np.load(out_path)
        reference = out if reference is None else reference
        diff = float(np.abs(out.astype(np.float64) - reference).max())
        rows.append(
            f"| {label} | {nodes} | {result['median_s']:.2f} s | {mib(result['peak_rss_bytes'])} | {diff:.2e} |"
        )
        print(rows[-1], flush=True)
    return [
        f"### {size[0]}x{size[1]} (N = {n}; naive attention estimate {format_bytes(estimates['naive'])})",
        "",
        "| graph | nodes | median latency | peak RSS | max abs diff vs raw |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    header = [
        "## PAM forms: DANet ResNet-50, batch 1, ONNX Runtime CPU provider",
        "",
        "Random (seeded) weights with PAM/CAM gamma set to 0.5/0.3 (attention active); the input is a bundled scene resized to the model size. 'simplified' = onnxslim",
        "cleanup + CAM rewrite + the PAM form ('naive' keeps PAM as trained). 1 warm-up run, then the median of",
        "the timed runs; each model runs in its own process, so peak RSS is that model's (runtime and weights",
        "included).",
    ]
    write_section("attention", "\n".join(header))
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes:
            lines = bench_size(parse_size(text), args.iters, Path(tmp))
            lines.insert(
                1,
                f"Machine: {machine()}. Command: `python bench/attention_bench.py --sizes {text} "
                f"--iters {args.iters}`.",
            )
            lines.insert(2, "")
            write_section(f"attention-{text}", "\n".join(lines))


if __name__ == "__main__":
    main()
