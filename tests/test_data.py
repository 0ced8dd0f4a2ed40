"""Dataset readers (Cityscapes, images/ + masks/), the label mapping and the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from danet_deploy.data.datasets import (
    CITYSCAPES_LABEL_TO_TRAIN,
    label_ids_to_train_ids,
    open_dataset,
)
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.errors import BadInputError


def test_label_id_mapping_follows_the_public_table() -> None:
    ids = np.arange(34, dtype=np.uint8)
    mapped = label_ids_to_train_ids(ids)
    assert mapped[7] == 0 and mapped[26] == 13 and mapped[33] == 18  # road, car, bicycle
    for ignored in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30):  # void, parking, rail, guard rail, ...
        assert mapped[ignored] == 255
    assert sorted(CITYSCAPES_LABEL_TO_TRAIN.values()) == list(range(19))


def test_cityscapes_prefers_train_ids_and_maps_label_ids(city_data: Path, tmp_path: Path) -> None:
    ds = open_dataset(city_data, "val")
    assert ds.kind == "cityscapes" and len(ds) == 3 and ds.labeled
    with_train_ids = [s.label for s in ds]
    # Remove the labelTrainIds files: the reader must fall back to labelIds and map them to the same ids.
    for p in city_data.rglob("*_labelTrainIds.png"):
        p.rename(tmp_path / p.name)
    try:
        with_label_ids = [s.label for s in open_dataset(city_data, "val")]
    finally:
        for p in tmp_path.glob("*_labelTrainIds.png"):
            p.rename(next(city_data.rglob("gtFine/val/synth")) / p.name)
    for a, b in zip(with_train_ids, with_label_ids):
        np.testing.assert_array_equal(a, b)
    sample = ds.load(0)
    assert sample.image.dtype == np.uint8 and sample.image.shape == (64, 128, 3)
    assert sample.name.startswith("leftImg8bit/val/synth/")


def test_folder_pair_matches_masks_by_name(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    scene = generate_scene(3, 32, 64)
    Image.fromarray(scene.image).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(scene.label).save(tmp_path / "masks" / "a.png")
    Image.fromarray(scene.image).save(tmp_path / "images" / "b.png")  # unlabeled
    ds = open_dataset(tmp_path)
    assert ds.kind == "folder" and len(ds) == 2 and not ds.labeled
    np.testing.assert_array_equal(ds.load(0).label, scene.label)
    assert ds.load(1).label is None


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such data folder"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    ds = open_dataset(tmp_path)
    with pytest.raises(BadInputError, match=r"broken\.png: not a readable image"):
        ds.load(0)
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "broken.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "masks" / "broken.png")
    with pytest.raises(BadInputError, match="label size"):
        open_dataset(tmp_path).load(0)
    with pytest.raises(BadInputError, match="leftImg8bit/train"):
        (tmp_path / "city" / "leftImg8bit").mkdir(parents=True)
        open_dataset(tmp_path / "city", "train")


@pytest.mark.slow
def test_synthetic_scenes_are_deterministic_and_cover_all_classes() -> None:
    a, b = generate_scene(11), generate_scene(11)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(generate_scene(12).image, a.image)
    seen = np.zeros(256, bool)
    for seed in range(30):
        seen[np.unique(generate_scene(seed).label)] = True
    assert seen[:19].all(), f"classes never drawn: {np.flatnonzero(~seen[:19])}"
    assert set(np.flatnonzero(seen)) <= set(range(19)) | {255}
