"""Calibration images for INT8 (and the FP16 range check): selection and preprocessing.

Selection is deterministic: the candidate files are sorted, then visited in a seeded random order until
enough readable images are found; the chosen files are kept in sorted order. Input name, layout and dtype
come from the model's input spec, preprocessing from the model config in its metadata, the size from
`OnnxModel.input_size` (static ONNX dims win over the config's size).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from danet_deploy.artifact import InputSpec, OnnxModel
from danet_deploy.config import ModelConfig
from danet_deploy.data.datasets import open_dataset
from danet_deploy.data.images import image_suffixes, max_pixels, probe_image, read_image
from danet_deploy.data.preprocess import resize_image
from danet_deploy.errors import BadInputError
from danet_deploy.files import sha256_file

log = logging.getLogger(__name__)

DEFAULT_COUNT = 500  # NVIDIA's guidance for TensorRT INT8 calibration
FEW_IMAGES = 300  # below this, warn (INT8 only)


class CalibrationWarning(UserWarning):
    """Something about the calibration data a user should know (skipped files, too few images)."""


@dataclass
class CalibrationInfo:
    """What went into a calibration: for records and provenance."""

    source: str
    images: int
    candidates: int  # image files found in the source (before sampling)
    seed: int
    input_size: list[int]
    skipped_non_image: int
    skipped_unreadable: int  # not decodable as an image, or a mode with no defined RGB (floating point)
    skipped_too_large: int = 0  # decompression bombs: over Pillow's pixel limit, never decoded
    warnings: list[str] = field(default_factory=list)


def _warn(message: str, collected: list[str]) -> None:
    collected.append(message)
    warnings.warn(message, CalibrationWarning, stacklevel=3)  # points at the stage that called calibration_set


def _candidates(root: Path, split: str) -> tuple[list[Path], int]:
    """Sorted image files under `root` and how many other files were skipped (plain folders only)."""
    if not root.exists():
        raise BadInputError(f"{root}: no such calibration folder")
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder (expected a folder of images or a Cityscapes root)")
    if (root / "leftImg8bit").is_dir() or (root / "images").is_dir():
        dataset = open_dataset(root, split)
        return sorted(path for path, _ in dataset.items), 0
    files = [p for p in root.rglob("*") if p.is_file()]
    images = sorted(p for p in files if p.suffix.lower() in image_suffixes())
    return images, len(files) - len(images)


def _sample(candidates: list[Path], count: int, seed: int) -> tuple[list[Path], dict[str, int]]:
    """Visit the sorted candidates in a seeded random order; return `count` usable ones and the skipped tally
    by reason ("not an image", "too large": decompression bombs, "unsupported mode"); each is decoded once
    here (a truncated file has a good header), bombs are refused from the header."""
    chosen: list[Path] = []
    skipped: dict[str, int] = {}
    for index in np.random.default_rng(seed).permutation(len(candidates)):
        if len(chosen) == count:
            break
        path = candidates[int(index)]
        reason = probe_image(path)
        if reason is None:
            chosen.append(path)
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    return sorted(chosen), skipped


@dataclass
class CalibrationSet:
    """Chosen calibration images plus how to turn them into model input."""

    root: Path
    files: list[Path]
    input: InputSpec  # the model's input: name, layout, dtype
    size: tuple[int, int]  # (H, W) the images are resized to
    batch: int  # the model's static batch size (1 when dynamic)
    config: ModelConfig
    seed: int
    candidates: int  # image files found (before sampling)
    skipped_non_image: int = 0
    skipped_unreadable: int = 0
    skipped_too_large: int = 0
    warnings: list[str] = field(default_factory=list)
    _hashes: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_name(self) -> str:
        return self.input.input_name

    @property
    def names(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.files]

    @property
    def hashes(self) -> list[str]:
        """sha256 of each file's bytes (computed once: the cache key needs them)."""
        if self._hashes is None:
            self._hashes = [sha256_file(p) for p in self.files]
        return self._hashes

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> one model input sample (batch dim 1)."""
        return self.input.prepare(resize_image(image, self.size), self.config)

    def samples(self) -> Iterator[np.ndarray]:
        """One preprocessed sample per image, decoded on demand."""
        for path in self.files:
            yield self.preprocess(read_image(path))

    def batches(self) -> Iterator[np.ndarray]:
        """Batches of the model's static batch size; an incomplete last batch is dropped."""
        pending: list[np.ndarray] = []
        for sample in self.samples():
            pending.append(sample)
            if len(pending) == self.batch:
                yield np.concatenate(pending)
                pending = []

    def array(self) -> np.ndarray:
        """All samples in one array (N x 3 x H x W float, or N x H x W x 3 uint8)."""
        return np.concatenate(list(self.samples()))

    def info(self) -> CalibrationInfo:
        return CalibrationInfo(
            source=str(self.root),
            images=len(self),
            candidates=self.candidates,
            seed=self.seed,
            input_size=list(self.size),
            skipped_non_image=self.skipped_non_image,
            skipped_unreadable=self.skipped_unreadable,
            skipped_too_large=self.skipped_too_large,
            warnings=list(self.warnings),
        )


