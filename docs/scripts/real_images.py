"""Sanity check on real pixels: the default model on real galaxy images, drawn with its boxes.

usage: python docs/scripts/real_images.py [--real-dir ../shared/data/real_decals] [--n 8] [--threshold T]

Uses the Hubble XDF crop that ships with scikit-image and, when the folder exists, real DECaLS
cutouts (424 px, grz; shared/data/real_decals). No clump labels exist for these: look at them.
Writes docs/images/real_images.png and prints the boxes per image.
"""

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from napari_clumps.inference import detect
from napari_clumps.io import read_image
from napari_clumps.plotting import save_boxes_png
from napari_clumps.samples import hubble_image

ROOT = Path(__file__).resolve().parents[2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--real-dir", default=ROOT.parent / "shared/data/real_decals")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's")
    parser.add_argument("--out", default=ROOT / "docs/images/real_images.png")
    args = parser.parse_args()
    images = [hubble_image()]
    real_dir = Path(args.real_dir)
    if real_dir.is_dir():
        images += [read_image(p) for p in sorted(real_dir.glob("*.png"))[: args.n]]
    with tempfile.TemporaryDirectory() as tmp:
        pngs = []
        for image in images:
            table = detect(image, score_threshold=args.threshold)
            print(f"{image.path.name}: {len(table)} boxes, scores {[round(s, 2) for s in table.score]}")
            pngs.append(save_boxes_png(image, table, Path(tmp) / f"{image.path.name}.png"))
        tiles = [Image.open(p).convert("RGB") for p in pngs]
        columns = 3
        width, height = max(t.width for t in tiles), max(t.height for t in tiles)
        rows = (len(tiles) + columns - 1) // columns
        montage = Image.new("RGB", (columns * width, rows * height), "white")
        for k, tile in enumerate(tiles):
            montage.paste(tile, ((k % columns) * width, (k // columns) * height))
        montage.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
