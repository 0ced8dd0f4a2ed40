"""Runners that fail the way a real backend's process can (kept small: a spawned benchmark worker imports this)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from danet_deploy.runners.base import Runner


class KilledRunner(Runner):
    """Its process is SIGKILLed while it activates, as the OOM killer does."""

    kind = "fault"

    def __init__(self, name: str = "killed") -> None:
        super().__init__(name)

    @property
    def device(self) -> str:
        return "CPU"

    def activate_impl(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def infer_impl(self, feed: Any) -> Any:
        raise AssertionError("never runs")


class HangingRunner(KilledRunner):
    """Writes its process id to `pid_file`, then takes a minute to activate (a long benchmark)."""

    def __init__(self, pid_file: Path) -> None:
        super().__init__("hanging")
        self.pid_file = pid_file

    def activate_impl(self) -> None:
        self.pid_file.write_text(str(os.getpid()))
        time.sleep(60)
