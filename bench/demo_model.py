"""The bundled demo model's training record (stored in the checkpoint by scripts/train_demo.py).

python bench/demo_model.py      # writes the "demo-model" section of docs/benchmarks.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_section
from danet_deploy.checkpoints import load_checkpoint, read_checkpoint_file
from danet_deploy.data.bundled import DEMO_CHECKPOINT


def main() -> None:
    extra = read_checkpoint_file(DEMO_CHECKPOINT)["extra"]
    model = load_checkpoint(DEMO_CHECKPOINT).model
    params = sum(p.numel() for p in model.parameters())
    args = extra["args"]
    rows = [f"| {name} | {value:.2f} |" for name, value in extra["val_per_class_iou"].items()]
    body = "\n".join(
        [
            "## Demo model: DANet ResNet-18 (width 32), trained on synthetic scenes",
            "",
            f"`{DEMO_CHECKPOINT.name}`: {params / 1e6:.2f} M parameters, {DEMO_CHECKPOINT.stat().st_size / 2**20:.1f} MiB. "
            f"Trained with `python scripts/train_demo.py` ({args['steps']} steps, batch {args['batch']}, "
            f"{args['crop'][0]}x{args['crop'][1]} crops of {args['train_images']} scenes, AdamW lr {args['lr']}, seed "
            f"{args['seed']}). Best checkpoint: step {extra['step']}.",
            "",
            f"Validation mIoU on the {extra['val_split']}: **{extra['val_miou']:.2f}**.",
            "",
            "| class | IoU % |",
            "|---|---|",
            *rows,
        ]
    )
    print(body)
    write_section("demo-model", body)


if __name__ == "__main__":
    main()
