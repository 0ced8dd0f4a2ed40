"""One silencer for the third-party tools danet-deploy drives (torch.onnx, ModelOpt, ONNX Runtime calibration).

They log progress at INFO, print to stdout/stderr and emit warnings a user cannot act on. `quiet(...)` raises
the given loggers to ERROR (optionally dropping known-harmless ERROR messages), captures stdout/stderr and
ignores warnings for the duration of a block; everything is restored afterwards and exceptions still raise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterable, Iterator

MODELOPT_LOGGERS = ("modelopt.onnx", "modelopt.onnx.autocast", "modelopt.onnx.quantization")
# ModelOpt logs an ERROR when it finds no NVIDIA driver; calibrating on the CPU is what we asked for.
MODELOPT_NOISE = ("Failed to get GPU count",)
TORCH_EXPORT_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")


class DropMessages(logging.Filter):
    """Drops log records whose message contains any of the given fragments."""

    def __init__(self, fragments: Iterable[str]):
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def quiet(
    loggers: Iterable[str] = (),
    *,
    level: int = logging.ERROR,
    drop: Iterable[str] = (),
    capture_stdout: bool = True,
    capture_stderr: bool = False,
    ignore_warnings: bool = False,
) -> Iterator[None]:
    """Raise `loggers` to `level` (dropping messages containing a `drop` fragment), capture stdout/stderr
    and ignore warnings as asked, for the duration of the block."""
    with contextlib.ExitStack() as stack:
        if ignore_warnings:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
        noise = DropMessages(drop) if drop else None
        for name in loggers:
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(level)
            if noise is not None:
                logger.addFilter(noise)
                stack.callback(logger.removeFilter, noise)
        if capture_stdout:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        if capture_stderr:
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        yield


def quiet_modelopt() -> contextlib.AbstractContextManager[None]:
    """Silence ModelOpt's INFO logging and ONNX Runtime's calibration prints/progress bars; errors still raise."""
    return quiet(MODELOPT_LOGGERS, drop=MODELOPT_NOISE, capture_stdout=True, capture_stderr=True)


def quiet_torch_export() -> contextlib.AbstractContextManager[None]:
    """Silence the torch exporters' progress prints, INFO logging and warnings; errors still raise."""
    return quiet(TORCH_EXPORT_LOGGERS, capture_stdout=True, ignore_warnings=True)
