"""How well the anchors cover clump boxes: our clump anchors vs torchvision's COCO defaults.

usage: python benchmarks/anchor_coverage.py [--n 300] [--out docs/benchmarks/anchor_coverage.md]

For each truth box of --n simulated galaxies (whose box sizes are calibrated to Clump Scout
volunteers), the best IoU with any anchor the RPN would place on the 200 x 200 input. The RPN
treats an anchor as positive at IoU >= 0.7 (or as the best anchor of a box); a box with no
anchor near that is learned only through the "best anchor" fallback and regresses poorly.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from napari_clumps.model import config_for
from napari_clumps.simulate import simulate_galaxy


def anchors_for(config, size=200):
    """All anchors on a size x size input (scaled by the config's input scale / min_size)."""
    scale = config.input_scale if config.kind == "timm" else config.min_size / size
    side = int(round(size * scale))
    strides = [4, 8, 16, 32, 64]
    features = [torch.zeros(1, 1, int(np.ceil(side / s)), int(np.ceil(side / s))) for s in strides]
    generator = AnchorGenerator(
        tuple(tuple(s) for s in config.anchor_sizes), (tuple(config.aspect_ratios),) * len(config.anchor_sizes)
    )
    images = ImageList(torch.zeros(1, 3, side, side), [(side, side)])
    return generator(images, features)[0] / scale  # back to input pixels


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--out", default=Path(__file__).resolve().parents[1] / "docs/benchmarks/anchor_coverage.md")
    args = parser.parse_args()
    boxes = np.concatenate([simulate_galaxy(7, i).truth_boxes() for i in range(args.n)])
    truth = torch.as_tensor(boxes, dtype=torch.float32)
    sides = boxes[:, 2] - boxes[:, 0]
    configs = {
        "napari-clumps default (timm models): sides 8-192 px, 2 per level, square": config_for("zoobot-convnext_nano"),
        "same anchors with the input upsampled 2x (input_scale 2: 4x the compute)": config_for(
            "zoobot-convnext_nano",
            input_scale=2.0,
            anchor_sizes=tuple(
                tuple(2 * s for s in level) for level in config_for("zoobot-convnext_nano").anchor_sizes
            ),
        ),
        "first try: sides 6-160 px (6, 10), (14, 20), ...": config_for(
            "zoobot-convnext_nano", anchor_sizes=((6, 10), (14, 20), (28, 40), (56, 80), (112, 160))
        ),
        "COCO defaults at native size (sides 32-512, ratios 0.5/1/2, min_size 200)": config_for(
            "paper-resnet50-fpn", min_size=200
        ),
        "paper setup (COCO anchors, min_size 800: input upsampled 4x)": config_for("paper-resnet50-fpn"),
    }
    lines = [
        f"{len(boxes)} truth boxes of {args.n} simulated galaxies (side median {np.median(sides):.1f} px, "
        f"5-95 % {np.percentile(sides, 5):.1f}-{np.percentile(sides, 95):.1f}). "
        "Made by `python benchmarks/anchor_coverage.py`.",
        "",
        "| anchors | anchors per 200 px image | median best IoU | boxes with an anchor at IoU >= 0.7 | >= 0.5 |",
        "|---|---|---|---|---|",
    ]
    for label, config in configs.items():
        anchors = anchors_for(config)
        best = box_iou(truth, anchors).max(dim=1).values.numpy()
        lines.append(
            f"| {label} | {len(anchors)} | {np.median(best):.2f} | {np.mean(best >= 0.7):.2f} | "
            f"{np.mean(best >= 0.5):.2f} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
