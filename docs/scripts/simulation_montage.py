"""Montage of simulated galaxies (JPEGs with truth boxes) beside real Legacy Surveys cutouts.

usage: python docs/scripts/simulation_montage.py [OUT.png] [--real-dir DIR]
Writes docs/images/simulation_montage.png by default. The real cutouts are read from
../shared/data/real_decals (40 DECaLS galaxies, see its README) when that folder exists.
"""

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from napari_clumps.detections import read_detections
from napari_clumps.io import read_image
from napari_clumps.simulate import write_dataset

ROOT = Path(__file__).resolve().parents[2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default=ROOT / "docs/images/simulation_montage.png")
    parser.add_argument("--real-dir", default=ROOT.parent / "shared/data/real_decals")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    real = sorted(Path(args.real_dir).glob("*.png"))[:4] if Path(args.real_dir).is_dir() else []
    with tempfile.TemporaryDirectory() as tmp:
        truth = read_detections(write_dataset(tmp, n=12, seed=args.seed))
        fig, axes = plt.subplots(3, 5, figsize=(15, 9.4))
        sims = [a for i, a in enumerate(axes.flat) if i % 5 != 4]
        for index, ax in enumerate(sims):
            name = f"sim_{index:05d}.jpg"
            image = read_image(Path(tmp) / name)
            ax.imshow(image.composite, extent=(0, image.width, image.height, 0))
            for box in truth[truth.image == name].itertuples():
                colour = "cyan" if box.label == "clump" else "orange"
                ax.add_patch(
                    Rectangle(
                        (box.x_min, box.y_min),
                        box.x_max - box.x_min,
                        box.y_max - box.y_min,
                        fill=False,
                        ec=colour,
                        lw=1,
                    )
                )
            ax.set_title(f"simulated {name}", fontsize=8)
        for ax, path in zip(axes[:, 4], real):
            image = read_image(path)
            ax.imshow(image.composite, extent=(0, image.width, image.height, 0))
            ax.set_title(f"real DECaLS {path.stem}", fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("Simulated galaxies (JPEG, truth boxes: cyan clump, orange odd clump) | real DECaLS (right)")
        fig.tight_layout()
        fig.savefig(args.out, dpi=80)
        print(args.out)


if __name__ == "__main__":
    main()
