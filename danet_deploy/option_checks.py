"""Checks the option types share (`ExportOptions.check`, `Int8Options.check`, ...): each failure is an
`OptionError` naming the field, in the library's words."""

from __future__ import annotations

import math
from collections.abc import Iterable

from danet_deploy.errors import OptionError


def check_number(field: str, value: float, low: float = 0.0, high: float = math.inf, strict_low: bool = False) -> None:
    """A finite number within [low, high] (or (low, high] with `strict_low`)."""
    if not math.isfinite(value) or value < low or (strict_low and value == low) or value > high:
        bound = f"> {low:g}" if strict_low else f">= {low:g}"
        upper = f" and <= {high:g}" if math.isfinite(high) else ""
        raise OptionError(field, value, f"must be a finite number {bound}{upper}")


def check_at_least(field: str, value: int | None, low: int) -> None:
    """An integer >= low (None passes: the stage's default)."""
    if value is not None and value < low:
        raise OptionError(field, value, f"must be at least {low}")


def check_choice(field: str, value: str | None, choices: Iterable[str]) -> None:
    """One of `choices` (None passes: chosen by the stage)."""
    options = tuple(choices)
    if value is not None and value not in options:
        raise OptionError(field, value, f"choose from {', '.join(options)}")
