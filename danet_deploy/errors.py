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
    exit_code = EXIT_BAD_INPUT


class CheckFailedError(DeployError):
    """A verification ran and its result is outside tolerance."""

    exit_code = EXIT_CHECK_FAILED


class OptionError(BadInputError):
    """A bad value of one option of a stage's options type, in the library's words ("threshold override 'x': ...");
    the CLI names the flag instead (`flag_message`).

    Attributes:
        option: the options field (e.g. "thresholds", "scales").
        subject: the value or item at fault, as the user wrote it ("" when the problem is the option as a whole).
        problem: what is wrong with it.
    """

    def __init__(self, option: str, subject: str, problem: str, label: str | None = None):
        self.option, self.subject, self.problem = option, subject, problem
        words = label or option.replace("_", " ")
        super().__init__(f"{words} {subject}: {problem}" if subject else f"{words}: {problem}")

    def flag_message(self, flag: str) -> str:
        """The same error naming the command-line flag that set the option."""
        return f"{flag} {self.subject}: {self.problem}" if self.subject else f"{flag}: {self.problem}"
