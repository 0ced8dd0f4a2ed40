"""Write the bundled demo data and calibration images from the synthetic scene generator.

    python scripts/make_demo_data.py            # danet_deploy/assets/demo_data (val) + calibration/images

Deterministic: the same scenes (by seed) every run. The demo split is the first images of the synthetic
val split that scripts/train_demo.py reports its validation mIoU on; calibration images come from their
own split (never used for training or validation).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from danet_deploy.data.synthetic import generate_scene, scene_seed, write_cityscapes_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-images", type=int, default=24)
    parser.add_argument("--calib-images", type=int, default=100)
    args = parser.parse_args()

    demo = ROOT / "danet_deploy" / "assets" / "demo_data"
    shutil.rmtree(demo, ignore_errors=True)
    write_cityscapes_split(demo, "val", args.demo_images)
    print(f"wrote {args.demo_images} labeled scenes to {demo}")

    calib = ROOT / "calibration" / "images"
    shutil.rmtree(calib, ignore_errors=True)
    calib.mkdir(parents=True)
    for i in range(args.calib_images):
        scene = generate_scene(scene_seed("calib", i))
        Image.fromarray(scene.image).save(calib / f"calib_{i:04d}.jpg", quality=92)
    print(f"wrote {args.calib_images} calibration images to {calib}")


if __name__ == "__main__":
    main()
