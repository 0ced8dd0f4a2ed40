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

from danet_deploy.data.images import image_to_rgb, read_image
from danet_deploy.errors import OptionError
from danet_deploy.files import PathLike, scratch_dir
from danet_deploy.options import ImageLike


def _rgb(item: ImageLike, index: int) -> np.ndarray:
    if isinstance(item, (str, os.PathLike)):
        return read_image(Path(item))
    if isinstance(item, Image.Image):
        return image_to_rgb(item, Path(f"<calibration image {index}>"))
    array = np.asarray(item)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise OptionError(
            "calib", f"<image {index}: {array.dtype} {array.shape}>", "expected H x W x 3 uint8 RGB arrays"
        )
    return array


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
