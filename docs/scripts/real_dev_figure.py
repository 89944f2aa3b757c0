"""Real dev galaxies with their catalogued clumps and a model's detections, and a count of the misses.

usage: python docs/scripts/real_dev_figure.py [--model MODEL] [--n 12]

Writes docs/images/real_dev_detections.png (truth: orange squares; detections on the host at the
model's threshold: cyan clump, magenta odd clump; a truth that no detection matched has a red
cross) and docs/benchmarks/real_dev_misses.md: of the catalogued clumps missed, how many show
any light in the JPEG at all (excess over the local host light above the local noise,
:func:`napari_clumps.inject.measure_clump`, with the image's own PSF estimate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import real_data  # noqa: E402

FIGURE = ROOT / "docs" / "images" / "real_dev_detections.png"
TABLE = ROOT / "docs" / "benchmarks" / "real_dev_misses.md"
COLOURS = {"clump": (0, 229, 255), "odd_clump": (255, 0, 255)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--n", type=int, default=12, help="galaxies in the figure")
    args = parser.parse_args()
    from PIL import Image, ImageDraw

    from napari_clumps.host import on_host_rows
    from napari_clumps.inject import estimate_psf_fwhm, linearise_rgb, measure_clump
    from napari_clumps.io import read_image
    from napari_clumps.metrics import match_image
    from napari_clumps.model import get_detector

    detector = get_detector(args.model, "cpu")
    threshold = detector.score_threshold
    paths, truth, nominal_fwhm = real_data.dev_set()
    names = [p.name for p in paths]
    found = on_host_rows(real_data.detect_all(detector, paths, names))
    found = found[found.score >= threshold]
    columns = ["x_min", "y_min", "x_max", "y_max"]
    rows, tiles = [], []
    for path in paths:
        image = read_image(path)
        t = truth[truth.image == path.name]
        d = found[found.image == path.name]
        match = match_image(
            t[columns].to_numpy(float), d[columns].to_numpy(float), d.score.to_numpy(float), rule="centre"
        )
        linear = linearise_rgb(image.composite)
        fwhm = estimate_psf_fwhm(image.composite) or nominal_fwhm[path.name]
        for (_, row), matched in zip(t.iterrows(), match.truth_matched):
            seen = measure_clump(linear, row.x_center, row.y_center, fwhm).snr > 1.0
            rows.append({"image": path.name, "matched": bool(matched), "visible": bool(seen)})
        n_false = int((~match.detection_matched).sum())
        rows.append({"image": path.name, "false_detections": n_false})
        if len(tiles) < args.n:
            picture = Image.fromarray(image.composite).convert("RGB")
            draw = ImageDraw.Draw(picture)
            for (_, row), matched in zip(t.iterrows(), match.truth_matched):
                draw.rectangle([row.x_min, row.y_min, row.x_max, row.y_max], outline=(255, 160, 0))
                if not matched:
                    draw.line([row.x_min, row.y_min, row.x_max, row.y_max], fill=(255, 40, 40))
                    draw.line([row.x_min, row.y_max, row.x_max, row.y_min], fill=(255, 40, 40))
            for _, row in d.iterrows():
                draw.rectangle([row.x_min - 2, row.y_min - 2, row.x_max + 2, row.y_max + 2], outline=COLOURS[row.label])
            tiles.append(picture.crop((92, 92, 332, 332)))  # the central 240 px: the galaxy
    side = 240
    columns_n = 4
    sheet = Image.new("RGB", (columns_n * side, -(-len(tiles) // columns_n) * side))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns_n) * side, (k // columns_n) * side))
    sheet.save(FIGURE)
    table = pd.DataFrame(rows)
    clumps = table[table.matched.notna()]
    missed = clumps[~clumps.matched.astype(bool)]
    lines = [
        "# Real dev set: what is missed and what is found falsely",
        "",
        f"`python docs/scripts/real_dev_figure.py --model {args.model}`: model {detector.model_id}, "
        f"detections on the host at its threshold {threshold:g}, centre rule.",
        "",
        "| catalogued clumps | visible in the JPEG | matched | missed | missed and visible | "
        "missed and invisible | false detections |",
        "|---|---|---|---|---|---|---|",
        f"| {len(clumps)} | {int(clumps.visible.sum())} | {int(clumps.matched.sum())} | {len(missed)} | "
        f"{int(missed.visible.sum())} | {int((~missed.visible.astype(bool)).sum())} | "
        f"{int(table.false_detections.sum())} |",
        "",
        "Completeness on the visible clumps alone: "
        f"{clumps[clumps.visible.astype(bool)].matched.mean():.2f}; on the invisible ones: "
        f"{clumps[~clumps.visible.astype(bool)].matched.mean():.2f}.",
        "",
        '"Visible": the clump\'s mean excess over the local host light within half a PSF FWHM is above the',
        "local noise (1.4826 MAD in an annulus of 1.5-3 FWHM), measured in the linearised JPEG with",
        "the image's own PSF estimate (`napari_clumps.inject.measure_clump`).",
        "",
    ]
    TABLE.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
