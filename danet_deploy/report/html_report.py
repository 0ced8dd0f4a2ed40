"""Self-contained HTML report (and a Markdown summary) of a verify run, optionally with benchmark results.

Everything is inline (SVG charts, PNG images as data URIs), so the file can be mailed, attached to a CI
run or opened offline. Every string from a model file, checkpoint or data set (class names, backend and image
names, failure messages) is escaped, and the page's Content-Security-Policy forbids scripts and any fetch
besides its own data: images. The worst images are re-run through every backend at the end of `verify`, so the
evaluation itself never keeps predictions in memory.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from danet_deploy.config import ModelConfig
from danet_deploy.data.datasets import Dataset
from danet_deploy.data.preprocess import resize_image
from danet_deploy.evaluate.protocols import EvalProtocol, predict
from danet_deploy.evaluate.verify import VerifyReport, common_input_size
from danet_deploy.files import atomic_path
from danet_deploy.runners.base import Runner, activated

# The page needs inline styles (<style> and style="" attributes), data: PNG images and inline SVG (no
# directive); nothing else, scripts above all. base-uri and form-action do not fall back to default-src.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

BACKEND_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


@dataclass
class Example:
    name: str
    image: np.ndarray  # H x W x 3 uint8
    labels: list[np.ndarray]  # per backend, H x W class ids
    agreement: list[float]  # per backend vs the reference


def collect_examples(
    dataset: Dataset,
    runners: Sequence[Runner],
    report: VerifyReport,
    config: ModelConfig,
    protocol: EvalProtocol,
    limit: int = 4,
) -> list[Example]:
    """Re-run the images with the lowest pixel agreement (over all backends) for the report.

    Runners not active yet are activated for this and deactivated after it.
    """
    ranked: dict[str, float] = {}
    for backend in report.backends[1:]:
        for item in backend.worst_images:
            ranked[item["image"]] = min(ranked.get(item["image"], 1.0), item["pixel_agreement"])
    names = [name for name, _ in sorted(ranked.items(), key=lambda kv: kv[1])[:limit]]
    if not names:
        return []
    index = {str(path.relative_to(dataset.root)): i for i, (path, _) in enumerate(dataset.items)}
    size = common_input_size(r.input_spec.static_size for r in runners) if protocol.crop is None else None
    examples = []
    with activated(runners):
        for name in names:
            sample = dataset.load(index[name])
            image = resize_image(sample.image, size) if size else sample.image
            labels = [predict(r.infer, image, protocol, config.align_corners).argmax(1)[0] for r in runners]
            agreement = [float((lab == labels[0]).mean()) for lab in labels]
            examples.append(Example(name, image, labels, agreement))
    return examples


def _png(array: np.ndarray, max_width: int = 384) -> str:
    img = Image.fromarray(array)
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def colourize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    colours = np.asarray(palette[:256], np.uint8).reshape(-1, 3)  # labels are uint8: later colours are unused
    lut[: len(colours)] = colours
    return lut[labels.astype(np.uint8)]


def disagreement_map(image: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Grey input with the pixels whose label differs from the reference in red."""
    grey = (image.mean(axis=2, keepdims=True) * 0.6).astype(np.uint8).repeat(3, axis=2)
    grey[labels != reference] = (255, 0, 0)
    return grey


