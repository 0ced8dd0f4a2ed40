"""Every Python snippet in README.md runs as written, in a folder holding what the snippets name: `danet.pth`
(the bundled demo checkpoint), `calibration/images` (the repository's calibration images), `cityscapes/` (the
bundled labeled demo data) and `street.png` (a bundled scene). The export snippet runs first (the others read
the `danet.onnx` it writes), then the rest in README order."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from pathlib import Path

import pytest

from danet_deploy.data.bundled import DEMO_CHECKPOINT, DEMO_DATA

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_snippets() -> list[tuple[str, str]]:
    """(name, code) of every ```python block, named by the `<!-- readme-snippet: NAME -->` line before it."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"(?:<!-- readme-snippet: ([\w-]+) -->\n)?```python\n(.*?)```", text, flags=re.S)
    return [(name or f"snippet-{i}", code) for i, (name, code) in enumerate(blocks)]


def test_every_python_snippet_is_named() -> None:
    """A snippet without a name would still run below; the name is what a failure points at."""
    snippets = python_snippets()
    assert snippets, "README.md has no Python snippet"
    assert all(not name.startswith("snippet-") for name, _ in snippets), [n for n, _ in snippets]


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(tmp_path: Path) -> None:
    shutil.copy(DEMO_CHECKPOINT, tmp_path / "danet.pth")
    (tmp_path / "calibration").mkdir()
    shutil.copytree(ROOT / "calibration" / "images", tmp_path / "calibration" / "images")
    shutil.copytree(DEMO_DATA, tmp_path / "cityscapes")
    shutil.copy(sorted((DEMO_DATA / "leftImg8bit").rglob("*.png"))[0], tmp_path / "street.png")
    snippets = sorted(python_snippets(), key=lambda snippet: snippet[0] != "export-quantize-verify")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        for name, code in snippets:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"README.md:{name}", "exec"), {"__name__": f"readme_{name}"})
            if name == "export-quantize-verify":
                assert printed.getvalue().startswith("True ["), printed.getvalue()
                assert (tmp_path / "danet.int8.onnx").is_file()
            if name == "segmenter":
                assert (tmp_path / "street.labels.png").is_file()
            if name == "calibration-iterable":
                assert (tmp_path / "danet.fp16.onnx").is_file()
                assert printed.getvalue().strip().endswith("method choose from entropy, max, percentile")
    finally:
        os.chdir(cwd)
    assert not list(tmp_path.glob(".danet-deploy-*")), "a scratch folder was left behind"
