"""Image and mask decoding: every mode Pillow decodes becomes the right 8-bit RGB; bad masks never score quietly.

The expected pixels are computed here from the stored values (the 16-bit scaling, the EXIF rotation), not read
back from the code under test.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from danet_deploy.data.datasets import LabelFile, LabelRules, open_dataset, read_label
from danet_deploy.data.images import ImageTooLargeError, max_pixels, probe_image, read_image
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.errors import BadInputError

RGB = generate_scene(5, 64, 128).image[20:44, 40:80].copy()  # a 24 x 40 crop of a real scene


def png_bytes(values: np.ndarray, color_type: int, bit_depth: int, size: tuple[int, int] | None = None) -> bytes:
    """A PNG written by hand, so 16-bit colour and header-only giants can be made (Pillow writes neither)."""
    h, w = values.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = b"".join(b"\x00" + values[y].astype(dtype).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    width, height = size or (w, h)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def save(path: Path, image: Image.Image, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 24 * 40).reshape(24, 40).astype(np.uint16)
    path = tmp_path / "g16.png"
    path.write_bytes(png_bytes(values, 0, 16))
    assert Image.open(path).mode == "I;16"
    got = read_image(path)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert got.shape == (24, 40, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], expected)
    assert (got == 255).mean() < 0.01  # Pillow's own convert("RGB") makes ~99 % of these pixels white


def test_sixteen_bit_colour_keeps_its_high_byte(tmp_path: Path) -> None:
    values = RGB.astype(np.uint16) * 257  # 8-bit value v stored in 16 bits as v * 257 (v / 255 == v * 257 / 65535)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(values, 2, 16))
    np.testing.assert_array_equal(read_image(path), RGB)


def test_sixteen_bit_pgm_in_mode_i(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 24 * 40).reshape(24, 40).astype(np.uint16)
    path = tmp_path / "g16.pgm"
    path.write_bytes(b"P5 40 24 65535\n" + values.astype(">u2").tobytes())
    assert Image.open(path).mode in ("I", "I;16", "I;16B")
    np.testing.assert_array_equal(read_image(path)[..., 1], np.round(values / 257.0).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "YCbCr"])
def test_eight_bit_modes_decode_like_pillow(tmp_path: Path, mode: str) -> None:
    source = Image.fromarray(RGB).convert(mode)
    path = save(tmp_path / f"m.{'jpg' if mode == 'YCbCr' else 'png'}", source) if mode != "YCbCr" else None
    if path is None:  # JPEG stores YCbCr; decode what the file holds
        path = save(tmp_path / "m.jpg", source, quality=95)
    with Image.open(path) as reference:
        expected = np.asarray(reference.convert("RGB"))
    got = read_image(path)
    assert got.shape == (24, 40, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgba = np.dstack([RGB, np.zeros(RGB.shape[:2], np.uint8)])  # fully transparent
    path = save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(read_image(path), RGB)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = save(tmp_path / "c.jpg", Image.fromarray(RGB).convert("CMYK"), quality=100)
    got = read_image(path).astype(int)
    assert got.shape == (24, 40, 3)
    assert np.abs(got - RGB.astype(int)).mean() < 4  # round trip through CMYK JPEG, not inverted colours


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path / "phone.png", Image.fromarray(RGB), exif=exif.tobytes())
    got = read_image(path)
    np.testing.assert_array_equal(got, np.rot90(RGB, k=-1))
    # The mask of a rotated photo lines up with the displayed image: sizes agree after orientation.
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    path.rename(tmp_path / "images" / "phone.png")
    label = np.zeros((40, 24), np.uint8)
    Image.fromarray(label).save(tmp_path / "masks" / "phone.png")
    dataset = open_dataset(tmp_path).checked(LabelRules(num_classes=19))
    assert dataset.load(0).image.shape == (40, 24, 3)


def test_float_images_are_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "f.tif", Image.fromarray(RGB[..., 0].astype(np.float32) / 255, "F"))
    with pytest.raises(BadInputError, match=r"f\.tif: floating-point image"):
        read_image(path)
    assert probe_image(path) == "unsupported mode"


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    side = int(max_pixels() ** 0.5) + 10  # just over the limit: Pillow itself would only warn
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(side, side)))
    assert path.stat().st_size < 200
    with pytest.raises(ImageTooLargeError, match=rf"bomb\.png: {side}x{side} image exceeds the decompression-bomb"):
        read_image(path)
    assert probe_image(path) == "too large"
    huge = tmp_path / "huge.png"  # over twice the limit: Pillow raises on open
    huge.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(side * 2, side * 2)))
    with pytest.raises(ImageTooLargeError, match=r"huge\.png"):
        read_image(huge)


def test_truncated_and_non_images_name_the_file(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.fromarray(RGB).save(good, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.getvalue()[:120])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (cut, text):
        with pytest.raises(BadInputError, match=rf"{path.name}: not a readable image"):
            read_image(path)


# --- masks -------------------------------------------------------------------------------------------------


def _pair(root: Path, labels: dict[str, np.ndarray | None]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, label in labels.items():
        Image.fromarray(RGB).save(root / "images" / f"{name}.png")
        if label is not None:
            Image.fromarray(label).save(root / "masks" / f"{name}.png")
    return root


def test_unknown_mask_values_are_an_error_naming_mask_and_values(tmp_path: Path) -> None:
    label = np.zeros(RGB.shape[:2], np.uint8)
    label[0, :5] = 19  # one past the last class of a 19-class model
    label[1, :2] = 200
    label[2, :3] = 255  # ignored: fine
    root = _pair(tmp_path, {"a": label})
    rules = LabelRules(num_classes=19)
    with pytest.raises(
        BadInputError,
        match=r"masks/a\.png: mask values 19, 200 \(7 pixels\) are neither a class id "
        r"\(0-18\) nor the ignore index 255",
    ):
        open_dataset(root).checked(rules)
    opted = open_dataset(root).checked(LabelRules(num_classes=19, ignore_unknown=True))
    assert opted.label_check is not None and opted.label_check.unknown_values == {19: 5, 200: 2}
    assert opted.label_check.masks_with_unknown == 1 and "7 pixels in 1 masks" in opted.label_check.notes()[0]
    ids = opted.load(0).label
    assert ids is not None and (ids == 255).sum() == 3 + 7 and ids.max() == 255


def test_sixteen_bit_masks_with_large_values(tmp_path: Path) -> None:
    values = np.zeros((4, 4), np.uint16)
    values[0, 0] = 3
    values[1, 1] = 1000
    path = tmp_path / "m.png"
    path.write_bytes(png_bytes(values, 0, 16))
    label = LabelFile(path, "train_ids")
    with pytest.raises(BadInputError, match="mask values 1000"):
        read_label(label, LabelRules(num_classes=150))
    ids = read_label(label, LabelRules(num_classes=150, ignore_unknown=True))
    assert ids[0, 0] == 3 and ids[1, 1] == 255


def test_cityscapes_label_ids_outside_the_table_are_unknown(tmp_path: Path) -> None:
    path = tmp_path / "x_gtFine_labelIds.png"
    values = np.full((4, 4), 7, np.uint8)  # road
    values[0, 0] = 0  # unlabeled: ignored by the table
    values[1, 1] = 77  # not a Cityscapes label id
    Image.fromarray(values).save(path)
    label = LabelFile(path, "cityscapes_label_ids")
    with pytest.raises(BadInputError, match=r"mask values 77 .* Cityscapes label id"):
        read_label(label, LabelRules(num_classes=19))
    ids = read_label(label, LabelRules(num_classes=19, ignore_unknown=True))
    assert ids[2, 2] == 0 and ids[0, 0] == 255 and ids[1, 1] == 255


def test_partly_labeled_set_is_an_error_naming_the_images(tmp_path: Path) -> None:
    label = np.zeros(RGB.shape[:2], np.uint8)
    root = _pair(tmp_path, {"a": label, "b": None, "c": label, "d": None})
    with pytest.raises(BadInputError, match=r"2 of 4 images have no label file \(images/b.png, images/d.png\)"):
        open_dataset(root).checked(LabelRules(num_classes=19))
    subset = open_dataset(root).checked(LabelRules(num_classes=19), allow_unlabeled=True)
    assert len(subset) == 2 and subset.labeled
    assert subset.label_check is not None and subset.label_check.unlabeled_skipped == ["images/b.png", "images/d.png"]
    assert "2 of 4 images have no label file and were left out" in subset.label_check.notes()[0]


def test_mask_size_mismatch_is_found_before_any_inference(tmp_path: Path) -> None:
    root = _pair(tmp_path, {"a": np.zeros((5, 5), np.uint8)})
    with pytest.raises(BadInputError, match=r"masks/a\.png: label size \(5, 5\) != image size \(40, 24\)"):
        open_dataset(root).checked(LabelRules(num_classes=19))


def test_decoding_adds_no_warning_lines(tmp_path: Path) -> None:
    """Pillow's warnings (palette transparency, a bomb below twice the limit) would be extra lines around the
    one-line error of the CLI; decoding handles those cases and stays silent."""
    import warnings

    path = save(tmp_path / "p.png", Image.fromarray(RGB).convert("P"), transparency=bytes(256))
    side = int(max_pixels() ** 0.5) + 10
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(side, side)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image(path).shape == (24, 40, 3)
        with pytest.raises(ImageTooLargeError):
            read_image(bomb)
    assert [str(w.message) for w in caught] == []


def test_truncated_images_fail_the_check_before_inference_and_are_skipped_in_calibration(tmp_path: Path) -> None:
    full = io.BytesIO()
    Image.fromarray(RGB).save(full, "JPEG", quality=95)
    cut = full.getvalue()[: len(full.getvalue()) // 2]  # the header is intact: only decoding finds the damage
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(full.getvalue())
    (tmp_path / "images" / "b.jpg").write_bytes(cut)
    with pytest.raises(BadInputError, match=r"b\.jpg: not a readable image"):
        open_dataset(tmp_path).checked(LabelRules(num_classes=19))
    assert probe_image(tmp_path / "images" / "b.jpg") == "not an image"
    assert probe_image(tmp_path / "images" / "a.jpg") is None


def test_every_raster_format_pillow_opens_is_found(tmp_path: Path) -> None:
    for suffix in (".png", ".gif", ".pgm", ".tif", ".bmp", ".webp"):
        image = Image.fromarray(RGB).convert("L") if suffix == ".pgm" else Image.fromarray(RGB)
        image.save(tmp_path / f"x{suffix}")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = open_dataset(tmp_path)
    assert sorted(p.suffix for p, _ in dataset.items) == [".bmp", ".gif", ".pgm", ".png", ".tif", ".webp"]
    assert all(sample.image.shape == (24, 40, 3) for sample in dataset)
