"""Faults of a hostile environment, made for real: SIGTERM and SIGHUP, a benchmark worker killed (the OOM killer's
SIGKILL) or orphaned, a full file system (RLIMIT_FSIZE: EFBIG), symbolic link loops, file names that are not
UTF-8, temporaries of other runs and containers, and the memory limits of cgroup v1/v2 and RLIMIT_AS.

Each ends in one line and a documented exit code, with nothing lost and nothing left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

from danet_deploy import files
from danet_deploy.artifact import OnnxModel
from danet_deploy.cli import app, guarded
from danet_deploy.data.datasets import open_dataset
from danet_deploy.data.images import read_image
from danet_deploy.errors import EXIT_BAD_INPUT, BadInputError, DeployError, printable, user_error
from danet_deploy.evaluate.benchmark import benchmark
from danet_deploy.memory_plan import new_plan
from danet_deploy.steps.backends import backend_names
from danet_deploy.versions import memory_bounds

from .support.fault_runners import KilledRunner
from .test_cli import run

ROOT = Path(__file__).resolve().parents[1]


def _python(script: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DANET_DEPLOY_DEBUG", None)
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        **kwargs,
    )


def _wait_for(path: Path, process: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def _gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # not ours to reap, but harmless
        time.sleep(0.05)
    return False


# signals ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_end_a_command_like_ctrl_c(tmp_path: Path, signum: int, code: int) -> None:
    """A two-stage command (demo-like): the first stage's visible output is complete, the second is writing when
    the signal comes. Exit 128 + signal, one line, and neither output nor any temporary is left."""
    ready = tmp_path / "ready"
    process = _python(f"""
        import sys, time
        from pathlib import Path
        from danet_deploy import api, cli, files

        def export(*args, **kwargs):
            files.write_text(Path({str(tmp_path / "stage1.onnx")!r}), "a complete first stage")
            with files.atomic_path(Path({str(tmp_path / "out.onnx")!r})) as tmp:
                tmp.write_bytes(b"half an ONNX file")
                Path({str(ready)!r}).touch()
                time.sleep(60)

        api.export = export
        sys.argv = ["danet-deploy", "export", "ckpt.pth", "-o", {str(tmp_path / "out.onnx")!r}]
        cli.main()
    """)
    _wait_for(ready, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    name = signal.Signals(signum).name
    assert lines == [f"interrupted ({name}); no partial output is left"], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]  # no stage output, no temporary


@pytest.mark.slow
def test_sigterm_stops_a_background_run_that_ignores_ctrl_c(fp32_onnx: Path) -> None:
    """`cmd &` in a script and nohup start with SIGINT ignored; SIGTERM while the CLI still imports its libraries
    is still one line and exit 143."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "danet_deploy", "inspect", str(fp32_onnx)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted (SIGTERM); no partial output is left"


def test_a_killed_benchmark_worker_is_a_failed_row_not_a_hang() -> None:
    started = time.monotonic()
    result = benchmark([KilledRunner("oom")], np.zeros((8, 8, 3), np.uint8), warmup=0, iterations=1)
    (row,) = result["backends"]
    assert row["name"] == "oom" and row["exit_code"] == EXIT_BAD_INPUT
    assert "its benchmark process died, killed by SIGKILL (out of memory?" in row["error"]
    assert time.monotonic() - started < 60


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_benchmark_worker_dies_with_its_parent(tmp_path: Path, signum: int) -> None:
    """Even a SIGKILLed parent, which runs no handler, takes its worker along (no orphan keeps running)."""
    pid_file = tmp_path / "worker.pid"
    process = _python(f"""
        import signal
        from pathlib import Path
        import numpy as np
        from danet_deploy.evaluate.benchmark import benchmark
        from danet_deploy.signals import install_termination_handlers
        from tests.support.fault_runners import HangingRunner

        signal.signal(signal.SIGINT, signal.default_int_handler)
        install_termination_handlers()
        benchmark([HangingRunner(Path({str(pid_file)!r}))], np.zeros((8, 8, 3), np.uint8), 0, 1)
    """)
    _wait_for(pid_file, process)
    worker = int(pid_file.read_text())
    process.send_signal(signum)
    process.communicate(timeout=60)
    assert _gone(worker), f"worker {worker} outlived its parent"


# a full file system -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE for this process: a write past `limit` bytes fails with EFBIG (Python ignores SIGXFSZ)."""
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)


