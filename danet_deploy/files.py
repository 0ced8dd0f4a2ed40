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
- Temporary names carry a tag no user file has and the writer's run id (`.NAME.danet-deploy-tmp-<run>.XXXX.tmp`,
  `.scratch.danet-deploy-tmp-<run>.XXXX.tmp`; `run_id`): a run killed with SIGKILL leaves only hidden files, and
  `check_output` of a later run in that folder removes those of dead runs (`remove_stale_temporaries`): a run of
  this machine and pid namespace whose process is gone, or one of another machine or container that is older
  than `FOREIGN_STALE_AFTER`. Nothing else in the folder is ever touched.
- Every OSError of a write that is about the destination (full disk, size limit, read-only, permission, symlink
  loop) is a BadInputError naming the file (exit code 2).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from danet_deploy.errors import BadInputError

PathLike = str | os.PathLike[str]


def resolve(path: PathLike) -> Path:
    """The absolute path with symlinks resolved; a symbolic link loop is the path's error (exit code 2)."""
    try:
        return Path(path).resolve()
    except RuntimeError:  # pathlib's "Symlink loop from ..." before Python 3.13
        raise BadInputError(f"{path}: a symbolic link loop") from None
    except OSError as exc:  # Python 3.13: ELOOP
        if exc.errno != errno.ELOOP:
            raise
        raise BadInputError(f"{path}: a symbolic link loop") from None


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when two paths name one file: equal after resolving symlinks, or hard links to one inode."""
    pa, pb = Path(a), Path(b)
    if resolve(pa) == resolve(pb):
        return True
    try:
        return os.path.samefile(pa, pb)
    except OSError:  # one of them does not exist yet
        return False


# Hidden temporaries this module creates carry this tag and the writer's run id (`run_id`).
TEMP_TAG = "danet-deploy-tmp"
_TEMP_NAME = re.compile(
    rf"^\..*\.{TEMP_TAG}-(?P<host>[0-9a-f]{{12}})-(?P<pid>\d+)-(?P<start>\d+)\.[a-z0-9_]+\.tmp$", re.DOTALL
)
# A temporary of another machine or pid namespace (a container on a shared volume) cannot be checked for a live
# writer: it is removed only when it has not changed for this long.
FOREIGN_STALE_AFTER = 2 * 24 * 3600.0


def _process_start(pid: int | str) -> str:
    """The process's start time in clock ticks since boot ('0' where /proc is missing): with the pid it tells a
    live writer from a later process that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return "0"


@functools.cache
def _host_key() -> str:
    """This machine (boot id, host name) and pid namespace, hashed: pids of runs with the same key are ours to
    check; the same pid in another container is another process."""
    parts = [os.uname().nodename]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


@functools.cache
def _run_mark(pid: int) -> str:
    return f"{TEMP_TAG}-{_host_key()}-{pid}-{_process_start('self')}"


def run_id() -> str:
    """The tag and id every temporary of this run carries: machine and pid namespace key, pid and process start
    (computed per process: a forked or spawned worker has its own)."""
    return _run_mark(os.getpid())


def _temporary_prefix(name: str) -> str:
    return f".{name[:100]}.{run_id()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _is_stale(entry: Path, match: re.Match[str]) -> bool:
    if match.group("host") != _host_key():
        try:
            return time.time() - entry.lstat().st_mtime > FOREIGN_STALE_AFTER
        except OSError:
            return False
    pid = int(match.group("pid"))
    if not _alive(pid):
        return True
    start = _process_start(pid)
    return start != "0" and start != match.group("start")  # the pid now belongs to another process


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove the hidden temporaries of dead danet-deploy runs in `folder` (only names with our tag and run id)."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not _is_stale(entry, match):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
    return removed


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def onnx_external_data(model: Path) -> list[Path]:
    """The external-data files an ONNX model's tensors point at (read from the graph, no tensor loaded)."""
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # not an ONNX file: it has no external data
        return []
    locations: set[str] = set()

    def visit(graph: Any) -> None:
        attributes = [a for n in graph.node for a in n.attribute]
        tensors = [
            *graph.initializer,
            *(a.t for a in attributes if a.HasField("t")),
            *(t for a in attributes for t in a.tensors),
        ]
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in tensor.external_data if e.key == "location")
        for node in graph.node:
            for attribute in node.attribute:
                for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    visit(sub)

    visit(proto.graph)
    return [model.parent / location for location in sorted(locations)]


