"""Labeled image sets: Cityscapes layout and a generic images/ + masks/ folder pair.

Datasets are lists of file pairs; images are decoded one at a time on iteration, so evaluating hundreds
of images never holds them all in memory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from danet_deploy.data.images import image_size, image_suffixes, read_image, read_label_values
from danet_deploy.errors import BadInputError, printable
from danet_deploy.files import resolve

IGNORE_INDEX = 255

# Cityscapes label id -> train id (public label table); everything not listed is ignored.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


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


@dataclass(frozen=True)
class LabelRules:
    """What a mask value may be: a class id (0 .. num_classes - 1) or the ignore index. Any other value makes
    the mask an error, unless `ignore_unknown` (an explicit opt-in) counts it as ignored. Cityscapes
    `*_labelIds.png` masks hold label ids 0-33 of the public table, mapped to train ids."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    ignore_unknown: bool = False


# Without a model's class count (a bare Dataset), any 8-bit value other than the ignore index is a class id.
ANY_8BIT = LabelRules(num_classes=IGNORE_INDEX)


@functools.lru_cache(maxsize=8)
def _known_values(kind: str, rules: LabelRules) -> np.ndarray:
    """Lookup table stored value -> class id, -1 for values that are neither a class id nor ignored."""
    lut = np.full(1 << 16, -1, np.int64)
    if kind == "cityscapes_label_ids":
        lut[: max(CITYSCAPES_LABEL_TO_TRAIN) + 1] = rules.ignore_index  # every id of the table: 0-33
        for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
            lut[label_id] = train_id if train_id < rules.num_classes else -1
    else:
        lut[: rules.num_classes] = np.arange(rules.num_classes)
    lut[rules.ignore_index] = rules.ignore_index  # 255 also marks license plates (label id -1) in labelIds files
    lut.flags.writeable = False
    return lut


def class_ids(values: np.ndarray, label: LabelFile, rules: LabelRules) -> tuple[np.ndarray, dict[int, int]]:
    """Class ids (uint8, the ignore index where ignored) and the unknown stored values {value: pixels}.
    Unknown values are a BadInputError naming the mask and the values unless `rules.ignore_unknown`."""
    flat = values.ravel()
    outside = (flat < 0) | (flat >= 1 << 16)  # only 32-bit label files can hold these
    lut = _known_values(label.kind, rules)
    mapped = np.where(outside, -1, lut[np.where(outside, 0, flat)])
    unknown_mask = mapped < 0
    unknown: dict[int, int] = {}
    if unknown_mask.any():
        found, counts = np.unique(flat[unknown_mask], return_counts=True)
        unknown = {int(v): int(c) for v, c in zip(found, counts)}
        if not rules.ignore_unknown:
            shown = ", ".join(map(str, list(unknown)[:8])) + (", ..." if len(unknown) > 8 else "")
            what = (
                "a Cityscapes label id (0-33) of a class the model has"
                if label.kind == "cityscapes_label_ids"
                else f"a class id (0-{rules.num_classes - 1})"
            )
            raise BadInputError(
                f"{label.path}: mask values {shown} ({sum(unknown.values()):,} pixels) are neither {what} nor the "
                f"ignore index {rules.ignore_index} (--ignore-unknown-labels counts them as ignored)"
            )
        mapped = np.where(unknown_mask, rules.ignore_index, mapped)
    return mapped.reshape(values.shape).astype(np.uint8), unknown


def read_label(label: LabelFile, rules: LabelRules = ANY_8BIT) -> np.ndarray:
    """Class ids of a mask file under `rules` (one-line BadInputError naming the file and the bad values)."""
    return class_ids(read_label_values(label.path), label, rules)[0]


@dataclass
class LabelCheck:
    """What the label check before an evaluation found: what the report must say about the data."""

    images: int  # in the data set as given
    unlabeled_skipped: list[str] = field(default_factory=list)  # with allow_unlabeled: images left out
    unknown_values: dict[int, int] = field(default_factory=dict)  # with ignore_unknown: value -> pixels ignored
    masks_with_unknown: int = 0

    def notes(self) -> list[str]:
        lines = []
        if self.unlabeled_skipped:
            lines.append(
                f"{len(self.unlabeled_skipped)} of {self.images} images have no label file and were left out "
                f"(--allow-unlabeled): {_names(self.unlabeled_skipped)}"
            )
        if self.unknown_values:
            values = ", ".join(f"{v} ({n:,} px)" for v, n in list(self.unknown_values.items())[:8])
            lines.append(
                f"{sum(self.unknown_values.values()):,} pixels in {self.masks_with_unknown} masks hold values that "
                f"are not class ids and were counted as ignored (--ignore-unknown-labels): {values}"
            )
        return lines


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


