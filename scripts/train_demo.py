"""Train the bundled demo DANet (ResNet-18, width 32) on synthetic street scenes, on a CPU.

Reproducible: scenes are a pure function of their seed and training is seeded. Results can still vary in
the last digits across machines and thread counts (floating-point reduction order).

    python scripts/train_demo.py                      # ~52 min on 2 cores; writes the bundled checkpoint
    python scripts/train_demo.py --position-attention shuffle   # the Shuffle Attention demo variant, same recipe
    python scripts/train_demo.py --steps 50 --out /tmp/quick.pth   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from danet_deploy.checkpoints import save_checkpoint  # noqa: E402
from danet_deploy.config import CHANNEL_ATTENTIONS, POSITION_ATTENTIONS, ModelConfig  # noqa: E402
from danet_deploy.data.synthetic import generate_scene, scene_seed  # noqa: E402
from danet_deploy.evaluate.metrics import confusion_matrix, mean_iou, per_class_iou  # noqa: E402
from danet_deploy.model import build_danet  # noqa: E402

DEMO_CONFIG = ModelConfig(
    depth=18,
    base_width=32,
    stem_channels=(16, 16, 32),
    layer4_dilations=(2, 4, 4),
    align_corners=False,
    input_size=(256, 512),
)
ASSETS = ROOT / "danet_deploy" / "assets"


def to_tensor(images: np.ndarray, config: ModelConfig) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (x - mean) / std


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, config: ModelConfig) -> np.ndarray:
    model.eval()
    confusion = np.zeros((config.num_classes, config.num_classes), np.int64)
    with torch.no_grad():
        for i in range(0, len(images), 8):
            pred = model(to_tensor(images[i : i + 8], config)).argmax(1).numpy()
            for p, lab in zip(pred, labels[i : i + 8]):
                confusion += confusion_matrix(lab, p, config.num_classes)
    model.train()
    return confusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="default: danet_deploy/assets/demo_<arch>.pth")
    parser.add_argument("--position-attention", default="pam", choices=POSITION_ATTENTIONS)
    parser.add_argument("--channel-attention", default="cam", choices=CHANNEL_ATTENTIONS)
    parser.add_argument("--sa-groups", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=(160, 320), metavar=("H", "W"))
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=500)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = DEMO_CONFIG.with_overrides(
        position_attention=args.position_attention, channel_attention=args.channel_attention, sa_groups=args.sa_groups
    )
    args.out = args.out or ASSETS / f"demo_{config.arch}.pth"
    h, w = config.input_size
    t0 = time.time()
    train = [generate_scene(scene_seed("train", i), h, w) for i in range(args.train_images)]
    val = [generate_scene(scene_seed("val", i), h, w) for i in range(args.val_images)]
    train_x = np.stack([s.image for s in train])
    train_y = np.stack([s.label for s in train])
    val_x = np.stack([s.image for s in val])
    val_y = np.stack([s.label for s in val])
    print(f"generated {len(train)} train / {len(val)} val scenes in {time.time() - t0:.0f}s", flush=True)

    model = build_danet(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = min(100, args.steps // 10)

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ch, cw = args.crop
    best = (-1.0, None)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(train_x), args.batch)
        ys, xs = rng.integers(0, h - ch + 1, args.batch), rng.integers(0, w - cw + 1, args.batch)
        flips = rng.random(args.batch) < 0.5
        crops_x = np.stack([train_x[i, y : y + ch, x : x + cw] for i, y, x in zip(idx, ys, xs)])
        crops_y = np.stack([train_y[i, y : y + ch, x : x + cw] for i, y, x in zip(idx, ys, xs)])
        crops_x[flips] = crops_x[flips, :, ::-1]
        crops_y[flips] = crops_y[flips, :, ::-1]
        image = to_tensor(np.ascontiguousarray(crops_x), config)
        target = torch.from_numpy(np.ascontiguousarray(crops_y)).long()
        fused, pam_aux, cam_aux = model.forward_train(image)
        # Both upstream projects weight the fused and the two auxiliary losses equally.
        loss = sum(F.cross_entropy(o, target, ignore_index=255) for o in (fused, pam_aux, cam_aux))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            confusion = evaluate(model, val_x, val_y, config)
            miou = mean_iou(confusion) * 100
            print(f"step {step}: val mIoU {miou:.2f}", flush=True)
            if miou > best[0]:
                iou = per_class_iou(confusion) * 100
                extra = {
                    "trained_with": "scripts/train_demo.py",
                    "args": {
                        k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                        for k, v in vars(args).items()
                    },
                    "step": step,
                    "val_split": f"synthetic val, {args.val_images} scenes from seed {scene_seed('val', 0)}",
                    "val_miou": round(miou, 2),
                    "val_per_class_iou": {n: round(float(v), 2) for n, v in zip(config.class_names, iou)},
                }
                save_checkpoint(model, args.out, extra=extra)
                best = (miou, step)
    print(
        json.dumps(
            {
                "best_val_miou": round(best[0], 2),
                "step": best[1],
                "out": str(args.out),
                "minutes": round((time.time() - t0) / 60, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