def check_output(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Refuse, before any work, an output that is an input or that cannot be written; returns the path.

    An output is an input when it names the same file (path, symlink or hard link), a file inside an input
    folder (a data set, calibration images), or an external-data file of an input ONNX model. Only regular
    files are ever replaced: a device, FIFO or socket at the output path (or behind a symlink) is refused.
    Also removes what killed earlier runs left in the destination folder (`remove_stale_temporaries`)."""
    target = Path(path)
    resolved = resolve(target)
    for source in inputs:
        if source is None:
            continue
        source_path = Path(source)
        if same_file(target, source_path):
            raise BadInputError(f"{target}: is also an input of this command; write the output to another path")
        if resolved.exists() and source_path.is_dir() and _inside(resolved, resolve(source_path)):
            raise BadInputError(f"{target}: is a file of the input folder {source_path}; write the output elsewhere")
        if (
            resolved.is_file()
            and source_path.suffix == ".onnx"
            and source_path.is_file()
            and any(same_file(target, data) for data in onnx_external_data(source_path))
        ):
            raise BadInputError(f"{target}: holds the external data of the input {source_path}; write elsewhere")
    if target.is_dir():
        raise BadInputError(f"{target}: is a folder; give a file path for the output")
    if (target.exists() or target.is_symlink()) and not resolved.is_file():
        raise BadInputError(
            f"{target}: is not a regular file (a device, FIFO, socket or dangling link); outputs only replace files"
        )
    folder = target.parent
    while not folder.exists():  # the writer creates missing folders; the nearest existing one must be writable
        folder = folder.parent
    if not folder.is_dir():
        raise BadInputError(f"{target}: cannot be created ({folder} is not a folder)")
    try:  # a real probe: access() says yes to root in read-only or virtual folders (/proc)
        with tempfile.NamedTemporaryFile(prefix=_temporary_prefix("probe"), suffix=".tmp", dir=folder):
            pass
    except OSError as exc:
        raise BadInputError(f"{target}: cannot write to folder {folder} ({exc.strerror})") from None
    remove_stale_temporaries(folder)
    return target


def check_outputs(outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None] = ()) -> list[Path]:
    """`check_output` for each of a command's outputs, and that no two of them are one file or one lies
    inside another (`--json rep/report.md --report rep`)."""
    inputs = list(inputs)
    checked = [check_output(p, inputs) for p in outputs if p is not None]
    for i, a in enumerate(checked):
        for b in checked[i + 1 :]:
            ra, rb = a.resolve(), b.resolve()
            if ra == rb or _inside(ra, rb) or _inside(rb, ra):
                raise BadInputError(f"{b}: collides with another output of this command ({a}); give distinct paths")
    return checked


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
# Files and folders created inside `removed_on_failure`, None outside such a block (or inside `kept`).
_created: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("created", default=None)


def make_dirs(folder: PathLike) -> Path:
    """mkdir -p, noting each folder it creates for `removed_on_failure`."""
    folder = Path(folder)
    missing = [f for f in [folder, *folder.parents] if not f.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    created = _created.get()
    if created is not None:
        created.extend(reversed(missing))
    return folder


def _place(tmp: Path, target: Path) -> None:
    """Rename a finished temporary onto its destination, noting a new file for `removed_on_failure`."""
    created = _created.get()
    if created is not None and not target.exists():
        created.append(target)
    os.replace(tmp, target)


@contextlib.contextmanager
def removed_on_failure(keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Files and folders written in the block that did not exist before it are removed if the block raises
    (Ctrl-C included; folders only when left empty), unless the exception is one of `keep` (a check that ran
    and failed: its reports are the result); files it overwrote keep their new, complete content.
    Every CLI command runs inside one, so a failed or interrupted command leaves none of its outputs."""
    if _created.get() is not None:  # nested: the outermost block decides
        yield
        return
    created: list[Path] = []
    token = _created.set(created)
    try:
        yield
    except keep:
        raise
    except BaseException:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        raise
    finally:
        _created.reset(token)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Files written in the block survive a failure of the command around it (cache entries: valid results
    that a rerun would otherwise recompute)."""
    token = _created.set(None)
    try:
        yield
    finally:
        _created.reset(token)


# Errors of a write that are about the destination, not the data: the file is named, exit code 2.
_DESTINATION_ERRORS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.ELOOP,
    errno.ENAMETOOLONG,
)


def write_error(exc: OSError, target: Path, own: Iterable[PathLike] = ()) -> BadInputError | None:
    """The one-line error for an OSError of writing `target` (through one of the `own` paths), or None when the
    error is not about the destination: another file named in it (the block may do other I/O: an export runs).
    A write() that fails names no file (onnx.save, file.write): it is the destination's."""
    if exc.errno not in _DESTINATION_ERRORS:
        return None
    names = {str(p) for p in (target, *own)}
    if exc.filename is not None and str(exc.filename) not in names:
        return None
    return BadInputError(f"{target}: cannot be written ({exc.strerror or os.strerror(exc.errno)})")


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
            try:
                _place(tmp, target)
            except OSError as exc:
                raise write_error(exc, target, [tmp]) or exc from None
    finally:
        _pending.reset(token)
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`; rename it onto `path` only if the block succeeds (and,
    inside `all_or_nothing`, only when that block succeeds)."""
    target = Path(path)
    tmp: Path | None = None
    try:
        make_dirs(target.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(target.name), suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        pending = _pending.get()
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if pending is None:
            _place(tmp, target)
        else:
            pending.append((tmp, target))
            tmp = None  # all_or_nothing renames or removes it
    except OSError as exc:
        error = write_error(exc, target, [target.parent] if tmp is None else [tmp, target.parent])
        if error is None:
            raise
        raise error from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(near: PathLike) -> Iterator[Path]:
    """A hidden temporary folder beside `near` (same file system, so results can be renamed out of it)."""
    folder = make_dirs(Path(near).parent)
    with tempfile.TemporaryDirectory(prefix=_temporary_prefix("scratch"), suffix=".tmp", dir=folder) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def temporary_folder(purpose: str) -> Iterator[Path]:
    """A private folder in the system's temporary folder (TMPDIR) for a stage's intermediate files, removed after
    the block; a write there that fails for lack of room or rights is exit 2 naming the folder, not a crash."""
    where = Path(tempfile.gettempdir())
    try:
        folder = tempfile.TemporaryDirectory(prefix=f"danet-{purpose}-")
    except OSError as exc:
        if exc.errno not in _DESTINATION_ERRORS:
            raise
        raise BadInputError(f"{where}: cannot create a temporary folder ({exc.strerror})") from None
    with folder as tmp:
        try:
            yield Path(tmp)
        except OSError as exc:
            named = exc.filename is None or Path(str(exc.filename)).is_relative_to(tmp)
            if exc.errno not in _DESTINATION_ERRORS or not named:
                raise
            raise BadInputError(
                f"{where}: cannot write a temporary file ({exc.strerror or os.strerror(exc.errno)}); "
                "free space there or set TMPDIR to a folder with room"
            ) from None


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    """UTF-8; a character that has none (a lone surrogate from a file name that is not UTF-8, which the callers
    escape first) is written as its escape rather than failing the whole report."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
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
