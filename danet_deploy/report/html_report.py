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
    """One of the worst images, re-run through every backend for the report.

    Attributes:
        name: the image (relative to the data set root).
        image: H x W x 3 uint8, at the size the backends ran.
        labels: per backend, H x W predicted class ids.
        agreement: per backend, the fraction of pixels labeled as the reference labels them.
        ground_truth: H x W class ids (ignore index where unlabeled) resized to the image, None without labels.
    """

    name: str
    image: np.ndarray
    labels: list[np.ndarray]
    agreement: list[float]
    ground_truth: np.ndarray | None = None


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
    index = {dataset.name(path): i for i, (path, _) in enumerate(dataset.items)}
    size = common_input_size(r.input_spec.static_size for r in runners) if protocol.crop is None else None
    examples = []
    with activated(runners):
        for name in names:
            sample = dataset.load(index[name])
            image = resize_image(sample.image, size) if size else sample.image
            labels = [predict(r.infer, image, protocol, config.align_corners).argmax(1)[0] for r in runners]
            agreement = [float((lab == labels[0]).mean()) for lab in labels]
            truth = None
            if sample.label is not None:  # nearest neighbour: class ids are not blended
                resized = Image.fromarray(sample.label).resize(image.shape[1::-1], Image.Resampling.NEAREST)
                truth = np.asarray(resized)
            examples.append(Example(name, image, labels, agreement, truth))
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


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], ignore: int = 255) -> np.ndarray:
    """The class colours blended half and half over the input (ignored pixels show the input alone)."""
    colours = colourize(labels, palette).astype(np.uint16)
    blended = ((image.astype(np.uint16) + colours) // 2).astype(np.uint8)
    blended[labels == ignore] = image[labels == ignore]
    return blended


def disagreement_map(image: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Grey input with the pixels whose label differs from the reference in red."""
    grey = (image.mean(axis=2, keepdims=True) * 0.6).astype(np.uint8).repeat(3, axis=2)
    grey[labels != reference] = (255, 0, 0)
    return grey


def svg_per_class_delta(report: VerifyReport) -> str:
    """The main chart: per class, each backend's IoU minus the reference's (points), bars around a zero axis with a
    labeled scale. The absolute values are in the table below it."""
    classes = list(report.backends[0].per_class_iou)
    others = report.backends[1:]
    if not classes or not others:
        return "<p>No labels (or no backend besides the reference): per-class IoU deltas not computed.</p>"
    values = [abs(v) for b in others for v in b.per_class_iou_delta.values() if v is not None]
    span = max([*values, 0.1]) * 1.1
    bar, gap, left, width, top = 9, 6, 150, 480, 24
    row = len(others) * bar + gap
    height = top + len(classes) * row + 40
    zero = left + width / 2
    x = lambda v: zero + width / 2 * v / span  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" role="img" '
        'aria-label="per-class IoU delta">'
    ]
    for i, name in enumerate(classes):
        y0 = top + i * row
        parts.append(
            f'<text x="{left - 6}" y="{y0 + len(others) * bar / 2 + 4}" text-anchor="end" font-size="11">'
            f"{html.escape(name)}</text>"
        )
        for j, backend in enumerate(others):
            value = backend.per_class_iou_delta.get(name)
            colour = BACKEND_COLOURS[(j + 1) % len(BACKEND_COLOURS)]
            label = "n/a" if value is None else f"{value:+.2f} points"
            v = value or 0.0
            x0, x1 = sorted((zero, x(v)))
            parts.append(
                f'<rect class="delta" x="{x0:.1f}" y="{y0 + j * bar}" width="{max(x1 - x0, 0.5):.1f}" '
                f'height="{bar - 1}" fill="{colour}"><title>{html.escape(backend.name)}, {html.escape(name)}: '
                f"{label}</title></rect>"
            )
    axis_y = top + len(classes) * row
    parts.append(f'<line x1="{zero}" x2="{zero}" y1="{top - 4}" y2="{axis_y}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" x2="{left + width}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>')
    for k in range(-2, 3):
        tick = span * k / 2
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{axis_y}" y2="{axis_y + 4}" stroke="#333"/>'
            f'<text x="{x(tick):.1f}" y="{axis_y + 16}" text-anchor="middle" font-size="10">{tick:+.2g}</text>'
        )
    parts.append(
        f'<text x="{zero}" y="{axis_y + 32}" text-anchor="middle" font-size="11">'
        "IoU delta vs the reference (points; left: worse)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def svg_confusion(confusion: list[list[int]], class_names: Sequence[str], title: str) -> str:
    """Confusion matrix as a heat map, rows (ground truth) normalized to 1; each cell's title gives the numbers."""
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.size == 0:
        return ""
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.where(rows > 0, matrix / rows, 0.0)
    n = len(matrix)
    cell, left, top = max(8, min(18, 380 // max(n, 1))), 120, 110
    size = n * cell
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + size + 10}" height="{top + size + 30}" role="img" '
        f'aria-label="confusion matrix {html.escape(title)}" class="confusion">',
        f'<text x="{left}" y="14" font-size="12" font-weight="600">{html.escape(title)}</text>',
        f'<text x="{left + size / 2}" y="{top + size + 22}" text-anchor="middle" font-size="11">predicted</text>',
    ]
    for i, name in enumerate(class_names[:n]):
        escaped = html.escape(name)
        parts.append(
            f'<text x="{left - 4}" y="{top + i * cell + cell * 0.75}" text-anchor="end" font-size="9">{escaped}</text>'
        )
        cx = left + i * cell + cell * 0.7
        parts.append(
            f'<text x="{cx}" y="{top - 4}" font-size="9" transform="rotate(-60 {cx} {top - 4})">{escaped}</text>'
        )
    for i in range(n):
        for j in range(n):
            value = normalized[i, j]
            shade = int(255 - 200 * value)
            fill = f"rgb({shade},{shade},255)" if i == j else f"rgb(255,{shade},{shade})"
            parts.append(
                f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" fill="{fill}" '
                f'stroke="#eee"><title>truth {html.escape(class_names[i]) if i < len(class_names) else i} -&gt; '
                f"{html.escape(class_names[j]) if j < len(class_names) else j}: {value:.3f} "
                f"({int(matrix[i, j])} px)</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def svg_latency(results: list[dict[str, Any]]) -> str:
    """Median latency bars with a p90-p99 whisker per backend, on a labeled millisecond axis."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return ""
    top = max(r["p99_ms"] for r in ok) * 1.1
    left, width, row = 190, 420, 26
    axis_y = len(ok) * row + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{axis_y + 40}" '
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
    parts.append(f'<line class="axis" x1="{left}" x2="{left + width}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>')
    for k in range(5):
        value = top * k / 4
        tx = left + width * k / 4
        parts.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{axis_y}" y2="{axis_y + 4}" stroke="#333"/>'
            f'<text x="{tx:.1f}" y="{axis_y + 16}" text-anchor="middle" font-size="10">{value:.3g}</text>'
        )
    parts.append(
        f'<text x="{left + width / 2}" y="{axis_y + 32}" text-anchor="middle" font-size="11">'
        "latency per image (ms): bar median, whisker p90 to p99</text></svg>"
    )
    return "".join(parts)


def _class_rows(report: VerifyReport) -> str:
    """Absolute per-class IoU, one column per backend."""
    names = list(report.backends[0].per_class_iou)
    rows = []
    for name in names:
        cells = "".join(
            f"<td>{'-' if b.per_class_iou.get(name) is None else format(b.per_class_iou[name], '.2f')}</td>"
            for b in report.backends
        )
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    head = "".join(f"<th>{html.escape(b.name)}</th>" for b in report.backends)
    return f'<table class="per-class"><tr><th>class</th>{head}</tr>{"".join(rows)}</table>'


def _image_rows(report: VerifyReport, limit: int = 50) -> str:
    """Per image: mIoU against the ground truth per backend and agreement with the reference; worst first."""
    others = report.backends[1:]
    reference = {item["image"]: item for item in report.backends[0].per_image}
    order = sorted(
        reference,
        key=lambda name: min([1.0, *(i["pixel_agreement"] for b in others for i in b.per_image if i["image"] == name)]),
    )
    by_backend = [{item["image"]: item for item in b.per_image} for b in report.backends]
    head = "".join(f"<th>{html.escape(b.name)} mIoU %</th>" for b in report.backends)
    head += "".join(f"<th>{html.escape(b.name)} agreement</th>" for b in others)
    rows = []
    for name in order[:limit]:
        mious = "".join(
            f"<td>{'-' if items[name]['miou'] is None else format(items[name]['miou'], '.2f')}</td>"
            for items in by_backend
        )
        agree = "".join(f"<td>{items[name]['pixel_agreement']:.4%}</td>" for items in by_backend[1:])
        rows.append(f"<tr><td>{html.escape(name)}</td>{mious}{agree}</tr>")
    more = f"<p>{len(order) - limit} more images in the JSON report.</p>" if len(order) > limit else ""
    return f'<table class="per-image"><tr><th>image</th>{head}</tr>{"".join(rows)}</table>{more}'


def _threshold_rows(report: VerifyReport) -> str:
    from danet_deploy.report.text import threshold_value

    rows = "".join(
        f"<tr><td>{html.escape(t.precision)}</td><td>{html.escape(t.name)}</td>"
        f'<td>{html.escape(threshold_value(t.name, t.value))}</td><td class="source">{html.escape(t.source)}</td></tr>'
        for t in report.thresholds_in_force
    )
    noise = ""
    if report.fp32_noise is not None:
        n = report.fp32_noise
        noise = (
            f"<p>FP32 noise floor: {html.escape(n.describe())} (mean {n.mean_abs:.2e}, max |logit| "
            f"{n.max_logit:.3g}, {n.seconds:.1f} s).</p>"
        )
    return (
        f'<table class="thresholds"><tr><th>precision</th><th>threshold</th><th>value</th><th>from</th></tr>{rows}'
        f"</table>{noise}"
    )


def _locate_html(report: VerifyReport) -> str:
    if not report.located:
        return ""
    blocks = ["<h2>Where the error appears (locate)</h2>"]
    for result in report.located:
        name = html.escape(result.backend)
        if result.skipped:
            blocks.append(f"<p>{name}: skipped ({html.escape(result.skipped)})</p>")
            continue
        rows = "".join(
            f"<tr><td>{html.escape(layer.node)}</td><td>{html.escape(layer.op_type)}</td><td>{layer.error:.3g}</td>"
            f"<td>{layer.inherited:.3g}</td><td>{layer.max_abs_diff:.3g}</td></tr>"
            for layer in result.jumps
        )
        images = html.escape(", ".join(result.images))
        blocks.append(
            f"<p>{name}: {result.compared} tensors compared with {html.escape(result.reference)} on {images}; "
            "the first nodes where the error jumps:</p>"
            f'<table class="locate"><tr><th>node</th><th>op</th><th>relative error</th><th>inherited</th>'
            f"<th>max |diff|</th></tr>{rows}</table>"
        )
        if result.exclude:
            command = " ".join(f"--exclude '{p}'" for p in result.exclude)
            blocks.append(f"<p>Keep them in higher precision: <code>quantize {html.escape(command)}</code></p>")
    return "".join(blocks)


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


def _examples_html(
    examples: list[Example], report: VerifyReport, palette: Sequence[Sequence[int]], ignore: int = 255
) -> str:
    if not examples:
        return "<p>No disagreements to show.</p>"

    def figure(array: np.ndarray, caption: str, kind: str) -> str:
        return (
            f'<figure class="{kind}"><img src="{_png(array)}" alt="{caption}"><figcaption>{caption}</figcaption>'
            "</figure>"
        )

    blocks = []
    for ex in examples:
        cells = [figure(ex.image, "input", "input")]
        if ex.ground_truth is not None:
            cells.append(figure(overlay(ex.image, ex.ground_truth, palette, ignore), "ground truth", "truth"))
        for b, labels, agreement in zip(report.backends, ex.labels, ex.agreement):
            caption = f"{html.escape(b.name)}<br>{agreement:.3%} agree"
            cells.append(figure(overlay(ex.image, labels, palette), caption, "prediction"))
        for b, labels in zip(report.backends[1:], ex.labels[1:]):
            caption = f"{html.escape(b.name)} vs {html.escape(report.reference)}: red = differs"
            cells.append(figure(disagreement_map(ex.image, labels, ex.labels[0]), caption, "disagreement"))
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
td.source{text-align:left;font-size:12px;max-width:700px}code{background:#f6f8fa;padding:2px 4px}
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
        if i > 0
    )
    classes = "".join(
        f'<span><i style="background:{_rgb(config.palette[i])}"></i>{html.escape(n)}</span>'
        for i, n in enumerate(config.class_names)
    )
    bench = ""
    if benchmark:
        bench = f"<h2>Latency</h2><p>{html.escape(str(benchmark.get('device', '')))}</p>"
        bench += svg_latency(benchmark["backends"])
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    banner = '<div class="banner ok">PASSED</div>' if report.passed else '<div class="banner bad">FAILED</div>'
    size = html.escape("x".join(map(str, report.input_size)) if report.input_size else "native size")
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in report.notes)
    confusion = ""
    if report.labeled and len(report.backends) > 1:
        worst = min(report.backends[1:], key=lambda b: (b.miou if b.miou is not None else 0.0, b.pixel_agreement))
        confusion = (
            "<h2>Confusion matrices (rows: ground truth, normalized)</h2>"
            f'<div class="row">{svg_confusion(report.backends[0].confusion, config.class_names, report.reference)}'
            f"{svg_confusion(worst.confusion, config.class_names, worst.name)}</div>"
        )
    worst_images = _examples_html(examples, report, config.palette, config.ignore_index)
    per_class = ""
    if report.labeled:
        per_class = f"<h3>Per-class IoU %</h3>{_class_rows(report)}"
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>{banner}
<p>{html.escape(config.arch)}, {html.escape(str(config.num_classes))} classes; {report.images} images;
protocol {html.escape(report.protocol)}; input {size}; reference {html.escape(report.reference)}; {created}</p>{notes}
<h2>Backends</h2><table><tr><th>backend</th><th>precision</th><th>mIoU %</th><th>delta mIoU</th><th>pixel agreement</th>
<th>max |diff|</th><th>p99 |diff|</th><th>cosine</th><th>NaN/Inf</th><th>result</th></tr>
{_backend_rows(report)}</table>
<h2>Thresholds in force</h2>{_threshold_rows(report)}
<h2>Per-class IoU delta vs the reference</h2><div class="legend">{legend}</div>{svg_per_class_delta(report)}
{per_class}
{confusion}
{_locate_html(report)}
{bench}
<h2>Per-image IoU</h2>{_image_rows(report)}
<h2>Worst images</h2><div class="legend">{classes}</div>{worst_images}
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
    lines += ["", "| precision | threshold | value | from |", "|---|---|---|---|"]
    from danet_deploy.report.text import threshold_value

    for t in report.thresholds_in_force:
        lines.append(
            f"| {md_escape(t.precision)} | {md_escape(t.name)} | {md_escape(threshold_value(t.name, t.value))} | "
            f"{md_escape(t.source)} |"
        )
    for result in report.located:
        lines += ["", *[md_escape(line) + "  " for line in result.lines()]]
    if html_name:
        code = html_name.replace("`", "")  # a code span: backslash escapes do not work inside one
        lines += ["", f"Full report with per-class IoU and the worst images: `{code}`."]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)
