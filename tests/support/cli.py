"""Running the `danet-deploy` command in tests.

`run` goes through the real entry point (`cli.main`: argument checks, usage errors, the guarded commands, exit
codes) inside the test process, so a bad-input case costs what the command does, not a new interpreter that
imports torch. `run_process` starts the installed command as a user does; a few tests keep it (the launcher,
signals, what a separate process sees).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CLI = [sys.executable, "-m", "danet_deploy"]


@dataclass
class Completed:
    """What a command run left: the same fields as `subprocess.CompletedProcess` that the tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(*args: str | Path, cwd: Path | None = None) -> Completed:
    """The command, in this process, with the user's view of it: its exit code and what it printed."""
    from danet_deploy import cli, signals

    argv = [str(a) for a in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # the CLI installs its own for each
    saved_argv, saved_handlers, saved_cwd = sys.argv, {s: signal.getsignal(s) for s in handled}, Path.cwd()
    saved_debug = os.environ.pop("DANET_DEPLOY_DEBUG", None)
    sys.argv = ["danet-deploy", *argv]
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for number, handler in saved_handlers.items():  # the CLI ignores signals once its work is written
            signal.signal(number, handler)
        cli._sigint_seen = False
        signals._received.clear()
        cli.PROGRESS.verbosity = cli.Verbosity.NORMAL
        if saved_debug is not None:
            os.environ["DANET_DEPLOY_DEBUG"] = saved_debug
    return Completed(argv, code, stdout.getvalue(), stderr.getvalue())


def run_process(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user starts it: a new interpreter (`python -m danet_deploy`)."""
    env = {k: v for k, v in os.environ.items() if k != "DANET_DEPLOY_DEBUG"}
    env["COLUMNS"] = "200"
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def assert_one_line_error(result: Completed | subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Exit `code`, no traceback, the last line an `error:` line holding every needle."""
    assert result.returncode == code, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
