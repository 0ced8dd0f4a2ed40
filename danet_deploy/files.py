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
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from danet_deploy.errors import BadInputError

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
    resolved = target.resolve()
    for source in inputs:
        if source is None:
            continue
        source_path = Path(source)
        if same_file(target, source_path):
            raise BadInputError(f"{target}: is also an input of this command; write the output to another path")
        if resolved.exists() and source_path.is_dir() and _inside(resolved, source_path.resolve()):
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
        with tempfile.NamedTemporaryFile(prefix=".danet-deploy-probe-", dir=folder):
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
_DESTINATION_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


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
    make_dirs(target.parent)
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
    except OSError as exc:
        # Only an error of the write itself is the destination's: the block may do other I/O (an export runs).
        if exc.errno not in _DESTINATION_ERRORS or exc.filename not in (str(tmp), str(target), tmp, target):
            raise
        raise BadInputError(f"{target}: cannot be written ({exc.strerror})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(near: PathLike) -> Iterator[Path]:
    """A hidden temporary folder beside `near` (same file system, so results can be renamed out of it)."""
    folder = make_dirs(Path(near).parent)
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
