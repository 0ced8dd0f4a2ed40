"""The HTML report: self-contained, escapes names, renders in headless Chromium (where Chromium is installed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from danet_deploy.artifact import Precision
from danet_deploy.data.datasets import open_dataset
from danet_deploy.evaluate.locate import LayerError, LocateResult, exclude_pattern
from danet_deploy.evaluate.protocols import EvalProtocol
from danet_deploy.evaluate.verify import verify
from danet_deploy.report.html_report import collect_examples, write_html, write_markdown
from danet_deploy.runners.pytorch import PyTorchRunner

from .conftest import TINY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class ShiftedRunner(PyTorchRunner):
    """A backend that disagrees with the reference on class 0, so the report has something to show."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, TINY, name="<int8 & friends>")  # the name must be escaped in the page

    @property
    def precision(self) -> Precision:
        return Precision.INT8

    def postprocess(self, output: torch.Tensor) -> np.ndarray:
        out = super().postprocess(output)
        out[:, 0] += 3.0
        return out


@pytest.fixture(scope="module")
def report_page(tiny_model, city_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runners = [PyTorchRunner(tiny_model, TINY), ShiftedRunner(tiny_model)]
    dataset = open_dataset(city_data)
    report = verify(dataset, runners, TINY)
    # What `verify --locate` adds for a failed INT8 backend (computed in tests/test_locate.py).
    jump = LayerError("/backbone/<layer3>/Conv", "Conv", "t", 0.8, 0.01, 3.0)
    report.located = [
        LocateResult(
            "<int8 & friends>",
            "m.onnx",
            "fp32.onnx",
            "int8",
            ["a.png"],
            40,
            [jump],
            [jump],
            [exclude_pattern(jump.node)],
        )
    ]
    examples = collect_examples(dataset, runners, report, TINY, EvalProtocol(), limit=2)  # activates them itself
    assert not any(r.is_active for r in runners)
    assert len(examples) == 2 and examples[0].agreement[1] <= examples[1].agreement[1]
    bench = {"device": "CPU", "backends": [{"name": "pytorch", "median_ms": 10.0, "p90_ms": 11.0, "p99_ms": 12.0}]}
    out = tmp_path_factory.mktemp("report")
    write_markdown(report, out / "report.md", "report.html")
    return write_html(report, examples, TINY, out / "report.html", benchmark=bench)


def test_report_is_self_contained_and_escaped(report_page: Path) -> None:
    page = report_page.read_text()
    assert "&lt;int8 &amp; friends&gt;" in page and "<int8 & friends>" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    # Per image: input, ground truth, 2 predictions (overlays), 1 disagreement map.
    assert page.count("data:image/png;base64,") == 2 * (1 + 1 + 2 + 1)
    assert "FAILED" in page and "Per-class IoU delta" in page and "Latency" in page and "Per-image IoU" in page
    assert "&lt;layer3&gt;" in page and "Thresholds in force" in page and "FP32 noise floor" not in page
    markdown = (report_page.parent / "report.md").read_text()
    assert "FAIL" in markdown and r"min\_pixel\_agreement" in markdown and "error jumps at" in markdown


def _browser_missing() -> str | None:
    """Why the real-browser check cannot run here, or None. `.ci/run` installs Debian's chromium when missing."""
    if CHROMIUM is None:
        return "headless Chromium not installed (apt-get install chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[dev]')"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_report_renders_in_headless_chromium(report_page: Path, tmp_path: Path) -> None:
    """The page as a user sees it: rendered by Chromium, charts and image panels drawn, no script errors."""
    from playwright.sync_api import sync_playwright

    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    problems: list[str] = []
    shot = tmp_path / "shot.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(report_page.as_uri(), wait_until="load")
            chart = page.locator('svg[aria-label="per-class IoU delta"]')
            charts = chart.count()
            bars = chart.locator("rect.delta").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
            axis_label = chart.locator("text").last.text_content() or ""
            matrices = page.locator("svg.confusion")
            matrix_titles = matrices.evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
            matrix_cells = matrices.first.locator("rect").count()
            panels = page.locator("h2:text('Worst images') ~ div.row figure img")
            decoded = panels.evaluate_all("els => els.map(e => e.complete && e.naturalWidth > 0)")
            kinds = page.locator("h2:text('Worst images') ~ div.row figure").evaluate_all(
                "els => els.map(e => e.className)"
            )
            thresholds = page.locator("table.thresholds tr").count()
            latency_axis = page.locator('svg[aria-label="latency"] text').last.text_content() or ""
            image_rows = page.locator("table.per-image tr").count()
            locate = page.locator("table.locate td").first.inner_text()
            banner = page.locator(".banner.bad").inner_text()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    # The delta chart: one bar per class for the one backend besides the reference, on a labeled axis.
    assert charts == 1 and len(bars) == len(TINY.class_names) and max(bars) > 10 and "points" in axis_label
    assert matrix_titles == ["confusion matrix pytorch", "confusion matrix <int8 & friends>"]
    assert matrix_cells == len(TINY.class_names) ** 2
    # Per image: input, ground truth overlay, reference and backend overlays, the disagreement map.
    assert len(decoded) == 2 * (1 + 1 + 2 + 1) and all(decoded)
    assert kinds[:5] == ["input", "truth", "prediction", "prediction", "disagreement"]
    assert thresholds == 1 + 3 and "ms" in latency_axis and image_rows == 1 + 3
    assert locate == "/backbone/<layer3>/Conv" and banner == "FAILED"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 10  # something was drawn, not a blank page
    # The failure banner (#ffebe9) is on screen.
    assert (np.abs(pixels.astype(int) - (255, 235, 233)).sum(axis=2) < 8).sum() > 1000
