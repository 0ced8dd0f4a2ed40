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

import numpy as np
import onnx
import pytest
import typer

from danet_deploy import files
from danet_deploy.cli import guarded
from danet_deploy.errors import EXIT_INTERRUPTED
from danet_deploy.options import Int8Options

from .support.cli import assert_one_line_error, run

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
    message: str | tuple[str, ...]  # fragments of the one-line error
    absent: Callable[[Workspace], list[Path]] = lambda w: []
    unchanged: Callable[[Workspace], list[Path]] = lambda w: []


def _external_data_missing(w: Workspace) -> Path:
    model = onnx.load(str(w.onnx))
    path = w.tmp / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="external.data", size_threshold=0)
    (w.tmp / "external.data").unlink()
    return path


def _bomb(path: Path) -> Path:
    """A 300-byte PNG whose header claims more pixels than Pillow's decompression-bomb limit."""
    from danet_deploy.data.images import max_pixels

    from .test_images import png_bytes

    side = int(max_pixels() ** 0.5) + 10
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(side, side)))
    return path


def _pair_data(w: Workspace, name: str, masks: dict[str, np.ndarray | None]) -> Path:
    """images/ + masks/ with the tiny model's 64 x 128 scenes; None: that image has no mask."""
    from PIL import Image

    from danet_deploy.data.synthetic import generate_scene

    root = w.tmp / name
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i, (stem, mask) in enumerate(masks.items()):
        scene = generate_scene(40 + i, 64, 128)
        Image.fromarray(scene.image).save(root / "images" / f"{stem}.png")
        if mask is not None:
            Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def _unknown_values(w: Workspace) -> Path:
    mask = np.zeros((64, 128), np.uint8)
    mask[:2, :3] = 42  # the tiny model has 19 classes
    return _pair_data(w, "unknown", {"a": np.zeros((64, 128), np.uint8), "b": mask})


def _partly_labeled(w: Workspace) -> Path:
    return _pair_data(w, "partial", {"a": np.zeros((64, 128), np.uint8), "b": None, "c": None})


def _bomb_in_data(w: Workspace) -> Path:
    root = _pair_data(w, "bombdata", {"a": None})
    _bomb(root / "images" / "giant.png")
    return root


def _external_data_kept(w: Workspace) -> Path:
    """A model saved with its weights in `ext.onnx.data` (both present)."""
    path = w.tmp / "ext.onnx"
    if not path.exists():
        onnx.save(
            onnx.load(str(w.onnx)), str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0
        )
    return path


def _fifo(w: Workspace) -> Path:
    path = w.tmp / "pipe"
    if not path.exists():
        os.mkfifo(path)
    return path


def _unknown_op(w: Workspace) -> Path:
    model = onnx.load(str(w.onnx))
    model.graph.node[0].op_type = "NoSuchOp"
    path = w.tmp / "unknown_op.onnx"
    onnx.save(model, str(path))
    return path


def _engine(w: Workspace) -> Path:
    """An engine file with its sidecar (not a real plan: enough for the checks that come first)."""
    from danet_deploy.engine.sidecar import write_sidecar

    from .test_engine import _sidecar

    path = w.tmp / "fake.engine"
    path.write_bytes(b"not a plan")
    write_sidecar(path, _sidecar())
    return path