def calibration_set(
    data_path: str | os.PathLike[str],
    model: OnnxModel | str | os.PathLike[str],
    count: int | None = None,
    seed: int = 0,
    split: str = "train",
    min_recommended: int | None = FEW_IMAGES,
    default_count: int = DEFAULT_COUNT,
) -> CalibrationSet:
    """Choose calibration images for `model` (an OnnxModel or an ONNX path).

    `data_path`: a folder of images (searched recursively), an images/ [+ masks/] pair, or a Cityscapes root
    (`split`, default train: never calibrate on the images you evaluate on). `count` None takes up to
    `default_count` images (500, NVIDIA's guidance) or all there are if fewer; an explicit count must be met.
    `min_recommended`: warn below this many images (None: no warning, e.g. for the FP16 range check).
    """
    if count is not None and count < 1:
        raise BadInputError(f"calibration count must be at least 1, got {count}")
    if not isinstance(model, OnnxModel):
        model = OnnxModel.load(model, external_data=False)
    config = model.config
    spec, size, batch = model.input_spec, model.input_size, model.input_spec.batch or 1
    root = Path(data_path)
    candidates, non_image = _candidates(root, split)
    notes: list[str] = []
    if non_image:
        _warn(f"{root}: skipped {non_image} non-image file(s) (no image format Pillow opens)", notes)
    chosen, skipped = _sample(candidates, count or default_count, seed)
    unreadable = skipped.get("not an image", 0) + skipped.get("unsupported mode", 0)
    too_large = skipped.get("too large", 0)
    if unreadable:
        _warn(f"{root}: skipped {unreadable} unreadable image file(s)", notes)
    if too_large:
        _warn(
            f"{root}: skipped {too_large} image(s) over the decompression-bomb limit of {max_pixels():,} pixels", notes
        )
    tally = f"{non_image} non-image, {unreadable} unreadable, {too_large} too large"
    if not chosen:
        raise BadInputError(f"{root}: no readable calibration images ({tally})")
    if count is not None and len(chosen) < count:
        raise BadInputError(f"{root}: {len(chosen)} usable calibration images, {count} requested ({tally} skipped)")
    if batch > 1 and len(chosen) % batch:
        dropped = len(chosen) % batch
        _warn(f"{root}: the model's batch size is {batch}; the last {dropped} image(s) are not used", notes)
        chosen = chosen[: len(chosen) - dropped]
    if min_recommended is not None and len(chosen) < min_recommended:
        _warn(
            f"{root}: {len(chosen)} calibration images; NVIDIA's guidance for INT8 calibration is about "
            f"{DEFAULT_COUNT} images representative of deployment",
            notes,
        )
    log.info("calibration: %d images from %s (seed %d)", len(chosen), root, seed)
    return CalibrationSet(
        root=root,
        files=chosen,
        input=spec,
        size=size,
        batch=batch,
        config=config,
        seed=seed,
        candidates=len(candidates),
        skipped_non_image=non_image,
        skipped_unreadable=unreadable,
        skipped_too_large=too_large,
        warnings=notes,
    )


class CalibrationReader:
    """ONNX Runtime / ModelOpt calibration data reader that decodes images batch by batch.

    Only one batch is in memory at a time (500 images at 512x1024 would be 3 GiB as one array).
    Implements the reader protocol ModelOpt uses: `get_next`, `get_first`, `rewind`. `on_batch(images)` is called
    with the images of a batch once the consumer asks for the next one (or learns there is none): calibrators ask
    after processing a batch, so it counts finished work.
    """

    def __init__(self, calib: CalibrationSet, on_batch: Callable[[int], None] | None = None):
        self.calib = calib
        self.on_batch = on_batch
        self._first: dict[str, np.ndarray] | None = None
        self._pending = 0
        self.rewind()

    def rewind(self) -> None:
        self._batches = self.calib.batches()

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pending and self.on_batch is not None:
            self.on_batch(self._pending)
        self._pending = 0
        batch = next(self._batches, None)
        if batch is None:
            return None
        self._pending = batch.shape[0]
        return {self.calib.input_name: batch}

    def get_first(self) -> dict[str, np.ndarray]:
        if self._first is None:
            self._first = {self.calib.input_name: next(self.calib.batches())}
        return self._first

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item
