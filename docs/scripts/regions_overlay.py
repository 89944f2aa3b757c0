"""DS9 region files written by `napari-clumps detect --regions`, read back and drawn over their images.

usage: python docs/scripts/regions_overlay.py [OUT.png] [--seed S]
Writes docs/images/regions_overlay.png by default: one simulated galaxy as its FITS file (sky
regions, converted back to pixels with the file's WCS, drawn north up as DS9 shows it) and as its
JPEG (image-coordinate regions), with the simulation's truth boxes dashed. Offline; the packaged
default model on the CPU, a few seconds.
"""

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
from regions import Regions

from napari_clumps.cli import main as napari_clumps
from napari_clumps.detections import read_detections
from napari_clumps.io import read_image
from napari_clumps.simulate import write_dataset

ROOT = Path(__file__).resolve().parents[2]


def draw(ax, image, shapes, truth, origin: str) -> None:
    """The image in astropy pixel coordinates (centres at integers), as regions draws shapes."""
    rows = (-0.5, image.height - 0.5) if origin == "lower" else (image.height - 0.5, -0.5)
    extent = (-0.5, image.width - 0.5, *rows)
    ax.imshow(image.composite, origin=origin, extent=extent, interpolation="nearest")
    for box in truth.itertuples():  # edge convention -> astropy: minus half a pixel
        corner = (box.x_min - 0.5, box.y_min - 0.5)
        ax.add_patch(Rectangle(corner, box.x_max - box.x_min, box.y_max - box.y_min, fill=False, ec="white", ls="--"))
    for shape in shapes:
        pixel = shape if image.wcs is None else shape.to_pixel(image.wcs)
        pixel.plot(ax=ax, edgecolor=pixel.visual["edgecolor"], lw=1.5)
        ax.text(pixel.center.x, pixel.center.y + pixel.height / 2 + 1, shape.meta["text"], color="w", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default=ROOT / "docs/images/regions_overlay.png")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth = read_detections(write_dataset(tmp / "sim", n=1, seed=args.seed))
        napari_clumps(["detect", str(tmp / "sim"), "--out", str(tmp / "run.ecsv"), "--regions", str(tmp / "reg")])
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
        for ax, name, origin, how in [
            (axes[0], "sim_00000.fits", "lower", "FITS: sky regions (icrs) through its WCS, north up as in DS9"),
            (axes[1], "sim_00000.jpg", "upper", "JPEG: image-coordinate regions"),
        ]:
            shapes = Regions.read(tmp / "reg" / f"{name}.reg", format="ds9")
            draw(ax, read_image(tmp / "sim" / name), shapes, truth[truth.image == name], origin)
            ax.set_title(f"{name}.reg: {len(shapes)} boxes\n{how}", fontsize=8)
        fig.suptitle("DS9 region files read back (solid, coloured by class) over the truth boxes (dashed)", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