def test_a_full_file_system_is_exit_2_naming_the_output(fp32_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    with file_size_limit(4096):
        with pytest.raises(BadInputError, match=r"out\.json: cannot be written \(File too large\)") as error:
            files.write_bytes(tmp_path / "out.json", b"x" * 10_000)
        with pytest.raises(BadInputError, match=r"m\.onnx: cannot be written \(File too large\)"):
            files.save_onnx(tmp_path / "m.onnx", model)  # onnx.save's write() names no file
        with pytest.raises(BadInputError, match=r"cannot be written"), files.all_or_nothing():
            files.write_text(tmp_path / "a.md", "small")
            files.write_text(tmp_path / "b.html", "y" * 10_000)
    assert error.value.exit_code == EXIT_BAD_INPUT
    assert list(tmp_path.iterdir()) == []  # no half file, no temporary, no a.md without b.html


def test_a_full_temporary_folder_is_exit_2_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    full = r"cannot write a temporary file \(File too large\)"
    with file_size_limit(4096), pytest.raises(BadInputError, match=full), files.temporary_folder("fp16") as folder:
        (folder / "model.onnx").write_bytes(b"x" * 10_000)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="elsewhere"), files.temporary_folder("fp16"):  # not blamed on the folder
        raise OSError(errno.ENOSPC, "No space left on device", "/elsewhere/file")


@pytest.mark.slow
def test_a_full_file_system_from_the_cli(fp32_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))"
    process = _python(f"""
        {limit}
        import sys
        from danet_deploy import cli
        sys.argv = ["danet-deploy", "inspect", {str(fp32_onnx)!r}, "--json", {str(out)!r}]
        cli.main()
    """)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1] == f"error: {out}: cannot be written (File too large)"
    assert list(tmp_path.iterdir()) == []


# symbolic link loops ------------------------------------------------------------------------------------------


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    return tmp_path / "loop_a"


def test_symlink_loops_are_exit_2_wherever_a_path_is_taken(loop: Path, fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"loop_a: a symbolic link loop"):
        files.check_output(loop, [fp32_onnx])  # --json, -o
    with pytest.raises(BadInputError, match=r"loop_a: a symbolic link loop"):
        files.check_output(tmp_path / "out.json", [loop])  # an input given as a loop
    with pytest.raises(BadInputError, match="loop_a"):
        read_image(loop)  # --image
    with pytest.raises(BadInputError, match=r"loop_a: a symbolic link loop"):
        open_dataset(loop)  # --calib, --data
    model = onnx.load(str(fp32_onnx))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="w.data", size_threshold=0)
    (tmp_path / "w.data").unlink()
    (tmp_path / "w.data").symlink_to(loop)
    with pytest.raises(BadInputError, match=r"ext\.onnx: not a readable ONNX model"):
        OnnxModel.load(tmp_path / "ext.onnx")  # external data behind a loop


def test_the_cli_turns_path_errors_a_library_raised_into_exit_2(loop: Path) -> None:
    assert str(user_error(RuntimeError(f"Symlink loop from '{loop}'"))) == f"{loop}: a symbolic link loop"
    assert str(user_error(OSError(errno.ELOOP, "Too many levels", str(loop)))) == f"{loop}: a symbolic link loop"
    assert user_error(OSError(errno.EBADF, "Bad file descriptor")) is None  # a bug stays a bug
    assert user_error(ValueError("x")) is None

    @guarded
    def command() -> None:
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out.onnx")

    with pytest.raises(typer.Exit) as exit_info:
        command()
    assert exit_info.value.exit_code == EXIT_BAD_INPUT


def test_inspect_json_to_a_symlink_loop_is_one_line_exit_2(loop: Path, fp32_onnx: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(fp32_onnx), "--json", str(loop)])
    assert result.exit_code == 2, result.output
    assert f"{loop}: a symbolic link loop" in result.output and "Traceback" not in result.output


# untrusted strings --------------------------------------------------------------------------------------------


def test_messages_escape_control_characters_and_undecodable_bytes() -> None:
    name = os.fsdecode(b"caf\xe9.png")
    assert printable(name) == "caf\\xe9.png"
    assert printable("a\nerror: fake\x1b[2K\u202e") == "a\\nerror: fake\\x1b[2K\\u202e"
    assert str(DeployError(f"{name}\nerror: injected")) == "caf\\xe9.png\\nerror: injected"
    assert printable("plain café 東京 text") == "plain café 東京 text"


