"""Shared by the benchmarks: machine/version header and writing one section of docs/benchmarks.md."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import torch

from danet_deploy.model import DANet
from danet_deploy.versions import cpu_model, tool_versions

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = cpu_model()
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        mem = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        mem = "?"
    versions = ", ".join(
        f"{k} {'/'.join(v) if isinstance(v, list) else v}" for k, v in tool_versions("onnxslim").items() if v
    )
    return f"{cpu}, {os.cpu_count()} cores, {mem} RAM; {versions}; {date.today().isoformat()}"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between `<!-- bench:name -->` markers in docs/benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = (
        DOC.read_text()
        if DOC.exists()
        else "# Benchmarks\n\nEvery table here is written by a script in `bench/`; rerun it to refresh.\n"
    )
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def active_attention(model: DANet, pam: float = 0.5, cam: float = 0.3) -> DANet:
    """Random-init DANets have PAM/CAM gamma = 0, so attention would not reach the output at all and any
    attention rewrite would look exact. Trained models have non-zero gammas; give the benchmark models some."""
    with torch.no_grad():
        model.head.pam.gamma.fill_(pam)
        model.head.cam.gamma.fill_(cam)
    return model


def trained_statistics(model: DANet, images: int = 8, size: tuple[int, int] = (256, 512)) -> DANet:
    """Random weights with BatchNorm statistics measured on synthetic scenes (cumulative average over `images`), so
    activations have the scale of a trained network's. With the initial statistics (mean 0, variance 1) every
    residual block multiplies the activations' scale, and CAM's energy X X^T reaches 1e8 at 1024x2048, where a
    float32 softmax(rowmax(E) - E) loses a third of a unit: no trained DANet looks like that."""
    from danet_deploy.data.preprocess import normalize
    from danet_deploy.data.synthetic import generate_scene

    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for seed in range(images):
            scene = generate_scene(10_000 + seed, *size).image
            model(torch.from_numpy(normalize(scene, model.config)))
    for bn in batch_norms:
        bn.momentum = 0.1
    return model.eval()
