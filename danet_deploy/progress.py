"""How a long step talks to its caller: notes and counted tasks. Silent by default; the CLI renders it with Rich in a
terminal and as plain periodic lines (`PeriodicLines`) in logs."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Progress:
    """Library steps report through this; subclass it to show them (the CLI does, with Rich)."""

    def note(self, message: str) -> None:
        """A status line (checkpoint found, a pass checked, a warning)."""

    def show(self, message: str) -> None:
        """A result line the user asked for (a demo prints each stage's summary as it finishes)."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """A step of `total` units (None: unknown); yields `update(advance=1, description=None, total=None)` (a
        `total` given there sets it once the step knows it)."""
        yield lambda advance=1, description=None, total=None: None


SILENT = Progress()


def duration(seconds: float) -> str:
    """'45s', '3m05s', '1h02m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class PeriodicLines:
    """One task as plain lines for logs (no bar, no cursor movement): a line when it starts, when its description
    changes, at most every `interval` seconds while it advances (done of total, percent, elapsed, ETA from the
    average so far), and when it ends. With `heartbeat` a background thread also writes the status every `interval`
    seconds in which nothing else was written, so a log never goes quiet while a long phase runs (model
    preparation before calibration, a slow first image)."""

    def __init__(
        self,
        description: str,
        total: int | None,
        write: Callable[[str], None],
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool = False,
    ) -> None:
        self.description, self.total, self.write, self.interval, self.clock = description, total, write, interval, clock
        self.done = 0
        self.started = self.last = clock()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.write(f"{description}: started" + (f" (0/{total})" if total else ""))
        self._thread: threading.Thread | None = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
            self._thread.start()

    def status(self) -> str:
        elapsed = self.clock() - self.started
        if not self.total:
            return f"{self.description}: {duration(elapsed)} elapsed"
        line = (
            f"{self.description}: {self.done}/{self.total} ({self.done / self.total:.0%}), {duration(elapsed)} elapsed"
        )
        if 0 < self.done < self.total:
            line += f", ETA {duration(elapsed / self.done * (self.total - self.done))}"
        return line

    def update(self, advance: int = 1, description: str | None = None, total: int | None = None) -> None:
        with self._lock:
            self.done += advance
            if total:
                self.total = total
            now = self.clock()
            if description and description != self.description:
                self.description = description
            elif now - self.last < self.interval:
                return
            self.last = now
            self.write(self.status())

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval / 4):
            with self._lock:
                if self._stopped.is_set() or self.clock() - self.last < self.interval:
                    continue
                self.last = self.clock()
                self.write(self.status())

    def stop(self) -> None:
        """End the heartbeat without a final line (the task failed or was interrupted)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> None:
        self.stop()
        with self._lock:
            self.write(f"{self.status()}; finished")


def format_bytes(value: float) -> str:
    """1536 -> '1.5 KiB' (binary units up to TiB), for estimates and sizes shown to a user."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"
