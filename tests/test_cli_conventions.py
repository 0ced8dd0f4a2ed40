"""What every command does the same way: --version, -v/-q, help at 80 columns, outputs named after the input,
--json records, option errors named as flags, repeated options and '-' refused, one-line messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from danet_deploy.cli import flag_message, one_line
from danet_deploy.errors import OptionError
from danet_deploy.options import ExportOptions, Int8Options, SimplifyOptions

from .support.cli import CLI, assert_one_line_error, run

COMMANDS = ["export", "simplify", "inspect", "quantize", "build-engine", "verify", "benchmark", "demo"]


def test_version_and_help_answer_without_loading_torch() -> None:
    """A new interpreter, as a user starts it: --help and --version import neither torch nor ONNX Runtime."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['danet-deploy', '--help']\n"
        "try:\n    runpy.run_module('danet_deploy', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "loaded = [m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    from danet_deploy.version import __version__

    assert (version.returncode, version.stdout.strip()) == (0, f"danet-deploy {__version__}")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_full_option_names_at_80_columns(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout and "<bool>" not in result.stdout
    assert "-v, --verbose" in result.stdout and "-q, --quiet" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_option_errors_name_the_field_in_python_and_the_flag_on_the_command_line(fp32_onnx: Path) -> None:
    with pytest.raises(OptionError) as caught:
        Int8Options(calib="x", method="minmax").check()
    assert (caught.value.field, caught.value.value) == ("method", "minmax")
    assert "--" not in str(caught.value)  # the library's words: no flag names
    assert flag_message(caught.value).startswith("--method minmax: choose from entropy")
    with pytest.raises(OptionError, match="atol"):
        SimplifyOptions(atol=float("nan")).check()
    with pytest.raises(OptionError, match="layer4 dilations 0: must be at least 1"):
        ExportOptions(model=ExportOptions().model.__class__(layer4_dilations=(4, 0, 16))).check()
    result = run("simplify", fp32_onnx, "--atol", "nan", "-o", fp32_onnx.parent / "s.onnx")
    assert_one_line_error(result, 2, "--atol nan: must be a finite number")


def test_a_single_value_option_given_twice_and_dash_are_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    assert_one_line_error(run("quantize", fp32_onnx, "--fp16", "-o", "a.onnx", "--output", "b.onnx"), 2, "--output")
    assert_one_line_error(run("inspect", fp32_onnx, "--json", "-"), 2, "'-'")
    assert_one_line_error(run("quantize", fp32_onnx, "--target=ort", "--target=trt", "--int8"), 2, "--target")
    assert not list(tmp_path.iterdir()) and not Path("-").exists()


def test_messages_stay_one_line() -> None:
    assert one_line("bad\nerror: fake line\r\x1b[31m") == "bad\\nerror: fake line\\r\\x1b[31m"
    assert flag_message(OptionError("calib", "a\nb", "no such folder")) == "--calib a\nb: no such folder"
    assert "\n" not in one_line(flag_message(OptionError("calib", "a\nb", "no such folder")))


@pytest.mark.slow
def test_outputs_follow_the_input_and_json_records_and_quiet(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "danet.pth"
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    exported = run("export", ckpt, "--input-size", "64x128", "--json", tmp_path / "export.json")
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "danet.onnx").is_file() and "named after the input" in exported.stderr
    record = json.loads((tmp_path / "export.json").read_text())
    assert record["output"] == str(tmp_path / "danet.onnx") and record["record"]["parity"]
    simplified = run("simplify", tmp_path / "danet.onnx", "--target", "ort", "--json", tmp_path / "s.json", "-q")
    assert simplified.returncode == 0 and simplified.stderr == "", simplified.stderr  # -q: no notes, no progress
    assert (tmp_path / "danet.ort.onnx").is_file()
    assert json.loads((tmp_path / "s.json").read_text())["path"] == str(tmp_path / "danet.ort.onnx")
    fp16 = run("quantize", tmp_path / "danet.onnx", "--fp16", "--json", tmp_path / "q.json")
    assert fp16.returncode == 0, fp16.stderr
    assert (tmp_path / "danet.fp16.onnx").is_file()
    assert json.loads((tmp_path / "q.json").read_text())["precision"] == "fp16"
    plan = run("build-engine", tmp_path / "danet.fp16.onnx", "--fp16", "--dry-run", "--tensorrt-version", "10.3")
    assert plan.returncode == 0, plan.stderr


def test_verbose_and_quiet_exclude_each_other(fp32_onnx: Path) -> None:
    assert_one_line_error(run("inspect", fp32_onnx, "-v", "-q"), 2, "-v/--verbose", "-q/--quiet")


@pytest.mark.slow
def test_the_installed_command_runs_in_a_new_process(fp32_onnx: Path, tmp_path: Path) -> None:
    """One real process per entry point: the console script the package installs."""
    script = Path(sys.executable).with_name("danet-deploy")
    command = [str(script)] if script.exists() else CLI
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [*command, "inspect", str(fp32_onnx), "--json", str(tmp_path / "i.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "i.json").read_text())["precision"] == "fp32"
