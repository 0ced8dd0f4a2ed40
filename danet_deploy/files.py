"""The one writer of every file danet-deploy creates: ONNX models, engines, sidecars, JSON, HTML, Markdown,
cache entries.

- `check_output` runs before any work: it refuses an output that is one of the command's inputs (the same
  path, a symlink to it or a hard link) and a destination whose folder cannot be written (exit code 2).
- `atomic_path` yields a hidden temporary file in the destination's folder and renames it onto the
  destination only when the block succeeds, so a failed or interrupted stage never leaves a half-written
  file; the temporary file is removed on any exception, Ctrl-C included. The file gets the mode a plain
  `open()` would give (0666 less the umask), not mkstemp's 0600.
- `all_or_nothing` makes a command's several outputs (verify's JSON, HTML and Markdown; an engine and its
  sidecar) appear together: renames wait for the end of the block and none happens if it fails.
- `removed_on_failure` makes a multi-stage command (`demo`) all-or-nothing as a whole: the files its stages
  created are removed again when a later stage fails or is interrupted.
- Temporary names carry the writer's process id (`.NAME.<pid>.XXXX.tmp`, `.danet-deploy-<pid>-XXXX`): a run
  killed with SIGKILL leaves only hidden files, and `check_output` of the next run in that folder removes
  those whose process is gone.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import BadInputError

PathLike = str | os.PathLike[str]


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when two paths name one file: equal after resolving symlinks, or hard links to one inode."""
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return os.path.samefile(pa, pb)
    except OSError:  # one of them does not exist yet
        return False


# Hidden temporaries this module creates: ".NAME.<pid>.XXXX.tmp" files and ".danet-deploy-<pid>-XXXX" folders.
_TEMP_NAME = re.compile(r"^\.(?:.+\.(?P<file_pid>\d+)\..+\.tmp|danet-deploy-(?P<dir_pid>\d+)-.+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove the hidden temporaries of danet-deploy runs in `folder` whose process no longer exists."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None:
            continue
        pid = int(match.group("file_pid") or match.group("dir_pid"))
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
    return removed


def check_output(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Refuse, before any work, an output that is an input or that cannot be written; returns the path.

    Also removes what killed earlier runs left in the destination folder (`remove_stale_temporaries`)."""
    target = Path(path)
    for source in inputs:
        if source is not None and same_file(target, source):
            raise BadInputError(f"{target}: is also an input of this command; write the output to another path")
    if target.is_dir():
        raise BadInputError(f"{target}: is a folder; give a file path for the output")
    folder = target.parent
    while not folder.exists():  # the writer creates missing folders; the nearest existing one must be writable
        folder = folder.parent
    if not folder.is_dir():
        raise BadInputError(f"{target}: cannot be created ({folder} is not a folder)")
    try:  # a real probe: access() says yes to root in read-only or virtual folders (/proc)
        with tempfile.NamedTemporaryFile(prefix=".danet-deploy-probe-", dir=folder):
            pass
    except OSError as exc:
        raise BadInputError(f"{target}: cannot write to folder {folder} ({exc.strerror})") from None
    remove_stale_temporaries(folder)
    return target


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only where /proc is missing
    os.umask(mask)
    return mask


# Renames deferred by `all_or_nothing` (temporary, destination), None outside such a block.
_pending: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("pending", default=None)
# Files created inside `removed_on_failure`, None outside such a block.
_created: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("created", default=None)


def _place(tmp: Path, target: Path) -> None:
    """Rename a finished temporary onto its destination, noting a new file for `removed_on_failure`."""
    created = _created.get()
    if created is not None and not target.exists():
        created.append(target)
    os.replace(tmp, target)


@contextlib.contextmanager
def removed_on_failure() -> Iterator[None]:
    """Files written in the block that did not exist before it are removed if the block raises (Ctrl-C
    included); files it overwrote keep their new, complete content."""
    created: list[Path] = []
    token = _created.set(created)
    try:
        yield
    except BaseException:
        for path in reversed(created):
            path.unlink(missing_ok=True)
        raise
    finally:
        _created.reset(token)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Every file written in the block appears at the end, all together; if the block fails, none does."""
    outer = _pending.get()
    if outer is not None:  # nested: the outermost block decides
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _pending.set(pending)
    try:
        yield
        for tmp, target in pending:
            _place(tmp, target)
    finally:
        _pending.reset(token)
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`; rename it onto `path` only if the block succeeds (and,
    inside `all_or_nothing`, only when that block succeeds)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    pending = _pending.get()
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if pending is None:
            _place(tmp, target)
        else:
            pending.append((tmp, target))
            tmp = None  # type: ignore[assignment]  # all_or_nothing renames or removes it
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(near: PathLike) -> Iterator[Path]:
    """A hidden temporary folder beside `near` (same file system, so results can be renamed out of it)."""
    folder = Path(near).parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".danet-deploy-{os.getpid()}-", dir=folder) as tmp:
        yield Path(tmp)


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def save_onnx(path: PathLike, model: Any) -> Path:
    """Write an onnx.ModelProto atomically."""
    import onnx

    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
