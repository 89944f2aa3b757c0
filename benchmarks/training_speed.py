"""Training speed: seconds per epoch per 100 images of 200 px, and our loop's overhead vs a bare loop.

usage: python benchmarks/training_speed.py [--arch zoobot-convnext_pico] [--images 100] [--threads 2]
       [--out docs/benchmarks/training_speed.md]

Both loops train the same network (random init, every layer trainable, batch 4) on the same 100
simulated galaxies for one epoch, after a few warm-up steps. The bare loop is the textbook
torchvision one: pre-made tensors, AdamW, loss.backward, step. Ours is
:func:`napari_clumps.training.train` (box-aware flips/rotations, one-cycle schedule, gradient
clipping, progress callback, NaN check), without validation.
"""

import argparse
import platform
import time
from pathlib import Path

import torch

from napari_clumps.composite import lupton_composite
from napari_clumps.inference import as_galaxy_image, image_tensor
from napari_clumps.model import new_detector
from napari_clumps.simulate import simulate_galaxy
from napari_clumps.training import LabelledImage, TrainingOptions, train


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="zoobot-convnext_pico")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=Path(__file__).resolve().parents[1] / "docs/benchmarks/training_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    items = []
    for i in range(args.images):
        galaxy = simulate_galaxy(11, i)
        image = as_galaxy_image(lupton_composite(galaxy.bands, ("g", "r", "i")), name=f"g{i}")
        items.append(
            LabelledImage(image, galaxy.truth_boxes(), [1 if c.label == "clump" else 2 for c in galaxy.clumps])
        )

    def fresh():
        torch.manual_seed(0)
        return new_detector(args.arch, backbone_weights=None)

    # bare loop
    detector = fresh()
    network = detector.network.train()
    tensors = [image_tensor(it.image) for it in items]
    targets = [
        {
            "boxes": torch.as_tensor(it.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(it.labels, dtype=torch.int64).reshape(-1),
        }
        for it in items
    ]
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-4, weight_decay=5e-5)
    batches = [(tensors[i : i + 4], targets[i : i + 4]) for i in range(0, len(items) - len(items) % 4, 4)]

    def bare_step(images, target):
        loss = sum(network(images, target).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    for images, target in batches[:3]:  # warm-up
        bare_step(images, target)
    start = time.perf_counter()
    for images, target in batches:
        bare_step(images, target)
    bare = time.perf_counter() - start

    # ours (warm-up run of 3 steps first, like the bare loop)
    warm = train(fresh(), items[:12], TrainingOptions(epochs=1, trainable_blocks=None, val_fraction=0))
    del warm
    detector = fresh()
    start = time.perf_counter()
    train(detector, items, TrainingOptions(epochs=1, trainable_blocks=None, val_fraction=0, learning_rate=3e-4))
    ours = time.perf_counter() - start

    per100 = 100 / len(items)
    lines = [
        f"CPU: {platform.machine()}, {args.threads} threads, torch {torch.__version__}; {args.arch}, random init, "
        f"all layers trained, batch 4, {len(items)} simulated 200 x 200 galaxies, one epoch. "
        "Made by `python benchmarks/training_speed.py`.",
        "",
        "| loop | s per epoch per 100 images | overhead vs bare |",
        "|---|---|---|",
        f"| bare torchvision loop (pre-made tensors, AdamW) | {bare * per100:.1f} | - |",
        f"| napari_clumps.training.train (augmentation, schedule, clipping, callback) | {ours * per100:.1f} | "
        f"{100 * (ours / bare - 1):+.1f} % |",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
