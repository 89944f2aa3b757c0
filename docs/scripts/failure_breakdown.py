"""Where a detector fails on a simulated test set: completeness by class, box size and file kind,
purity by box size, and how far the false detections are from any truth box.

usage: python docs/scripts/failure_breakdown.py TRUTH.csv DETECTIONS.csv [--threshold T]

Same matching as ``napari-clumps evaluate`` (greedy one-to-one by score, IoU >= 0.3). The
default threshold is the packaged default model's. Prints Markdown-ready lines.
"""

import argparse

import numpy as np
import pandas as pd

from napari_clumps.detections import read_detections
from napari_clumps.io import is_fits_path
from napari_clumps.metrics import box_iou, match_image

BOX = ["x_min", "y_min", "x_max", "y_max"]
SIZE_BINS = [0, 8, 12, 20, 30, np.inf]


def size_bin(boxes: pd.DataFrame) -> pd.Series:
    side = np.maximum(boxes.x_max - boxes.x_min, boxes.y_max - boxes.y_min)
    return pd.cut(side, SIZE_BINS, right=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("truth")
    parser.add_argument("detections")
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args()
    if args.threshold is None:
        from napari_clumps.model import get_detector

        args.threshold = get_detector(None, "cpu").score_threshold
    truth = read_detections(args.truth)
    found = read_detections(args.detections)
    found = found[found.score >= args.threshold]
    truth_hit, det_hit, det_distance = [], [], []
    for name in sorted(set(truth.image) | set(found.image)):
        t = truth[truth.image == name]
        d = found[found.image == name]
        match = match_image(t[BOX].to_numpy(float), d[BOX].to_numpy(float), d.score.to_numpy(float))
        truth_hit.append(pd.Series(match.truth_matched, index=t.index))
        det_hit.append(pd.Series(match.detection_matched, index=d.index))
        # a false detection "near" truth overlaps some truth box at all; "far" overlaps none
        overlap = box_iou(d[BOX].to_numpy(float), t[BOX].to_numpy(float)).max(axis=1) if len(t) else np.zeros(len(d))
        det_distance.append(pd.Series(overlap, index=d.index))
    truth["hit"] = pd.concat(truth_hit)
    found["hit"] = pd.concat(det_hit)
    found["overlap"] = pd.concat(det_distance)
    truth["kind"] = np.where(truth.image.map(is_fits_path), "FITS", "JPEG")

    print(
        f"threshold {args.threshold}: completeness {truth.hit.mean():.3f}, purity {found.hit.mean():.3f} "
        f"({len(truth)} truth boxes, {len(found)} detections)"
    )
    print("completeness by class: " + ", ".join(f"{k} {v:.2f}" for k, v in truth.groupby("label").hit.mean().items()))
    print(
        "completeness by file kind: " + ", ".join(f"{k} {v:.2f}" for k, v in truth.groupby("kind").hit.mean().items())
    )
    by_size = truth.groupby(size_bin(truth), observed=True).hit.agg(["mean", "size"])
    print(
        "completeness by truth box side (px): "
        + ", ".join(f"{b.left:g}-{b.right:g} {row['mean']:.2f} (n={row['size']:.0f})" for b, row in by_size.iterrows())
    )
    by_size = found.groupby(size_bin(found), observed=True).hit.agg(["mean", "size"])
    print(
        "purity by detected box side (px): "
        + ", ".join(f"{b.left:g}-{b.right:g} {row['mean']:.2f} (n={row['size']:.0f})" for b, row in by_size.iterrows())
    )
    false = found[~found.hit]
    print(
        f"false detections: {len(false)}; overlapping no truth box: {(false.overlap == 0).sum()}; "
        f"overlapping one but below IoU 0.3 (misplaced or duplicate): {(false.overlap > 0).sum()}; "
        f"called odd clump: {(false.label == 'odd_clump').sum()}"
    )


if __name__ == "__main__":
    main()
