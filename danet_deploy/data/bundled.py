"""The demo model and data shipped inside the package (trained and written by scripts/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from danet_deploy.data.images import read_image
from danet_deploy.errors import BadInputError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_CHECKPOINT = ASSETS / "demo_danet_r18w32.pth"
# The same recipe with Shuffle Attention (8 groups) in the position branch instead of PAM.
DEMO_SA_CHECKPOINT = ASSETS / "demo_danet_r18w32_sa8.pth"
DEMO_CHECKPOINTS = {"danet": DEMO_CHECKPOINT, "shuffle": DEMO_SA_CHECKPOINT}
DEMO_DATA = ASSETS / "demo_data"  # Cityscapes layout, split "val"


def sample_images(count: int) -> list[np.ndarray]:
    """Real (synthetic-scene) RGB images for the parity checks after export and after each graph pass."""
    images = sorted((DEMO_DATA / "leftImg8bit").rglob("*_leftImg8bit.png"))[:count]
    if not images:
        raise BadInputError(f"{DEMO_DATA}: bundled demo images are missing; pass --image")
    return [read_image(p) for p in images]


def sample_image() -> np.ndarray:
    return sample_images(1)[0]
