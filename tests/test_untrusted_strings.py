"""Strings from model files, checkpoints and data sets: validated at load, escaped in HTML and Markdown."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from danet_deploy.artifact import META_CONFIG
from danet_deploy.config import ModelConfig
from danet_deploy.errors import BadInputError
from danet_deploy.evaluate.verify import BackendResult, VerifyReport
from danet_deploy.onnx_export import OnnxModel
from danet_deploy.options import Int8Options
from danet_deploy.report.html_report import CSP, md_escape, write_html, write_markdown

from .conftest import TINY

EVIL = "<script>alert(1)</script>|x"


def _report(name: str) -> VerifyReport:
    backend = BackendResult(
        name=name,
        precision="fp32",
        miou=50.0,
        per_class_iou={EVIL: 50.0},
        pixel_agreement=1.0,
        max_abs_diff=0.0,
        mean_abs_diff=0.0,
        p99_abs_diff=0.0,
        cosine=1.0,
        nonfinite_values=0,
        passed=False,
        failures=[f"mIoU of {EVIL}"],
    )
    return VerifyReport(
        backends=[backend],
        passed=False,
        reference=name,
        images=1,
        labeled=True,
        input_size=[64, 128],
        protocol="whole",
        thresholds={},
        model={},
    )


def test_html_and_markdown_escape_model_and_data_strings(tmp_path: Path) -> None:
    config = replace(TINY, class_names=(EVIL, *TINY.class_names[1:]))
    page = write_html(_report(EVIL), [], config, tmp_path / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page and "script-src" not in CSP
    assert "default-src 'none'" in CSP
    markdown = write_markdown(_report(EVIL), tmp_path / "report.md").read_text()
    assert "<script" not in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| ") and "alert" in line)
    cells = row.replace("\\|", "").split("|")[1:-1]
    assert len(cells) == 9  # the name's `|` did not add a column
    assert md_escape("a\nb*c") == "a b\\*c"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("palette", [["<script>", 0, 0]] * 19, "palette colour 0"),
        ("palette", [[256, 0, 0]] * 19, "0-255"),
        ("palette", [[True, 0, 0]] * 19, "three integers"),
        ("palette", "<script>alert(1)</script>", "palette must be"),
        ("palette", [[1, 2, 3]] * 5, "5 colours for 19 classes"),  # not swapped for a default
        ("class_names", ["road\x1b[31m", *TINY.class_names[1:]], "control"),
        ("class_names", [7, *TINY.class_names[1:]], "must be a string"),
        ("class_names", ["a" * 500, *TINY.class_names[1:]], "characters long"),
    ],
)
def test_bad_palettes_and_class_names_are_refused_when_a_model_is_loaded(
    fp32_onnx: Path, tmp_path: Path, field: str, value: object, message: str
) -> None:
    model = onnx.load(str(fp32_onnx))
    entry = next(p for p in model.metadata_props if p.key == META_CONFIG)
    entry.value = json.dumps({**json.loads(entry.value), field: value})
    path = tmp_path / "evil.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BadInputError, match=message) as info:
        _ = OnnxModel.load(path).config
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**TINY.to_dict(), field: value})


@pytest.mark.filterwarnings("ignore::danet_deploy.precision.CalibrationWarning")
@pytest.mark.parametrize("damage", ["truncate", "fp32-over-entry", "no-record"])
def test_a_damaged_calibration_cache_entry_is_removed_and_recalibrated(
    fp32_onnx: Path, tmp_path: Path, damage: str
) -> None:
    from PIL import Image

    from danet_deploy.data.synthetic import generate_scene
    from danet_deploy.precision import quantize_int8

    calib = tmp_path / "calib"
    calib.mkdir()
    for seed in range(3):
        Image.fromarray(generate_scene(400 + seed, 64, 128).image).save(calib / f"c{seed}.png")
    cache = tmp_path / "cache"
    first, record = quantize_int8(
        fp32_onnx, tmp_path / "a.onnx", Int8Options(calib=calib, method="max", cache_dir=cache)
    )
    entry = cache / f"{record.cache_key}.onnx"
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:1000])
    elif damage == "fp32-over-entry":
        entry.write_bytes(fp32_onnx.read_bytes())
    else:
        entry.with_suffix(".json").unlink()
    again, rerun = quantize_int8(
        fp32_onnx, tmp_path / "b.onnx", Int8Options(calib=calib, method="max", cache_dir=cache)
    )
    assert not rerun.cache_hit and any("calibration cache" in w for w in rerun.warnings)
    assert rerun.qdq.quantized_layers == record.qdq.quantized_layers  # a real INT8 model, as fresh calibration
    assert onnx.load(str(again)).graph == onnx.load(str(first)).graph
    _, hit = quantize_int8(fp32_onnx, tmp_path / "c.onnx", Int8Options(calib=calib, method="max", cache_dir=cache))
    assert hit.cache_hit  # the rewritten entry is trusted again
