"""Signals: SIGTERM and SIGHUP handled like Ctrl-C (`install_termination_handlers`), and Ctrl-C held while native
extensions load (they abort the process when interrupted mid-import)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from danet_deploy.errors import EXIT_INTERRUPTED, INTERRUPTED

# What `docker stop`, systemd, CI cancellation and `timeout` send (SIGTERM), and a closed terminal (SIGHUP).
TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_received: list[int] = []  # the termination signals received, first first


def install_termination_handlers() -> None:
    """Make SIGTERM and SIGHUP stop a command the way Ctrl-C does: they run the SIGINT handler in place (the
    CLI's, which raises KeyboardInterrupt), so every stage unwinds, removes its temporaries and partial outputs,
    and the command exits with 128 + the signal's number and one line (`interruption`)."""
    for signum in TERMINATION_SIGNALS:
        signal.signal(signum, _on_termination)


def ignore_termination() -> None:
    """The command is done and its outputs are written: SIGTERM and SIGHUP, like Ctrl-C, no longer turn it into a
    failure while the interpreter tears down."""
    for signum in TERMINATION_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _on_termination(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # raises; `interrupts_held`'s holder raises after the native import
        return
    # A background job or nohup starts with SIGINT ignored; SIGTERM must still stop it.
    raise KeyboardInterrupt


def interruption() -> tuple[str, int]:
    """The one line and the exit code of an interrupted command: Ctrl-C is 130, SIGTERM 143, SIGHUP 129."""
    if not _received:
        return INTERRUPTED, EXIT_INTERRUPTED
    signum = _received[0]
    name = signal.Signals(signum).name
    return f"interrupted ({name}); no partial output is left", 128 + signum


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C while native extensions load and raise it after: a KeyboardInterrupt raised inside a
    nanobind/pybind11 module's initialisation (ModelOpt imports `lief`) aborts the whole process with a C++
    `terminate` and a hundred lines, instead of unwinding to the one-line "interrupted" (exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, FrameType | None]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        if callable(previous):
            previous(held[0][0], held[0][1])  # Python's handler (or the CLI's) raises KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a container stopping) raises KeyboardInterrupt in the block, as Ctrl-C does, so the same
    clean-up runs: temporary files removed, no partial output. Python's default for SIGTERM ends the process
    without unwinding."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
