"""Errors a user can act on, each with the exit code the CLI returns for it."""

from __future__ import annotations

import errno
import os
import unicodedata

# Exit codes (documented in README.md):
EXIT_CHECK_FAILED = 1  # parity / mIoU outside tolerance
EXIT_BAD_INPUT = 2  # unreadable or invalid file, bad option value, unsafe checkpoint
EXIT_MISSING_DEPENDENCY = 3  # an optional dependency (e.g. TensorRT) or device is not available
EXIT_INTERNAL = 4  # a bug: the CLI prints one line and DANET_DEPLOY_DEBUG=1 shows the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it
INTERRUPTED = "interrupted (Ctrl-C); no partial output is left"

# Characters that would let a message span lines, rewrite the terminal or hide text: controls (newline, ESC),
# bidi and zero-width formatting, line/paragraph separators, and the lone surrogates that stand for the bytes of
# a file name that is not UTF-8.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """`text` with every unprintable character escaped (a newline as \\n, ESC as \\x1b, the undecodable byte 0xE9
    of a file name as \\xe9): one line that shows what is there, safe for terminals, logs and reports."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() and unicodedata.category(char) not in _UNPRINTABLE:
            out.append(char)
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # os.fsdecode's stand-in for a byte that is not UTF-8
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


class DeployError(Exception):
    """A one-line, user-facing error. `exit_code` is what the CLI exits with."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(printable(message))  # file names and metadata are untrusted: one line, escaped
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
    `max_miou_drop`), so a Python caller sees what they passed; the CLI shows the field as its flag (`as_flag`).

    Attributes:
        field: the options field (e.g. "method", "thresholds", "scales").
        value: the value or item at fault, as given ("" when the problem is the option as a whole).
        problem: what is wrong with it.
    """

    def __init__(self, field: str, value: object, problem: str, label: str | None = None):
        self.field, self.value, self.problem = field, value, problem
        words = label or field.replace("_", " ")  # the field for people, e.g. "max miou drop", "threshold override"
        super().__init__(f"{words} {value}: {problem}" if value != "" else f"{words}: {problem}")

    def as_flag(self, flag: str) -> str:
        """The message with the field shown as the command-line flag that set it."""
        return f"{flag} {self.value}: {self.problem}" if self.value != "" else f"{flag}: {self.problem}"


def user_error(exc: BaseException) -> DeployError | None:
    """The user's error behind an exception a library raised about a path, or None when it is a bug: an OSError
    of the file system (full disk, size limit, read-only, no permission, symbolic link loop) names its file and is
    exit code 2; so is pathlib's "Symlink loop" RuntimeError."""
    if isinstance(exc, OSError) and exc.errno in _PATH_ERRORS:
        reason = "a symbolic link loop" if exc.errno == errno.ELOOP else exc.strerror or os.strerror(exc.errno)
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else "a file: "
        return BadInputError(f"{where}{reason}" if exc.errno == errno.ELOOP else f"{where}cannot be used ({reason})")
    if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop from "):
        path = str(exc).removeprefix("Symlink loop from ").strip("'")
        return BadInputError(f"{path}: a symbolic link loop")
    return None


# OSErrors that are about a path the user gave or the file system it is on, not about our code.
_PATH_ERRORS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EIO,
    }
)
