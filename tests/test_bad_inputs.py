"""Bad inputs and faults, table-driven, from the command line as a hostile user tries them.

Each case: the command, the exit code, a fragment of its one-line error, and what must not be left behind
(outputs, temporaries) or must be unchanged (inputs). Faults that need a process state (Ctrl-C, a killed run,
a failure between two outputs) have their own tests below the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest
import typer

from danet_deploy import files
from danet_deploy.cli import EXIT_INTERRUPTED, guarded

from .test_cli import assert_one_line_error, run

pytestmark = pytest.mark.filterwarnings("ignore::danet_deploy.precision.CalibrationWarning")


@dataclass
class Workspace:
    """What the cases refer to: the tiny model's files and a scratch folder."""

    ckpt: Path
    onnx: Path
    data: Path
    calib: Path
    tmp: Path
    made: dict[str, Path] = field(default_factory=dict)

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path


@dataclass
class Case:
    id: str
    args: Callable[[Workspace], list[str | Path]]
    code: int
    message: str
    absent: Callable[[Workspace], list[Path]] = lambda w: []
    unchanged: Callable[[Workspace], list[Path]] = lambda w: []


def _external_data_missing(w: Workspace) -> Path:
    model = onnx.load(str(w.onnx))
    path = w.tmp / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="external.data", size_threshold=0)
    (w.tmp / "external.data").unlink()
    return path


CASES = [
    # 1. never over an input
    Case("export-over-checkpoint", lambda w: ["export", w.ckpt, "-o", w.ckpt], 2, "is also an input",
         unchanged=lambda w: [w.ckpt]),
    Case("quantize-over-model", lambda w: ["quantize", w.onnx, "--calib", w.calib, "-o", w.onnx], 2,
         "is also an input", unchanged=lambda w: [w.onnx]),
    Case("verify-json-over-model", lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--json", w.onnx], 2,
         "is also an input", unchanged=lambda w: [w.onnx]),
    Case("simplify-over-model", lambda w: ["simplify", w.onnx, "-o", w.onnx, "--target", "ort"], 2,
         "is also an input", unchanged=lambda w: [w.onnx]),
    Case("inspect-json-over-model", lambda w: ["inspect", w.onnx, "--json", w.onnx], 2, "is also an input",
         unchanged=lambda w: [w.onnx]),
    Case("benchmark-json-over-model", lambda w: ["benchmark", "--onnx", w.onnx, "--json", w.onnx], 2,
         "is also an input", unchanged=lambda w: [w.onnx]),
    # 2. outputs checked before the work
    Case("unwritable-output", lambda w: ["export", w.ckpt, "-o", "/proc/danet.onnx"], 2, "cannot write"),
    Case("output-under-a-file", lambda w: ["export", w.ckpt, "-o", w.ckpt / "x.onnx"], 2, "is not a folder"),
    Case("simplify-unknown-target-before-export",
         lambda w: ["export", w.ckpt, "-o", w.tmp / "t.onnx", "--simplify", "--target", "banana"], 2, "banana",
         absent=lambda w: [w.tmp / "t.onnx"]),
    # 7. invalid option values are exit 2 (not 1), before long work
    Case("opset-99", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--opset", "99"], 2, "--opset 99",
         absent=lambda w: [w.tmp / "o.onnx"]),
    Case("negative-atol", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--atol", "-1"], 2, "--atol"),
    Case("zero-std", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--std", "0,0,0"], 2, "--std"),
    Case("nan-mean", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--mean", "nan,0,0"], 2, "--mean"),
    Case("huge-input-size", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--input-size", "99999x99999"], 2,
         "GiB", absent=lambda w: [w.tmp / "o.onnx"]),
    Case("class-names-count", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--class-names", "a,b"], 2,
         "--class-names: 2 class names"),
    Case("threshold-nan", lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--threshold",
                                     "fp32.max_abs_diff=nan"], 2, "--threshold"),
    Case("threshold-agreement-5", lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--threshold",
                                             "fp32.min_pixel_agreement=5"], 2, "between 0 and 1"),
    Case("thresholds-file-not-json", lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--thresholds-file",
                                                w.file("t.json", "{nope")], 2, "t.json"),
    Case("thresholds-file-negative", lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--thresholds-file",
                                                w.file("n.json", json.dumps({"int8": {"max_miou_drop": -1}}))], 2,
         "n.json: int8.max_miou_drop"),
    Case("bad-exclude-regex-int8", lambda w: ["quantize", w.onnx, "--calib", w.calib, "--exclude", "[", "-o",
                                              w.tmp / "q.onnx"], 2, "--exclude '['"),
    Case("bad-exclude-regex-fp16", lambda w: ["quantize", w.onnx, "--fp16", "--exclude", "(", "-o",
                                              w.tmp / "q.onnx"], 2, "--exclude '('"),
    Case("unknown-option", lambda w: ["verify", "--onnx", w.onnx, "--bogus"], 2, "No such option: --bogus"),
    Case("missing-argument", lambda w: ["export"], 2, "Missing argument"),
    # unusable input files
    Case("missing-checkpoint", lambda w: ["export", w.tmp / "nope.pth", "-o", w.tmp / "o.onnx"], 2, "nope.pth"),
    Case("truncated-checkpoint", lambda w: ["export", w.file("cut.pth", w.ckpt.read_bytes()[:999]), "-o",
                                            w.tmp / "o.onnx"], 2, "cut.pth"),
    Case("empty-onnx", lambda w: ["inspect", w.file("empty.onnx", b"")], 2, "empty.onnx"),
    Case("garbage-onnx", lambda w: ["verify", "--onnx", w.file("junk.onnx", b"\x00junk" * 50), "--data", w.data], 2,
         "junk.onnx: not a readable ONNX model"),
    Case("external-data-missing", lambda w: ["verify", "--onnx", _external_data_missing(w), "--data", w.data], 2,
         "external.onnx"),
    Case("missing-data-folder", lambda w: ["verify", "--onnx", w.onnx, "--data", w.tmp / "nodata"], 2, "nodata"),
    Case("ort-int8-to-tensorrt", lambda w: ["build-engine", w.made["ort_int8"], "--int8", "--dry-run", "-o",
                                            w.tmp / "e.engine"], 2, "ONNX Runtime"),
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tiny_ckpt: Path, fp32_onnx: Path, city_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from PIL import Image

    from danet_deploy.data.synthetic import generate_scene
    from danet_deploy.precision import quantize_int8

    root = tmp_path_factory.mktemp("bad")
    calib = root / "calib"
    calib.mkdir()
    for seed in range(4):
        Image.fromarray(generate_scene(300 + seed, 64, 128).image).save(calib / f"c{seed}.png")
    w = Workspace(tiny_ckpt, fp32_onnx, city_data, calib, root)
    w.made["ort_int8"], _ = quantize_int8(fp32_onnx, calib, root / "ort.int8.onnx", method="max", target="ort",
                                          cache_dir=root / "cache")  # fmt: skip
    return w


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, workspace: Workspace) -> None:
    args = case.args(workspace)
    before = {p: _digest(p) for p in case.unchanged(workspace)}
    listing = sorted(p.name for p in workspace.tmp.iterdir())
    result = run(*args, cwd=workspace.tmp)
    assert_one_line_error(result, case.code, case.message)
    assert "Traceback" not in result.stdout + result.stderr and "╭" not in result.stderr  # no boxes
    for path in case.absent(workspace):
        assert not path.exists(), path
    for path, digest in before.items():
        assert _digest(path) == digest, f"{path} was modified"
    hidden = [p for p in workspace.tmp.iterdir() if p.name.startswith(".") and p.name not in listing]
    assert not hidden, hidden