def test_a_latin1_file_name_is_written_escaped_never_an_exception(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.png")
    files.write_text(tmp_path / "r.md", f"| {name} |")
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == "| caf\\udce9.png |"


@pytest.mark.slow
def test_verify_with_two_backends_reports_a_latin1_labeled_set(
    tiny_ckpt: Path, fp32_onnx: Path, city_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(city_data, data)
    for path in sorted(data.rglob("*.png")):
        if "_000000_" in path.name:  # the first scene: image and labels renamed to a Latin-1 byte name
            os.rename(bytes(path), bytes(path.parent) + b"/caf\xe9_" + path.name.encode())
    report = ["--json", tmp_path / "r.json", "--report", tmp_path / "report"]
    result = run("verify", "--ckpt", tiny_ckpt, "--onnx", fp32_onnx, "--data", data, *report)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "caf\\\\xe9_synth" in (tmp_path / "r.json").read_text(encoding="utf-8")
    assert "caf\\xe9_synth" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")


# stale temporaries --------------------------------------------------------------------------------------------


def test_only_temporaries_of_dead_runs_of_ours_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mark = files.run_id()
    host, pid, start = mark.removeprefix(f"{files.TEMP_TAG}-").split("-")
    ours_dead = tmp_path / f".m.onnx.{files.TEMP_TAG}-{host}-{dead.stdout.strip()}-{start}.abcd1234.tmp"
    pid_reused = tmp_path / f".m.onnx.{files.TEMP_TAG}-{host}-{pid}-{int(start) + 1}.abcd1234.tmp"
    foreign_old = tmp_path / f".m.onnx.{files.TEMP_TAG}-0123456789ab-{pid}-1.abcd1234.tmp"
    foreign_live = tmp_path / f".n.onnx.{files.TEMP_TAG}-0123456789ab-{pid}-1.abcd1234.tmp"  # another container's
    own = tmp_path / f".o.onnx.{mark}.abcd1234.tmp"
    users = [tmp_path / ".backup.2024.01.tmp", tmp_path / ".photos.2019.summer.tmp", tmp_path / ".x.1.y.tmp"]
    for path in (ours_dead, pid_reused, foreign_old, foreign_live, own, users[0], users[2]):
        path.write_bytes(b"x")
    users[1].mkdir()
    (users[1] / "beach.jpg").write_bytes(b"x")
    day = 24 * 3600
    os.utime(foreign_old, (time.time() - 3 * day, time.time() - 3 * day))
    os.utime(users[0], (time.time() - 300 * day, time.time() - 300 * day))
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([ours_dead, pid_reused, foreign_old])
    assert foreign_live.exists() and own.exists() and (users[1] / "beach.jpg").exists()
    assert all(p.exists() for p in users)


# memory limits ------------------------------------------------------------------------------------------------


def _tree(root: Path, files_: dict[str, str]) -> None:
    for name, text in files_.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


GIB = 1 << 30


def test_the_memory_plan_reads_a_cgroup_v1_limit(tmp_path: Path) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    _tree(proc, {"meminfo": "MemAvailable:   21000000 kB\n", "self/cgroup": "4:memory:/ci/job\n0::/\n"})
    _tree(
        cgroup,
        {
            "memory/ci/job/memory.limit_in_bytes": str(GIB),
            "memory/ci/job/memory.usage_in_bytes": str(GIB // 4),
            "memory/ci/memory.limit_in_bytes": "9223372036854771712",  # no limit
        },
    )
    bound = min(memory_bounds(proc, cgroup), key=lambda b: b.bytes)
    assert (bound.bytes, bound.source) == (3 * GIB // 4, "cgroup v1 memory.limit_in_bytes")
    # In a container the mount is the container's own group while /proc names the host's path.
    shutil.rmtree(cgroup)
    _tree(cgroup, {"memory/memory.limit_in_bytes": str(GIB), "memory/memory.usage_in_bytes": "0"})
    assert min(b.bytes for b in memory_bounds(proc, cgroup)) == GIB


def test_the_memory_plan_reads_a_cgroup_v2_limit_and_its_parents(tmp_path: Path) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    _tree(proc, {"meminfo": "MemAvailable:   21000000 kB\n", "self/cgroup": "0::/user/job\n"})
    _tree(
        cgroup,
        {
            "cgroup.controllers": "memory",
            "user/job/memory.max": "max",
            "user/job/memory.current": str(GIB),
            "user/memory.max": str(2 * GIB),
            "user/memory.current": str(GIB // 2),
        },
    )
    bound = min(memory_bounds(proc, cgroup), key=lambda b: b.bytes)
    assert (bound.bytes, bound.source) == (3 * GIB // 2, "cgroup v2 memory.max")


def test_the_memory_plan_reads_rlimit_as_and_says_which_limit_it_used() -> None:
    previous = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + GIB, previous[1]))
    try:
        plan = new_plan("export", (64, 128))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, previous)
    assert plan.available_from == "RLIMIT_AS" and plan.available is not None and plan.available <= GIB
    assert "available (RLIMIT_AS)" in plan.lines()[0]


# backends -----------------------------------------------------------------------------------------------------


def test_two_models_of_one_file_name_get_distinct_backend_names() -> None:
    assert backend_names("onnxruntime", ["a/m.onnx", "b/m.onnx", "c.onnx"]) == [
        "onnxruntime:a/m.onnx",
        "onnxruntime:b/m.onnx",
        "onnxruntime:c.onnx",
    ]
    assert backend_names("onnxruntime", ["m.onnx", "m.onnx"]) == ["onnxruntime:m.onnx #1", "onnxruntime:m.onnx #2"]


def test_an_engine_only_benchmark_without_tensorrt_is_exit_3(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed: the check is for machines without it")
    from danet_deploy import api
    from danet_deploy.engine.sidecar import write_sidecar

    from .test_engine import _sidecar

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a plan")
    write_sidecar(engine, _sidecar())
    with pytest.raises(DeployError, match="TensorRT is not installed") as error:
        api.benchmark(engines=[engine])
    assert error.value.exit_code == 3
