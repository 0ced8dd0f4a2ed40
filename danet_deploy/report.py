"""Presenting results: Rich tables for the terminal, JSON files written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from .artifacts import atomic_output
from .export import ExportRecord
from .verify import VerifyReport


def write_json(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verify_table(report: VerifyReport) -> Table:
    size = "x".join(map(str, report.input_size)) if report.input_size else "native"
    table = Table(title=f"verify: {report.images} images, input {size}, reference {report.reference}")
    for column in ("backend", "mIoU %", "pixel agreement", "max |diff|", "mean |diff|", "NaN/Inf", "result"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for b in report.backends:
        result = "[green]pass[/]" if b.passed else f"[red]FAIL[/] {'; '.join(b.failures)}"
        table.add_row(b.name, _fmt(b.miou, ".2f"), f"{b.pixel_agreement:.4%}", f"{b.max_abs_diff:.2e}",
                      f"{b.mean_abs_diff:.2e}", str(b.nonfinite_values), result)  # fmt: skip
    return table


def per_class_table(report: VerifyReport) -> Table:
    table = Table(title="per-class IoU %")
    table.add_column("class")
    for b in report.backends:
        table.add_column(b.name, justify="right")
    names = list(report.backends[0].per_class_iou)
    for name in names:
        table.add_row(name, *[_fmt(b.per_class_iou.get(name), ".2f") for b in report.backends])
    return table


def export_summary(record: ExportRecord) -> list[str]:
    lines = [
        f"wrote {record.onnx_path} ({record.size_bytes / 2**20:.1f} MiB, opset {record.opset}, "
        f"{record.exporter} exporter, {record.export_seconds:.1f} s)",
        "inputs: " + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in record.inputs.items()),
        "outputs: " + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in record.outputs.items()),
    ]
    for p in record.parity:
        lines.append(
            f"parity ONNX Runtime vs PyTorch at {list(p.shape)}: max abs diff {p.max_abs_diff:.3g} "
            f"(tolerance {p.tolerance:.3g}), mean {p.mean_abs_diff:.3g}, label agreement {p.label_agreement:.4%}"
        )
    return lines