# faults ---------------------------------------------------------------------------------------------------


def test_all_or_nothing_writes_every_output_or_none(tmp_path: Path) -> None:
    with files.all_or_nothing():
        files.write_text(tmp_path / "a.json", "{}")
        assert not (tmp_path / "a.json").exists()  # not before the block ends
        files.write_text(tmp_path / "b.md", "b")
    assert (tmp_path / "a.json").read_text() == "{}" and (tmp_path / "b.md").read_text() == "b"
    with pytest.raises(RuntimeError), files.all_or_nothing():
        files.write_text(tmp_path / "c.json", "{}")
        raise RuntimeError("the report failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.md"]  # no c.json, no temporaries


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale_file = tmp_path / f".model.onnx.{pid}.k3j2h1.tmp"
    stale_dir = tmp_path / f".danet-deploy-{pid}-a1b2c3"
    live = tmp_path / f".other.onnx.{os.getpid()}.z9y8x7.tmp"  # a running writer's: kept
    user_file = tmp_path / ".hidden-notes.tmp"
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "raw.onnx").write_bytes(b"half")
    for path in (live, user_file):
        path.write_bytes(b"x")
    files.check_output(tmp_path / "model.onnx")
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and user_file.exists()
    with files.atomic_path(tmp_path / "n.onnx") as tmp:  # the writer tags its temporaries with its pid
        assert f".{os.getpid()}." in tmp.name and tmp.name.startswith(".")


def test_an_interrupt_a_library_wrapped_is_still_exit_130() -> None:
    @guarded
    def export_like() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:  # torch.onnx turns it into its own error
            raise RuntimeError("TorchExportError: failed to export") from exc

    with pytest.raises(typer.Exit) as exit_info:
        export_like()
    assert exit_info.value.exit_code == EXIT_INTERRUPTED == 130


@pytest.mark.slow
def test_ctrl_c_in_a_stage_is_one_line_exit_130_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT while a stage writes its output: the stage is held in its write until the signal arrives."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from danet_deploy import api, cli, files

        def export(*args, **kwargs):
            with files.atomic_path(Path({str(tmp_path / "out.onnx")!r})) as tmp:
                tmp.write_bytes(b"half an ONNX file")
                Path({str(tmp_path / "ready")!r}).touch()
                time.sleep(60)

        api.export = export
        sys.argv = ["danet-deploy", "export", "ckpt.pth", "-o", {str(tmp_path / "out.onnx")!r}]
        cli.main()
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted") and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]  # no output, no temporary
