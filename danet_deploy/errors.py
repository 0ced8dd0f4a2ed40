"""Errors a user can act on, each with the exit code the CLI returns for it."""

from __future__ import annotations

# Exit codes (documented in README.md):
EXIT_CHECK_FAILED = 1  # parity / mIoU outside tolerance
EXIT_BAD_INPUT = 2  # unreadable or invalid file, bad option value, unsafe checkpoint
EXIT_MISSING_DEPENDENCY = 3  # an optional dependency (e.g. TensorRT) or device is not available
EXIT_INTERNAL = 4  # a bug: the CLI prints one line and DANET_DEPLOY_DEBUG=1 shows the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it
INTERRUPTED = "interrupted (Ctrl-C); no partial output is left"


class DeployError(Exception):
    """A one-line, user-facing error. `exit_code` is what the CLI exits with."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInputError(DeployError):
    """Bad input (a file, an option value, a memory plan that does not fit); the CLI exits with 2."""

    exit_code = EXIT_BAD_INPUT


class CheckFailedError(DeployError):
    """A verification ran and its result is outside tolerance."""

    exit_code = EXIT_CHECK_FAILED


class OptionError(BadInputError):
    """An option value no stage can use, in the library's words: `field` is the option's field name (e.g.
    `max_miou_drop`), so a Python caller sees what they passed; the CLI shows the field as its flag."""

    def __init__(self, field: str, value: object, problem: str):
        self.field, self.value, self.problem = field, value, problem
        super().__init__(f"{field}={value!r}: {problem}")

    def as_flag(self, flag: str) -> str:
        """The message with the field shown as the command-line flag that set it."""
        return f"{flag} {self.value}: {self.problem}"