def svg_per_class(report: VerifyReport) -> str:
    """Grouped horizontal bars: per-class IoU of every backend."""
    classes = list(report.backends[0].per_class_iou)
    if not classes:
        return "<p>No labels: per-class IoU not computed.</p>"
    n = len(report.backends)
    bar, gap, left, width = 7, 6, 130, 420
    height = len(classes) * (n * bar + gap) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" height="{height}" role="img" '
        'aria-label="per-class IoU">'
    ]
    for i, name in enumerate(classes):
        y0 = i * (n * bar + gap)
        parts.append(
            f'<text x="{left - 6}" y="{y0 + n * bar / 2 + 4}" text-anchor="end" font-size="11">'
            f"{html.escape(name)}</text>"
        )
        for j, backend in enumerate(report.backends):
            value = backend.per_class_iou.get(name)
            w = 0 if value is None else width * value / 100
            colour = BACKEND_COLOURS[j % len(BACKEND_COLOURS)]
            label = "n/a" if value is None else f"{value:.1f}"
            parts.append(
                f'<rect x="{left}" y="{y0 + j * bar}" width="{w:.1f}" height="{bar - 1}" fill="{colour}">'
                f"<title>{html.escape(backend.name)}: {label}</title></rect>"
            )
    for tick in range(0, 101, 25):
        x = left + width * tick / 100
        parts.append(f'<text x="{x}" y="{height - 8}" text-anchor="middle" font-size="10">{tick}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_latency(results: list[dict[str, Any]]) -> str:
    """Median latency bars with a p90-p99 whisker per backend."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return ""
    top = max(r["p99_ms"] for r in ok) * 1.1
    left, width, row = 190, 420, 26
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{len(ok) * row + 10}" '
        'role="img" aria-label="latency">'
    ]
    for i, r in enumerate(ok):
        y = i * row + 5
        colour = BACKEND_COLOURS[i % len(BACKEND_COLOURS)]
        x90, x99 = left + width * r["p90_ms"] / top, left + width * r["p99_ms"] / top
        parts += [
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-size="11">{html.escape(str(r["name"]))}</text>',
            f'<rect x="{left}" y="{y}" width="{width * r["median_ms"] / top:.1f}" height="18" fill="{colour}"/>',
            f'<line x1="{x90:.1f}" x2="{x99:.1f}" y1="{y + 9}" y2="{y + 9}" stroke="#333" stroke-width="2"/>',
            f'<text x="{x99 + 6:.1f}" y="{y + 14}" font-size="11">{r["median_ms"]:.1f} ms</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def _backend_rows(report: VerifyReport) -> str:
    rows = []
    for b in report.backends:
        status = (
            '<span class="pass">pass</span>'
            if b.passed
            else f'<span class="fail">FAIL</span> {html.escape("; ".join(b.failures))}'
        )
        miou = "-" if b.miou is None else f"{b.miou:.2f}"
        delta = "-" if b.miou_delta is None else f"{b.miou_delta:+.2f}"
        rows.append(
            f"<tr><td>{html.escape(b.name)}</td><td>{html.escape(b.precision_label)}</td><td>{miou}</td><td>{delta}</td>"
            f"<td>{b.pixel_agreement:.4%}</td><td>{b.max_abs_diff:.2e}</td><td>{b.p99_abs_diff:.1e}</td>"
            f"<td>{b.cosine:.6f}</td><td>{b.nonfinite_values}</td><td>{status}</td></tr>"
        )
    return "\n".join(rows)


def _examples_html(examples: list[Example], report: VerifyReport, palette: Sequence[Sequence[int]]) -> str:
    if not examples:
        return "<p>No disagreements to show.</p>"
    blocks = []
    for ex in examples:
        cells = [f'<figure><img src="{_png(ex.image)}" alt="input"><figcaption>input</figcaption></figure>']
        for b, labels, agreement in zip(report.backends, ex.labels, ex.agreement):
            name = html.escape(b.name)
            cells.append(
                f'<figure><img src="{_png(colourize(labels, palette))}" alt="{name}">'
                f"<figcaption>{name}<br>{agreement:.3%} agree</figcaption></figure>"
            )
        for b, labels in zip(report.backends[1:], ex.labels[1:]):
            cells.append(
                f'<figure><img src="{_png(disagreement_map(ex.image, labels, ex.labels[0]))}" '
                f'alt="disagreement"><figcaption>{html.escape(b.name)} vs {html.escape(report.reference)}'
                "</figcaption></figure>"
            )
        blocks.append(f'<h3>{html.escape(ex.name)}</h3><div class="row">{"".join(cells)}</div>')
    return "\n".join(blocks)


STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px}
.banner{padding:.6rem 1rem;border-radius:6px;font-weight:600}.ok{background:#dafbe1}.bad{background:#ffebe9}
.row{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}figcaption{font-size:12px;text-align:center}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def write_html(
    report: VerifyReport,
    examples: list[Example],
    config: ModelConfig,
    path: str | os.PathLike[str],
    benchmark: dict[str, Any] | None = None,
    title: str = "danet-deploy verify report",
) -> Path:
    legend = "".join(
        f'<span><i style="background:{BACKEND_COLOURS[i % len(BACKEND_COLOURS)]}"></i>{html.escape(b.name)}</span>'
        for i, b in enumerate(report.backends)
    )
    classes = "".join(
        f'<span><i style="background:{_rgb(config.palette[i])}"></i>{html.escape(n)}</span>'
        for i, n in enumerate(config.class_names)
    )
    bench = ""
    if benchmark:
        bench = f"<h2>Latency (median; whisker p90-p99)</h2><p>{html.escape(str(benchmark.get('device', '')))}</p>"
        bench += svg_latency(benchmark["backends"])
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    banner = '<div class="banner ok">PASSED</div>' if report.passed else '<div class="banner bad">FAILED</div>'
    size = html.escape("x".join(map(str, report.input_size)) if report.input_size else "native size")
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in report.notes)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>{banner}
<p>{html.escape(config.arch)}, {html.escape(str(config.num_classes))} classes; {report.images} images;
protocol {html.escape(report.protocol)}; input {size}; reference {html.escape(report.reference)}; {created}</p>{notes}
<h2>Backends</h2><table><tr><th>backend</th><th>precision</th><th>mIoU %</th><th>delta</th><th>pixel agreement</th>
<th>max |diff|</th><th>p99 |diff|</th><th>cosine</th><th>NaN/Inf</th><th>result</th></tr>
{_backend_rows(report)}</table>
<h2>Per-class IoU</h2><div class="legend">{legend}</div>{svg_per_class(report)}
{bench}
<h2>Worst images</h2><div class="legend">{classes}</div>{_examples_html(examples, report, config.palette)}
</body></html>"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return Path(path)


def _rgb(colour: Sequence[int]) -> str:
    """A CSS colour; int() keeps anything but numbers out of the style attribute (ModelConfig checked them)."""
    r, g, b = (int(c) for c in colour)
    return f"rgb({r},{g},{b})"


# Characters that make Markdown (or the HTML a renderer lets through) out of text: backslash-escaped.
_MARKDOWN = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: object) -> str:
    """Plain text for a Markdown paragraph or table cell: no markup, no HTML, no line break, no unescaped `|`."""
    value = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(text))
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN.sub(r"\\\1", value)


def write_markdown(report: VerifyReport, path: str | os.PathLike[str], html_name: str | None = None) -> Path:
    lines = [
        f"# verify: {'PASSED' if report.passed else 'FAILED'}",
        "",
        f"{report.images} images, protocol {md_escape(report.protocol)}, reference {md_escape(report.reference)}.",
        "",
        *[f"Note: {md_escape(note)}\n" for note in report.notes],
        "| backend | precision | mIoU % | delta | pixel agreement | max abs diff | p99 abs diff | cosine | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report.backends:
        miou = "-" if b.miou is None else f"{b.miou:.2f}"
        delta = "-" if b.miou_delta is None else f"{b.miou_delta:+.2f}"
        result = "pass" if b.passed else "FAIL: " + "; ".join(b.failures)
        lines.append(
            f"| {md_escape(b.name)} | {md_escape(b.precision_label)} | {miou} | {delta} | "
            f"{b.pixel_agreement:.4%} | {b.max_abs_diff:.2e} | {b.p99_abs_diff:.1e} | {b.cosine:.6f} | "
            f"{md_escape(result)} |"
        )
    if html_name:
        code = html_name.replace("`", "")  # a code span: backslash escapes do not work inside one
        lines += ["", f"Full report with per-class IoU and the worst images: `{code}`."]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)
