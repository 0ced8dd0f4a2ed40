"""Decoding image and label files: every mode Pillow decodes becomes the right 8-bit RGB, or a one-line error.

What "right" means, mode by mode (Pillow names):
- 8-bit RGB, L, P, 1, RGBA, LA, PA, YCbCr, HSV: Pillow's conversion; alpha is dropped (as OpenCV's
  `imread` and MMSegmentation load training images), transparent palette entries keep their colour.
- 16-bit (single channel `I;16*`, or `I` with values in 0..65535, e.g. 16-bit PGM): scaled by 255 / 65535
  and rounded, not clipped (clipping turns almost every pixel white). 16-bit RGB(A) PNGs arrive as 8-bit
  from Pillow (high byte), which is the same scaling truncated.
- CMYK: through its embedded ICC profile to sRGB when it has one (Pillow's LittleCMS), else Pillow's
  conversion; LAB: through LittleCMS to sRGB.
- EXIF orientation is applied (a phone photo shows as the user sees it); multi-frame files give frame 0.
- Refused: floating-point images (`F`: no defined value range), 32-bit integers beyond 16 bits, and images
  over Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89.5 million pixels): the header
  alone is read, nothing is decoded.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from danet_deploy.errors import BadInputError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# Pillow registers these but only as stubs (scientific formats needing a handler), or needs an external program
# (Ghostscript) or reads a video's first frame: not images of a data set.
NOT_IMAGES = ("BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG", "FITS")


@functools.cache
def image_suffixes() -> tuple[str, ...]:
    """File suffixes of every raster format Pillow opens here (PNG, JPEG, TIFF, WebP, BMP, GIF, PGM/PPM, ...)."""
    Image.init()
    registered = Image.registered_extensions().items()
    return tuple(sorted(ext for ext, fmt in registered if fmt in Image.OPEN and fmt not in NOT_IMAGES))


LABEL_MODES = ("L", "P", "1", "I", *SIXTEEN_BIT_MODES)


def max_pixels() -> int:
    """Pillow's decompression-bomb limit (read each time: an application may raise it)."""
    return int(Image.MAX_IMAGE_PIXELS or 0)


class ImageTooLargeError(BadInputError):
    """A decompression bomb: the header promises more pixels than the limit."""


class UnsupportedImageError(BadInputError):
    """A decodable image without a defined 8-bit RGB reading (floating point, beyond 16 bits)."""


@contextmanager
def open_image(path: Path, what: str = "image") -> Iterator[Image.Image]:
    """Open a file for decoding; only the header is read here. One-line BadInputError for files that are not
    images, and ImageTooLargeError (also exit 2) for decompression bombs, before any pixel is decoded."""
    with warnings.catch_warnings():
        # Pillow's warnings (a bomb between 1x and 2x its limit, which it raises above; odd EXIF, palette
        # transparency) would be extra lines around the one-line error: the cases are handled here instead.
        warnings.filterwarnings("ignore", module=r"PIL\.")
        try:
            img = Image.open(path)
        except Image.DecompressionBombError:
            raise _too_large(path, None) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise BadInputError(f"{path}: not a readable {what} ({_reason(exc)})") from None
        with img:
            limit = max_pixels()
            if limit and img.width * img.height > limit:
                raise _too_large(path, img.size)
            try:
                yield img
            except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
                raise BadInputError(f"{path}: not a readable {what} ({_reason(exc)})") from None


def _too_large(path: Path, size: tuple[int, int] | None) -> ImageTooLargeError:
    dims = f"{size[0]}x{size[1]} " if size else ""
    return ImageTooLargeError(
        f"{path}: {dims}image exceeds the decompression-bomb limit of {max_pixels():,} pixels; not decoded"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:80] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def probe_image(path: Path) -> str | None:
    """Why `path` cannot be used as an image ("not an image", "too large", "unsupported mode"), or None.
    A decompression bomb is found from the header; anything else is decoded (a truncated JPEG has a fine
    header), so what passes here decodes later."""
    try:
        read_image(path)
    except ImageTooLargeError:
        return "too large"
    except UnsupportedImageError:
        return "unsupported mode"
    except BadInputError:
        return "not an image"
    return None


def image_to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB from an open Pillow image, by the rules in this module's docstring."""
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        return np.repeat(_sixteen_to_eight(img, path)[..., None], 3, axis=2)
    if mode == "F":
        raise UnsupportedImageError(
            f"{path}: floating-point image (mode F) has no defined value range; save it as 8 or 16 bit"
        )
    if mode in ("CMYK", "LAB"):
        return np.asarray(_through_icc(img))
    return np.asarray(img.convert("RGB"))


def _sixteen_to_eight(img: Image.Image, path: Path) -> np.ndarray:
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 0xFFFF):
        raise UnsupportedImageError(f"{path}: {img.mode}-mode values {values.min()}..{values.max()} exceed 16 bits")
    return ((values * 255 + 0x7FFF) // 0xFFFF).astype(np.uint8)  # round(v * 255 / 65535)


def _through_icc(img: Image.Image) -> Image.Image:
    from PIL import ImageCms

    srgb = ImageCms.createProfile("sRGB")
    source: ImageCms.ImageCmsProfile | ImageCms.core.CmsProfile
    if img.mode == "LAB":
        source = ImageCms.createProfile("LAB")
    elif img.info.get("icc_profile"):
        import io

        source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
    else:
        return img.convert("RGB")
    try:
        return ImageCms.profileToProfile(img, source, srgb, outputMode="RGB") or img.convert("RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):  # a broken embedded profile: the plain conversion
        return img.convert("RGB")


def read_image(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB; one-line BadInputError naming the file when it cannot be decoded or is too large."""
    with open_image(path) as img:
        return image_to_rgb(img, path)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the header (decompression bombs refused), before EXIF orientation: enough to size a run."""
    with open_image(path) as img:
        return img.height, img.width


def read_label_values(path: Path) -> np.ndarray:
    """The stored values of a single-channel label image (uint8, or wider for 16-bit files), EXIF orientation
    applied so it lines up with its image. Colour label images are refused: class ids, not a palette."""
    with open_image(path, "label image") as img:
        if img.mode not in LABEL_MODES:
            raise BadInputError(f"{path}: label image must be single-channel class ids (mode {img.mode})")
        img = ImageOps.exif_transpose(img) or img
        values = np.asarray(img)
    if values.dtype == bool:
        return values.astype(np.uint8)
    return values if values.dtype == np.uint8 else values.astype(np.int64)


# One image as callers hold it: H x W x 3 uint8 RGB array, a PIL image (any mode) or a path.
ImageLike = np.ndarray | Image.Image | str | os.PathLike[str]


def as_rgb(image: ImageLike, name: str = "<PIL image>") -> np.ndarray:
    """H x W x 3 uint8 RGB from a path (any Pillow mode, as verify reads images), a PIL image (`name` in its
    errors when it has no file name) or an array (checked, not converted: other dtypes are refused)."""
    if isinstance(image, Image.Image):
        return image_to_rgb(image, Path(getattr(image, "filename", "") or name))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
            raise BadInputError(f"expected an H x W x 3 uint8 RGB array, got shape {image.shape} of {image.dtype}")
        return image
    return read_image(Path(image))