CASES = [
    # 1. never over an input
    Case(
        "export-over-checkpoint",
        lambda w: ["export", w.ckpt, "-o", w.ckpt],
        2,
        "is also an input",
        unchanged=lambda w: [w.ckpt],
    ),
    Case(
        "quantize-over-model",
        lambda w: ["quantize", w.onnx, "--int8", "--calib", w.calib, "-o", w.onnx],
        2,
        "is also an input",
        unchanged=lambda w: [w.onnx],
    ),
    Case(
        "verify-json-over-model",
        lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--json", w.onnx],
        2,
        "is also an input",
        unchanged=lambda w: [w.onnx],
    ),
    Case(
        "simplify-over-model",
        lambda w: ["simplify", w.onnx, "-o", w.onnx, "--target", "ort"],
        2,
        "is also an input",
        unchanged=lambda w: [w.onnx],
    ),
    Case(
        "inspect-json-over-model",
        lambda w: ["inspect", w.onnx, "--json", w.onnx],
        2,
        "is also an input",
        unchanged=lambda w: [w.onnx],
    ),
    Case(
        "benchmark-json-over-model",
        lambda w: ["benchmark", "--onnx", w.onnx, "--json", w.onnx],
        2,
        "is also an input",
        unchanged=lambda w: [w.onnx],
    ),
    Case(
        "verify-json-over-a-data-image",
        lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--json", next(w.data.rglob("*_leftImg8bit.png"))],
        2,
        "is a file of the input folder",
    ),
    Case(
        "quantize-over-a-calibration-image",
        lambda w: ["quantize", w.onnx, "--fp16", "--calib", w.calib, "-o", w.calib / "c0.png"],
        2,
        "is a file of the input folder",
    ),
    Case(
        "verify-json-over-thresholds-file",
        lambda w: [
            "verify",
            "--onnx",
            w.onnx,
            "--data",
            w.data,
            "--thresholds-file",
            w.file("th.json", "{}"),
            "--json",
            w.tmp / "th.json",
        ],
        2,
        "th.json: is also an input",
    ),
    Case(
        "export-over-class-names-file",
        lambda w: [
            "export",
            w.ckpt,
            "--class-names",
            w.file("names.txt", "\n".join(f"c{i}" for i in range(19))),
            "-o",
            w.tmp / "names.txt",
        ],
        2,
        "names.txt: is also an input",
    ),
    Case(
        "output-over-external-data",
        lambda w: ["inspect", _external_data_kept(w), "--json", w.tmp / "ext.onnx.data"],
        2,
        "holds the external data of the input",
    ),
    Case(
        "inspect-json-over-engine-sidecar",
        lambda w: ["inspect", _engine(w), "--json", w.tmp / "fake.engine.json"],
        2,
        "fake.engine.json: is also an input",
    ),
    Case("output-is-a-fifo", lambda w: ["inspect", w.onnx, "--json", _fifo(w)], 2, "is not a regular file"),
    Case(
        "two-outputs-collide",
        lambda w: [
            "verify",
            "--onnx",
            w.onnx,
            "--data",
            w.data,
            "--report",
            w.tmp / "rep",
            "--json",
            w.tmp / "rep" / "report.md",
        ],
        2,
        "collides with another output",
        absent=lambda w: [w.tmp / "rep"],
    ),
    # 2. outputs checked before the work
    Case("unwritable-output", lambda w: ["export", w.ckpt, "-o", "/proc/danet.onnx"], 2, "cannot write"),
    Case("output-under-a-file", lambda w: ["export", w.ckpt, "-o", w.ckpt / "x.onnx"], 2, "is not a folder"),
    Case(
        "simplify-unknown-target-before-export",
        lambda w: ["export", w.ckpt, "-o", w.tmp / "t.onnx", "--simplify", "--target", "banana"],
        2,
        "banana",
        absent=lambda w: [w.tmp / "t.onnx"],
    ),
    # 7. invalid option values are exit 2 (not 1), before long work
    Case(
        "opset-99",
        lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--opset", "99"],
        2,
        "--opset 99",
        absent=lambda w: [w.tmp / "o.onnx"],
    ),
    Case("negative-atol", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--atol", "-1"], 2, "--atol"),
    Case("zero-std", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--std", "0,0,0"], 2, "--std"),
    Case("nan-mean", lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--mean", "nan,0,0"], 2, "--mean"),
    Case(
        "huge-input-size",
        lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--input-size", "99999x99999"],
        2,
        "GiB",
        absent=lambda w: [w.tmp / "o.onnx"],
    ),
    Case(
        "class-names-count",
        lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--class-names", "a,b"],
        2,
        "--class-names: 2 class names",
    ),
    Case(
        "threshold-nan",
        lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--threshold", "fp32.max_abs_diff=nan"],
        2,
        "--threshold",
    ),
    Case(
        "threshold-agreement-5",
        lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--threshold", "fp32.min_pixel_agreement=5"],
        2,
        "between 0 and 1",
    ),
    Case(
        "thresholds-file-not-json",
        lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--thresholds-file", w.file("t.json", "{nope")],
        2,
        "t.json",
    ),
    Case(
        "thresholds-file-negative",
        lambda w: [
            "verify",
            "--onnx",
            w.onnx,
            "--data",
            w.data,
            "--thresholds-file",
            w.file("n.json", json.dumps({"int8": {"max_miou_drop": -1}})),
        ],
        2,
        "n.json: int8.max_miou_drop",
    ),
    Case(
        "bad-exclude-regex-int8",
        lambda w: ["quantize", w.onnx, "--int8", "--calib", w.calib, "--exclude", "[", "-o", w.tmp / "q.onnx"],
        2,
        "--exclude [: not a valid regular expression",
    ),
    Case(
        "bad-exclude-regex-fp16",
        lambda w: ["quantize", w.onnx, "--fp16", "--exclude", "(", "-o", w.tmp / "q.onnx"],
        2,
        "--exclude (: not a valid regular expression",
    ),
    Case("unknown-option", lambda w: ["verify", "--onnx", w.onnx, "--bogus"], 2, "No such option: --bogus"),
    Case("missing-argument", lambda w: ["export"], 2, "Missing argument"),
    # unusable input files
    Case("missing-checkpoint", lambda w: ["export", w.tmp / "nope.pth", "-o", w.tmp / "o.onnx"], 2, "nope.pth"),
    Case(
        "truncated-checkpoint",
        lambda w: ["export", w.file("cut.pth", w.ckpt.read_bytes()[:999]), "-o", w.tmp / "o.onnx"],
        2,
        "cut.pth",
    ),
    Case("empty-onnx", lambda w: ["inspect", w.file("empty.onnx", b"")], 2, "empty.onnx"),
    Case(
        "garbage-onnx",
        lambda w: ["verify", "--onnx", w.file("junk.onnx", b"\x00junk" * 50), "--data", w.data],
        2,
        "junk.onnx: not a readable ONNX model",
    ),
    Case(
        "external-data-missing",
        lambda w: ["verify", "--onnx", _external_data_missing(w), "--data", w.data],
        2,
        "external.onnx",
    ),
    Case("missing-data-folder", lambda w: ["verify", "--onnx", w.onnx, "--data", w.tmp / "nodata"], 2, "nodata"),
    # 3. images: decompression bombs are refused, naming the file, before any inference
    Case(
        "bomb-in-verify-data",
        lambda w: ["verify", "--onnx", w.onnx, "--data", _bomb_in_data(w)],
        2,
        ("images/giant.png: ", "decompression-bomb limit"),
    ),
    Case(
        "bomb-benchmark-image",
        lambda w: ["benchmark", "--onnx", w.onnx, "--image", _bomb(w.tmp / "b.png")],
        2,
        ("b.png: ", "decompression-bomb limit"),
    ),
    Case(
        "bomb-export-parity-image",
        lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--image", _bomb(w.tmp / "p.png")],
        2,
        "decompression-bomb limit",
        absent=lambda w: [w.tmp / "o.onnx"],
    ),
    # 4. labels: unknown mask values and missing masks are exit 2 naming them
    Case(
        "unknown-mask-values",
        lambda w: ["verify", "--onnx", w.onnx, "--data", _unknown_values(w)],
        2,
        "masks/b.png: mask values 42 (6 pixels) are neither a class id (0-18) nor the ignore index 255",
    ),
    Case(
        "partly-labeled",
        lambda w: ["verify", "--onnx", w.onnx, "--data", _partly_labeled(w), "--json", w.tmp / "r.json"],
        2,
        "2 of 3 images have no label file (images/b.png, images/c.png)",
        absent=lambda w: [w.tmp / "r.json"],
    ),
    Case(
        "unknown-mask-values-in-miou-budget",
        lambda w: [
            "quantize",
            w.onnx,
            "--int8",
            "--calib",
            w.calib,
            "--max-miou-drop",
            "1",
            "--data",
            _unknown_values(w),
            "-o",
            w.tmp / "q.onnx",
        ],
        2,
        "masks/b.png: mask values 42",
        absent=lambda w: [w.tmp / "q.onnx"],
    ),
    Case(
        "scales-on-static-model",
        lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--scales", "0.5,1"],
        2,
        "fixed at 64x128",
    ),
    Case(
        "simplify-atol-nan",
        lambda w: ["simplify", w.onnx, "-o", w.tmp / "s.onnx", "--target", "ort", "--atol", "nan"],
        2,
        "--atol nan",
    ),
    Case(
        "simplify-rtol-negative", lambda w: ["simplify", w.onnx, "-o", w.tmp / "s.onnx", "--rtol", "-1"], 2, "--rtol -1"
    ),
    Case(
        "export-bad-attention-before-export",
        lambda w: ["export", w.ckpt, "-o", w.tmp / "o.onnx", "--simplify", "--attention", "banana"],
        2,
        "--attention banana: choose from naive",
        absent=lambda w: [w.tmp / "o.onnx"],
    ),
    Case(
        "max-miou-drop-nan",
        lambda w: [
            "quantize",
            w.onnx,
            "--int8",
            "--calib",
            w.calib,
            "--max-miou-drop",
            "nan",
            "--data",
            w.data,
            "-o",
            w.tmp / "q.onnx",
        ],
        2,
        "--max-miou-drop nan",
    ),
    Case(
        "negative-seed",
        lambda w: ["quantize", w.onnx, "--int8", "--calib", w.calib, "--seed", "-5", "-o", w.tmp / "q.onnx"],
        2,
        "'--seed'",
    ),
    Case(
        "exclude-overflowing-regex",
        lambda w: [
            "quantize",
            w.onnx,
            "--int8",
            "--calib",
            w.calib,
            "--exclude",
            "a{99999999999}",
            "-o",
            w.tmp / "q.onnx",
        ],
        2,
        "not a valid regular expression",
    ),
    Case(
        "exclude-matching-nothing",
        lambda w: ["quantize", w.onnx, "--fp16", "--exclude", "zzz_no_such_node", "-o", w.tmp / "q.onnx"],
        2,
        "matches no node",
    ),
    Case("scales-nan", lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--scales", "nan"], 2, "--scales nan"),
    Case("scales-too-large", lambda w: ["verify", "--onnx", w.onnx, "--data", w.data, "--scales", "100"], 2, "(0, 4]"),
    Case("unknown-op-simplify", lambda w: ["simplify", _unknown_op(w), "-o", w.tmp / "s.onnx"], 2, "'NoSuchOp'"),
    Case(
        "unknown-op-quantize", lambda w: ["quantize", _unknown_op(w), "--fp16", "-o", w.tmp / "s.onnx"], 2, "'NoSuchOp'"
    ),
    Case("unknown-op-verify", lambda w: ["verify", "--onnx", _unknown_op(w), "--data", w.data], 2, "'NoSuchOp'"),
    Case(
        "benchmark-json-without-timings",
        lambda w: [
            "verify",
            "--onnx",
            w.onnx,
            "--data",
            w.data,
            "--report",
            w.tmp / "r",
            "--benchmark-json",
            w.file("bj.json", json.dumps({"backends": [{"name": "x"}]})),
        ],
        2,
        "bj.json: backend 0",
    ),
    Case(
        "class-names-not-utf8",
        lambda w: ["export", w.ckpt, "--class-names", w.file("latin.txt", b"caf\xe9\n"), "-o", w.tmp / "o.onnx"],
        2,
        "not a readable UTF-8 text file",
    ),
    Case(
        "class-names-missing-file",
        lambda w: ["export", w.ckpt, "--class-names", "nonexist.txt", "-o", w.tmp / "o.onnx"],
        2,
        "--class-names nonexist.txt: no such file",
    ),
    Case(
        "class-names-repeat",
        lambda w: [
            "export",
            w.ckpt,
            "--class-names",
            "road,road," + ",".join(f"c{i}" for i in range(17)),
            "-o",
            w.tmp / "o.onnx",
        ],
        2,
        "--class-names road,road",
    ),
    Case(
        "tensorrt-version-9",
        lambda w: ["build-engine", w.onnx, "--fp16", "--dry-run", "--tensorrt-version", "9.0"],
        2,
        "TensorRT 9.0: danet-deploy builds with TensorRT 8.6, 10.x and 11.x",
    ),
    Case(
        "ort-int8-to-tensorrt",
        lambda w: ["build-engine", w.made["ort_int8"], "--int8", "--dry-run", "-o", w.tmp / "e.engine"],
        2,
        "ONNX Runtime",
    ),
]


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
    w.made["ort_int8"], _ = quantize_int8(
        fp32_onnx,
        root / "ort.int8.onnx",
        Int8Options(calib=calib, method="max", target="ort", cache_dir=root / "cache"),
    )
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
    assert_one_line_error(result, case.code, *((case.message,) if isinstance(case.message, str) else case.message))
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


def test_removed_on_failure_takes_back_what_a_failed_pipeline_created(tmp_path: Path) -> None:
    (tmp_path / "kept.onnx").write_text("old")
    with pytest.raises(KeyboardInterrupt), files.removed_on_failure():
        files.write_text(tmp_path / "kept.onnx", "new")  # existed before: stays, complete
        files.write_text(tmp_path / "stage1.onnx", "a")
        with files.all_or_nothing():
            files.write_text(tmp_path / "report.json", "{}")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx"]
    assert (tmp_path / "kept.onnx").read_text() == "new"
    with files.removed_on_failure():
        files.write_text(tmp_path / "done.onnx", "a")
    assert (tmp_path / "done.onnx").exists()


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    mark = files.run_id().replace(f"-{os.getpid()}-", f"-{pid}-")  # what that run's temporaries were named
    stale_file = tmp_path / f".model.onnx.{mark}.k3j2h1x0.tmp"
    stale_dir = tmp_path / f".scratch.{mark}.a1b2c3d4.tmp"
    live = tmp_path / f".other.onnx.{files.run_id()}.z9y8x7w6.tmp"  # a running writer's: kept
    user_files = [tmp_path / ".hidden-notes.tmp", tmp_path / f".backup.{pid}.01.tmp"]  # the user's own: kept
    user_dir = tmp_path / f".photos.{pid}.summer.tmp"
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "raw.onnx").write_bytes(b"half")
    user_dir.mkdir()
    (user_dir / "img.jpg").write_bytes(b"x")
    for path in (live, *user_files):
        path.write_bytes(b"x")
    files.check_output(tmp_path / "model.onnx")
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and all(p.exists() for p in user_files) and (user_dir / "img.jpg").exists()
    with files.atomic_path(tmp_path / "n.onnx") as tmp:  # the writer tags its temporaries with its run id
        assert files.run_id() in tmp.name and files.TEMP_TAG in tmp.name and tmp.name.startswith(".")


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
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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


@pytest.mark.slow
def test_label_opt_ins_evaluate_and_say_so_in_every_report(workspace: Workspace) -> None:
    """--ignore-unknown-labels and --allow-unlabeled turn the errors above into a run whose reports say what
    was ignored or left out (the terminal, report.json, report.md and report.html)."""
    w = workspace
    out = w.tmp / "optin"
    result = run(
        "verify",
        "--onnx",
        w.onnx,
        "--data",
        _unknown_values(w),
        "--ignore-unknown-labels",
        "--json",
        out / "u.json",
        cwd=w.tmp,
    )
    assert result.returncode == 0, result.stderr
    assert "6 pixels in 1 masks hold values that are not class ids and were counted as ignored" in result.stdout
    report = json.loads((out / "u.json").read_text())
    assert report["label_check"]["unknown_values"] == {"42": 6} and report["images"] == 2
    result = run(
        "verify",
        "--onnx",
        w.onnx,
        "--data",
        _partly_labeled(w),
        "--allow-unlabeled",
        "--report",
        out / "p",
        "--json",
        out / "p.json",
        cwd=w.tmp,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "p.json").read_text())
    assert report["images"] == 1 and report["labeled"] and report["backends"][0]["miou"] is not None
    assert report["label_check"]["unlabeled_skipped"] == ["images/b.png", "images/c.png"]
    note = "2 of 3 images have no label file and were left out"
    assert note in result.stdout and note in (out / "p" / "report.md").read_text()
    assert note in (out / "p" / "report.html").read_text()
    # The same opt-in reaches the mIoU budget's evaluations in quantize.
    result = run(
        "quantize",
        w.onnx,
        "--int8",
        "--calib",
        w.calib,
        "--method",
        "max",
        "--max-miou-drop",
        "100",
        "--data",
        _unknown_values(w),
        "--ignore-unknown-labels",
        "--cache-dir",
        out / "cache",
        "-o",
        out / "q.onnx",
        cwd=w.tmp,
    )
    assert result.returncode == 0, result.stderr
    assert "counted as ignored" in result.stderr and (out / "q.onnx").is_file()


@pytest.mark.slow
def test_calibration_skips_and_counts_decompression_bombs(workspace: Workspace) -> None:
    w = workspace
    calib = w.tmp / "calib_with_bomb"
    calib.mkdir()
    for image in w.calib.iterdir():
        (calib / image.name).write_bytes(image.read_bytes())
    _bomb(calib / "giant.png")
    result = run(
        "quantize",
        w.onnx,
        "--int8",
        "--calib",
        calib,
        "--method",
        "max",
        "--target",
        "ort",
        "--cache-dir",
        w.tmp / "cache",
        "-o",
        w.tmp / "bomb.int8.onnx",
        cwd=w.tmp,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 1 image(s) over the decompression-bomb limit" in result.stderr
    assert "4 images from" in result.stdout  # the four real images, the bomb never decoded


# A Python start-up hook (sitecustomize on PYTHONPATH) that holds the real command at one point deep inside a
# stage: the first call there marks the stage as reached and waits, so the test interrupts real work in
# progress. It is loaded by every process of the command, the benchmark's spawned workers included.
_HOLD = """
import os, time
from pathlib import Path

def _hold(original):
    def held(*args, **kwargs):
        marker = Path(os.environ["DANET_TEST_HOLD_MARKER"])
        if not marker.exists():
            marker.touch()
            time.sleep(float(os.environ.get("DANET_TEST_HOLD_SECONDS", "120")))
        return original(*args, **kwargs)
    return held

where = os.environ.get("DANET_TEST_HOLD", "")
if where == "onnxruntime":
    import onnxruntime
    onnxruntime.InferenceSession.run = _hold(onnxruntime.InferenceSession.run)
elif where == "trace":
    from danet_deploy.model import danet
    danet.PositionAttention.forward = _hold(danet.PositionAttention.forward)
elif where.startswith("import:"):  # while the command imports a module (torch: before the CLI's own code runs)
    import sys

    class HoldTorchImport:
        def find_spec(self, name, path=None, target=None):
            if name == where.removeprefix("import:"):
                sys.meta_path.remove(self)
                _hold(lambda: None)()
            return None

    sys.meta_path.insert(0, HoldTorchImport())
"""

INTERRUPT_STAGES = {
    "loading-libraries": ("import:torch", lambda w, o: ["export", w.ckpt, "-o", o / "m.onnx"]),
    # ModelOpt's native `lief` module: an interrupt inside a nanobind module's initialisation aborted the process
    # (C++ terminate, exit 134); it is held until the import finishes (the hold here lasts 5 s).
    "quantize-native-import": (
        "import:lief",
        lambda w, o: ["quantize", w.onnx, "--fp16", "--calib", w.calib, "-o", o / "h.onnx"],
    ),
    "export-tracing": ("trace", lambda w, o: ["export", w.ckpt, "-o", o / "m.onnx"]),
    "export-parity": ("onnxruntime", lambda w, o: ["export", w.ckpt, "-o", o / "m.onnx"]),
    "simplify-pass-check": ("onnxruntime", lambda w, o: ["simplify", w.onnx, "-o", o / "s.onnx", "--target", "ort"]),
    "quantize-fp16": (
        "onnxruntime",
        lambda w, o: ["quantize", w.onnx, "--fp16", "--calib", w.calib, "-o", o / "h.onnx"],
    ),
    "quantize-int8-tensorrt": (
        "onnxruntime",
        lambda w, o: ["quantize", w.onnx, "--int8", "--calib", w.calib, "--cache-dir", o / "cache", "-o", o / "q.onnx"],
    ),
    "quantize-int8-ort": (
        "onnxruntime",
        lambda w, o: [
            "quantize",
            w.onnx,
            "--int8",
            "--calib",
            w.calib,
            "--target",
            "ort",
            "--cache-dir",
            o / "cache",
            "-o",
            o / "q.onnx",
        ],
    ),
    "verify": (
        "onnxruntime",
        lambda w, o: [
            "verify",
            "--ckpt",
            w.ckpt,
            "--onnx",
            w.onnx,
            "--data",
            w.data,
            "--json",
            o / "r.json",
            "--report",
            o / "report",
        ],
    ),
    "benchmark-worker": ("onnxruntime", lambda w, o: ["benchmark", "--onnx", w.onnx, "--json", o / "b.json"]),
    "demo": ("onnxruntime", lambda w, o: ["demo"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(INTERRUPT_STAGES))
def test_ctrl_c_in_every_stage(stage: str, workspace: Workspace, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while a real stage works: exit 130,
    one line, no traceback, no output and no temporary left, no worker process left running."""
    from .support.cli import CLI

    where, args = INTERRUPT_STAGES[stage]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOLD)
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "reached"
    env = {k: v for k, v in os.environ.items() if k != "DANET_DEPLOY_DEBUG"}
    env.update(
        PYTHONPATH=os.pathsep.join([str(hook), str(Path(__file__).resolve().parents[1])]),  # this checkout's code
        DANET_TEST_HOLD=where,
        DANET_TEST_HOLD_MARKER=str(marker),
        COLUMNS="200",
        DANET_DEPLOY_CACHE=str(tmp_path / "cache"),
        DANET_TEST_HOLD_SECONDS="5" if where == "import:lief" else "120",
    )
    before = {_digest(p) for p in (workspace.ckpt, workspace.onnx)}
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr_file:
        process = subprocess.Popen(
            [*CLI, *map(str, args(workspace, out))],
            cwd=out,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None, log.read_text()  # finished or failed before reaching the stage
            assert time.monotonic() < deadline, "the stage was not reached"
            time.sleep(0.2)
        time.sleep(0.5)  # let the status line of the stage reach the log before the signal
        printed_before = log.stat().st_size
        os.killpg(process.pid, signal.SIGINT)
        signalled = time.monotonic()
        stdout, _ = process.communicate(timeout=120)
    if where == "import:lief":  # the interrupt waited for the native import to finish instead of breaking into it
        assert time.monotonic() - signalled >= 4.0
    stderr = log.read_text()
    assert process.returncode == 130, stderr
    after = [line for line in stderr[printed_before:].splitlines() if line.strip()]
    assert len(after) == 1 and after[0].startswith("interrupted"), stderr  # one line, nothing else
    assert "Traceback" not in stderr + stdout
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))  # files and folders
    assert left == [], left
    for _ in range(50):  # the benchmark's worker got the signal too and is gone
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("a process of the interrupted command was still running")
    assert {_digest(p) for p in (workspace.ckpt, workspace.onnx)} == before