class Dataset:
    """An ordered list of (image, optional label) files; iterating decodes them one by one.

    `rules` say which mask values are class ids (set by `checked`, from the model's class count); a data set
    that went through `checked` carries its `label_check` for the report."""

    def __init__(
        self,
        root: Path,
        items: list[tuple[Path, LabelFile | None]],
        kind: str,
        rules: LabelRules = ANY_8BIT,
        label_check: LabelCheck | None = None,
    ):
        self.root = root
        self.items = items
        self.kind = kind
        self.rules = rules
        self.label_check = label_check

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labeled(self) -> bool:
        return all(label is not None for _, label in self.items)

    def name(self, image: Path) -> str:
        """The image's path in the data set as reports show it: a name that is not UTF-8 (a Latin-1 `caf\\xe9.png`)
        or holds control characters is escaped, so it reaches JSON, HTML, Markdown and terminals safely."""
        return printable(str(image.relative_to(self.root)))

    def load(self, index: int) -> Sample:
        image_path, label = self.items[index]
        image = read_image(image_path)
        array = read_label(label, self.rules) if label is not None else None
        if array is not None and array.shape != image.shape[:2]:
            raise BadInputError(f"{label.path}: label size {array.shape[::-1]} != image size {image.shape[1::-1]}")  # type: ignore[union-attr]
        return Sample(name=self.name(image_path), image=image, label=array)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.load(i)

    def head(self, count: int | None) -> Dataset:
        if count is None:
            return self
        return Dataset(self.root, self.items[:count], self.kind, self.rules, self.label_check)

    def largest_image(self) -> tuple[int, int] | None:
        """(H, W) of the image with the most pixels, from the headers (what a run at image size must fit)."""
        sizes = [image_size(image) for image, _ in self.items]
        return max(sizes, key=lambda hw: hw[0] * hw[1], default=None)

    def checked(
        self, rules: LabelRules, allow_unlabeled: bool = False, on_file: Callable[[], None] | None = None
    ) -> Dataset:
        """This data set under `rules`, checked before any long work: every image decoded (one at a time;
        decompression bombs refused from the header), every mask's values and size. A partly labeled set is an
        error naming the unlabeled images unless `allow_unlabeled`, which keeps the labeled ones (the check records
        what was left out)."""
        unlabeled = [self.name(image) for image, label in self.items if label is None]
        items = self.items
        check = LabelCheck(images=len(self.items))
        if unlabeled and len(unlabeled) < len(self.items):
            if not allow_unlabeled:
                raise BadInputError(
                    f"{self.root}: {len(unlabeled)} of {len(self.items)} images have no label file "
                    f"({_names(unlabeled)}); mIoU would leave them out (--allow-unlabeled evaluates the labeled ones)"
                )
            items = [item for item in self.items if item[1] is not None]
            check.unlabeled_skipped = unlabeled
        for image, label in items:
            size = read_image(image).shape[:2]  # decoded, not just the header: a truncated file fails here, not later
            if label is not None:
                ids, unknown = class_ids(read_label_values(label.path), label, rules)
                if ids.shape != size:
                    raise BadInputError(f"{label.path}: label size {ids.shape[::-1]} != image size {size[::-1]}")
                for value, pixels in unknown.items():
                    check.unknown_values[value] = check.unknown_values.get(value, 0) + pixels
                check.masks_with_unknown += bool(unknown)
            if on_file:
                on_file()
        return Dataset(self.root, items, self.kind, rules, check)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in image_suffixes())


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
        raise BadInputError(f"{root}: no images (files of an image format Pillow opens: .png, .jpg, .tif, ...)")
    return Dataset(root, [(p, None) for p in images], "images")


def open_dataset(path: str | os.PathLike[str], split: str = "val") -> Dataset:
    """Detect the layout: Cityscapes (leftImg8bit/), folder pair (images/ [+ masks/]) or plain images."""
    root = Path(path)
    if not root.exists():
        resolve(root)  # a symbolic link loop says so (exit 2)
        raise BadInputError(f"{root}: no such data folder")
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder (expected a Cityscapes root, images/ + masks/, or images)")
    if (root / "leftImg8bit").is_dir():
        return cityscapes(root, split)
    if (root / "images").is_dir():
        return folder_pair(root)
    return image_folder(root)
