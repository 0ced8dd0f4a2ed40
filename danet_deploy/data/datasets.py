"""Labeled image sets: Cityscapes layout and a generic images/ + masks/ folder pair.

Datasets are lists of file pairs; images are decoded one at a time on iteration, so evaluating hundreds
of images never holds them all in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255

# Cityscapes label id -> train id (public label table); everything not listed is ignored.
CITYSCAPES_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut[label_ids.astype(np.uint8)]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Inverse mapping, for writing Cityscapes-style `*_labelIds.png`; ignored pixels become 0 (unlabeled)."""
    lut = np.zeros(256, np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[train_id] = label_id
    return lut[train_ids]


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    label: np.ndarray | None  # H x W uint8 class ids (255 ignored), None when unlabeled


@dataclass(frozen=True)
class LabelFile:
    path: Path
    kind: str  # "train_ids" (values are class ids) or "cityscapes_label_ids" (mapped on read)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8; one-line error naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable image ({type(exc).__name__})") from None


def read_label(label: LabelFile) -> np.ndarray:
    try:
        with Image.open(label.path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise BadInputError(f"{label.path}: label image must be single-channel (mode {img.mode})")
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInputError(f"{label.path}: not a readable label image ({type(exc).__name__})") from None
    if array.max(initial=0) > 255:
        raise BadInputError(f"{label.path}: label values above 255")
    array = array.astype(np.uint8)
    return label_ids_to_train_ids(array) if label.kind == "cityscapes_label_ids" else array


class Dataset:
    """An ordered list of (image, optional label) files; iterating decodes them one by one."""

    def __init__(self, root: Path, items: list[tuple[Path, LabelFile | None]], kind: str):
        self.root = root
        self.items = items
        self.kind = kind

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labeled(self) -> bool:
        return all(label is not None for _, label in self.items)

    def load(self, index: int) -> Sample:
        image_path, label = self.items[index]
        image = read_image(image_path)
        array = read_label(label) if label is not None else None
        if array is not None and array.shape != image.shape[:2]:
            raise BadInputError(f"{label.path}: label size {array.shape[::-1]} != image size {image.shape[1::-1]}")  # type: ignore[union-attr]
        return Sample(name=str(image_path.relative_to(self.root)), image=image, label=array)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.load(i)

    def head(self, count: int | None) -> Dataset:
        return self if count is None else Dataset(self.root, self.items[:count], self.kind)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def cityscapes(root: Path, split: str = "val") -> Dataset:
    """`leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`
    (preferred) or `*_gtFine_labelIds.png` (mapped to the 19 train ids, others ignored)."""
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise BadInputError(f"{root}: no leftImg8bit/{split}/ folder (Cityscapes layout)")
    items: list[tuple[Path, LabelFile | None]] = []
    for image in sorted(image_dir.rglob("*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        gt = root / "gtFine" / split / image.parent.name
        train_ids, label_ids = gt / f"{stem}_gtFine_labelTrainIds.png", gt / f"{stem}_gtFine_labelIds.png"
        if train_ids.is_file():
            items.append((image, LabelFile(train_ids, "train_ids")))
        elif label_ids.is_file():
            items.append((image, LabelFile(label_ids, "cityscapes_label_ids")))
        else:
            items.append((image, None))
    if not items:
        raise BadInputError(f"{image_dir}: no *_leftImg8bit.png images")
    return Dataset(root, items, "cityscapes")


def folder_pair(root: Path) -> Dataset:
    """`images/NAME.ext` with `masks/NAME.png` holding class ids (255 ignored)."""
    image_dir, mask_dir = root / "images", root / "masks"
    images = _images_under(image_dir)
    if not images:
        raise BadInputError(f"{image_dir}: no images")
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in _images_under(mask_dir)} if mask_dir.is_dir() else {}
    items: list[tuple[Path, LabelFile | None]] = []
    for image in images:
        mask = masks.get(image.relative_to(image_dir).with_suffix(""))
        items.append((image, LabelFile(mask, "train_ids") if mask else None))
    return Dataset(root, items, "folder")


def image_folder(root: Path) -> Dataset:
    """Any folder of images, unlabeled (e.g. calibration data)."""
    images = _images_under(root)
    if not images:
        raise BadInputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return Dataset(root, [(p, None) for p in images], "images")


def open_dataset(path: str | os.PathLike[str], split: str = "val") -> Dataset:
    """Detect the layout: Cityscapes (leftImg8bit/), folder pair (images/ [+ masks/]) or plain images."""
    root = Path(path)
    if not root.exists():
        raise BadInputError(f"{root}: no such data folder")
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder (expected a Cityscapes root, images/ + masks/, or images)")
    if (root / "leftImg8bit").is_dir():
        return cityscapes(root, split)
    if (root / "images").is_dir():
        return folder_pair(root)
    return image_folder(root)
