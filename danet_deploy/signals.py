"""Signals: Ctrl-C held while native extensions load (they abort the process when interrupted mid-import)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C while native extensions load and raise it after: a KeyboardInterrupt raised inside a
    nanobind/pybind11 module's initialisation (ModelOpt imports `lief`) aborts the whole process with a C++
    `terminate` and a hundred lines, instead of unwinding to the one-line "interrupted" (exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, object]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        if callable(previous):
            previous(*held[0])  # Python's handler (or the CLI's) raises KeyboardInterrupt
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
