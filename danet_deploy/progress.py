"""How a long step talks to its caller: notes and counted tasks. Silent by default; the CLI renders it with Rich."""

from __future__ import annotations

import contextlib
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
