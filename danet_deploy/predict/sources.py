"""What `predict` runs on: image files, folders, globs and video files, expanded to a list of sources each with the
output name it writes (`OUTDIR/<name>.png`, `OUTDIR/<name>.overlay.jpg`, `OUTDIR/<name>.overlay.mp4`)."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from danet_deploy.data.images import image_suffixes
from danet_deploy.errors import BadInputError

# Containers PyAV (FFmpeg) reads that are videos, not images (Pillow's GIF and animated WebP stay images: frame 0).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv")


@dataclass(frozen=True)
class Source:
    """One input of `predict`.

    Attributes:
        path: the image or video file.
        kind: "image" or "video".
        name: the output name without suffix, relative to OUTDIR (a folder's subfolders are kept).
    """

    path: Path
    kind: str
    name: str


def kind_of(path: Path) -> str | None:
    """'image' or 'video' by the file's suffix, None for anything else."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in image_suffixes():
        return "image"
    return None


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand_sources(sources: Sequence[str | Path]) -> list[Source]:
    """Every source as files: a file as itself (its kind by suffix), a folder as the images and videos under it
    (recursively, sorted), a glob pattern as the images and videos it matches. One-line BadInputError for a path
    that does not exist, a folder or pattern with nothing to predict, a file of another kind, and two sources
    that would write the same output."""
    found: list[Source] = []
    for source in sources:
        text = str(source)
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and kind_of(p) and not _hidden(p, path))
            if not files:
                raise BadInputError(f"{path}: no images or videos in this folder")
            found += [Source(p, kind_of(p) or "", str(p.relative_to(path).with_suffix(""))) for p in files]
        elif path.is_file():
            kind = kind_of(path)
            if kind is None:
                raise BadInputError(f"{path}: not an image or video file (by its suffix {path.suffix or '(none)'})")
            found.append(Source(path, kind, path.stem))
        elif _has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            files = [m for m in matches if m.is_file() and kind_of(m)]
            if not files:
                raise BadInputError(f"{text}: the pattern matches no images or videos")
            found += [Source(m, kind_of(m) or "", m.stem) for m in files]
        else:
            raise BadInputError(f"{path}: no such file or folder")
    if not found:
        raise BadInputError("predict needs at least one image, folder, glob or video")
    seen: dict[str, Path] = {}
    for s in found:
        other = seen.setdefault(s.name, s.path)
        if other != s.path:
            raise BadInputError(f"{s.path}: writes the same outputs ({s.name}.*) as {other}; predict them separately")
    return found


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
