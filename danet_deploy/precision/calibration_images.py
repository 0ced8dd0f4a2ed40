"""Calibration images from anything a caller has: a folder (or dataset root) is used as it is; any other iterable
of images (H x W x 3 uint8 RGB arrays, PIL images of any mode, paths) is written once, image by image, as
lossless PNGs into a scratch folder, so sampling, caching by content and bounded memory work exactly as for a
folder (the images are never all held in memory)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from danet_deploy.data.images import ImageLike, as_rgb
from danet_deploy.errors import BadInputError, OptionError
from danet_deploy.files import PathLike, scratch_dir


def _rgb(item: ImageLike, index: int) -> np.ndarray:
    """`data.images.as_rgb`, arrays given as any array-like; a bad array is the `calib` option's error."""
    if not isinstance(item, (str, os.PathLike, Image.Image, np.ndarray)):
        item = np.asarray(item)
    try:
        return as_rgb(item, f"<calibration image {index}>")
    except BadInputError as exc:
        if not isinstance(item, np.ndarray):
            raise  # a file's or PIL image's own problem names it
        raise OptionError("calib", f"<image {index}: {item.dtype} {item.shape}>", str(exc)) from None


@contextlib.contextmanager
def calibration_folder(calib: PathLike | Iterable[ImageLike] | None, near: PathLike) -> Iterator[Path | None]:
    """The folder to calibrate on: `calib` itself when it is a path, else a scratch folder beside `near` (the
    output, same file system) holding the iterable's images, removed afterwards."""
    if calib is None or isinstance(calib, (str, os.PathLike)):
        yield Path(calib) if calib is not None else None
        return
    with scratch_dir(near) as folder:
        count = 0
        for index, item in enumerate(calib):
            Image.fromarray(_rgb(item, index)).save(folder / f"calib_{index:06d}.png", compress_level=1)
            count += 1
        if count == 0:
            raise OptionError("calib", "<empty iterable>", "no calibration images")
        yield folder
