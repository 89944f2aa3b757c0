"""Completeness, purity and F1 of detections against truth boxes.

Matching rule (per image, class-agnostic, one-to-one): detections are taken in order of
decreasing score; each is matched to the still-unmatched truth box it overlaps best, if that
pair passes the rule:

* ``"iou"`` (default): intersection over union >= ``iou_threshold`` (default 0.3; clumps are
  small, so a few pixels of offset already cost a lot of IoU);
* ``"centre"``: the detection's centre lies within ``centre_factor`` x half the larger side of
  the two boxes from the truth box's centre (default 1.0), the rule for truth sets with nominal
  box sizes (e.g. catalogue positions with boxes of 2.5 x the seeing); the nearest such truth wins.

completeness = matched truth / truth; purity = matched detections / detections;
F1 = their harmonic mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .detections import box_array

DEFAULT_IOU = 0.3
#: Matching rules of :func:`match_image`.
MATCH_RULES = ("iou", "centre")


@dataclass
class ImageMatch:
    truth_matched: np.ndarray  # bool per truth box
    detection_matched: np.ndarray  # bool per detection
    #: per detection, the index of the truth box it matched, -1 when none (pairs, e.g. to compare
    #: the scores of two detectors' boxes of the same object)
    detection_partner: np.ndarray = None

    @property
    def n_matched(self) -> int:
        return int(self.detection_matched.sum())


def box_iou(a, b) -> np.ndarray:
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(
    truth_boxes,
    det_boxes,
    det_scores=None,
    *,
    rule: str = "iou",
    iou_threshold: float = DEFAULT_IOU,
    centre_factor: float = 1.0,
) -> ImageMatch:
    """Greedy one-to-one matching by score (see the module docstring)."""
    truth = np.asarray(truth_boxes, float).reshape(-1, 4)
    dets = np.asarray(det_boxes, float).reshape(-1, 4)
    scores = np.ones(len(dets)) if det_scores is None else np.asarray(det_scores, float)
    truth_matched = np.zeros(len(truth), bool)
    det_matched = np.zeros(len(dets), bool)
    partner = np.full(len(dets), -1)
    if len(truth) == 0 or len(dets) == 0:
        return ImageMatch(truth_matched, det_matched, partner)
    iou = box_iou(dets, truth)
    if rule == "iou":
        allowed = iou >= iou_threshold
        quality = iou
    elif rule == "centre":
        det_c = (dets[:, None, :2] + dets[:, None, 2:]) / 2
        truth_c = (truth[None, :, :2] + truth[None, :, 2:]) / 2
        distance = np.hypot(*(det_c - truth_c).transpose(2, 0, 1))
        truth_side = np.maximum(truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1])[None, :]
        det_side = np.maximum(dets[:, 2] - dets[:, 0], dets[:, 3] - dets[:, 1])[:, None]
        half_side = np.maximum(truth_side, det_side) / 2
        allowed = distance <= centre_factor * half_side
        quality = -distance
    else:
        raise ValueError(f"unknown matching rule {rule!r}; use one of {', '.join(MATCH_RULES)}")
    for d in np.argsort(-scores, kind="stable"):
        candidates = np.flatnonzero(allowed[d] & ~truth_matched)
        if len(candidates):
            t = candidates[np.argmax(quality[d, candidates])]
            truth_matched[t] = det_matched[d] = True
            partner[d] = t
    return ImageMatch(truth_matched, det_matched, partner)


def scores_table(truth, detections, thresholds=None, images=None, **rule):
    """Completeness, purity, F1 (and counts) at each score threshold.

    ``truth`` and ``detections`` are detections tables; ``images`` the image names to count
    (default: every image in either table). Returns a pandas DataFrame, one row per threshold.
    """
    import pandas as pd

    if thresholds is None:
        thresholds = np.round(np.arange(0.05, 1.0, 0.05), 2)
    names = sorted(set(images) if images is not None else set(truth.image) | set(detections.image))
    truth_by = {k: v for k, v in truth.groupby("image")}
    det_by = {k: v for k, v in detections.groupby("image")}
    rows = []
    for threshold in thresholds:
        n_truth = n_det = matched = 0
        for name in names:
            t = truth_by.get(name)
            d = det_by.get(name)
            t_boxes = box_array(t) if t is not None else np.zeros((0, 4))
            if d is not None:
                d = d[d.score >= threshold]
            d_boxes = box_array(d) if d is not None else np.zeros((0, 4))
            d_scores = d.score.to_numpy(float) if d is not None else np.zeros(0)
            match = match_image(t_boxes, d_boxes, d_scores, **rule)
            n_truth += len(t_boxes)
            n_det += len(d_boxes)
            matched += match.n_matched
        completeness = matched / n_truth if n_truth else float("nan")
        purity = matched / n_det if n_det else float("nan")
        f1 = 2 * matched / (n_truth + n_det) if n_truth + n_det else float("nan")
        rows.append(
            dict(
                threshold=float(threshold),
                completeness=completeness,
                purity=purity,
                f1=f1,
                n_truth=n_truth,
                n_detections=n_det,
                n_matched=matched,
            )
        )
    return pd.DataFrame(rows)


def coco_average_precision(truth, detections, images=None) -> dict:
    """COCO-style AP (torchmetrics + pycocotools), class-agnostic: a second opinion on the matching.

    Returns ``{"ap": AP@[.5:.95], "ap50": AP@.5, "ap_small": ...}``; the boxes are small, so
    most fall in COCO's "small" area range.
    """
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    names = sorted(set(images) if images is not None else set(truth.image) | set(detections.image))
    truth_by = {k: v for k, v in truth.groupby("image")}
    det_by = {k: v for k, v in detections.groupby("image")}
    preds, targets = [], []
    for name in names:
        d, t = det_by.get(name), truth_by.get(name)
        d_boxes = torch.tensor(box_array(d) if d is not None else np.zeros((0, 4)), dtype=torch.float32)
        preds.append(
            {
                "boxes": d_boxes,
                "scores": torch.tensor(d.score.to_numpy(float) if d is not None else [], dtype=torch.float32),
                "labels": torch.zeros(len(d_boxes), dtype=torch.int64),
            }
        )
        t_boxes = torch.tensor(box_array(t) if t is not None else np.zeros((0, 4)), dtype=torch.float32)
        targets.append({"boxes": t_boxes, "labels": torch.zeros(len(t_boxes), dtype=torch.int64)})
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.update(preds, targets)
    result = metric.compute()
    return {"ap": float(result["map"]), "ap50": float(result["map_50"]), "ap_small": float(result["map_small"])}


def plot_scores(table, path, title: str = "") -> None:
    """Completeness, purity and F1 against the score threshold, saved as an image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .atomic import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for column, style in (("completeness", "-"), ("purity", "--"), ("f1", ":")):
        ax.plot(table.threshold, table[column], style, lw=2, label=column)
    ax.set_xlabel("score threshold")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title or "completeness / purity vs threshold", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)


def evaluate(
    truth,
    detections,
    *,
    score_threshold: float | None = None,
    rule: str = MATCH_RULES[0],
    iou_threshold: float = DEFAULT_IOU,
    images=None,
) -> dict:
    """Score detections against truth: the one-call API behind ``napari-clumps evaluate``.

    ``truth`` and ``detections``: detections tables or CSV paths. ``images``: the image names
    to count; by default those of the truth CSV's images list (so an image with no clumps and
    no detections counts), else every image in either table. Returns ``by_threshold`` (the
    :func:`scores_table` over thresholds 0.05-0.95), ``at_threshold`` (its row at
    ``score_threshold``, default the paper's 0.3), ``coco`` (:func:`coco_average_precision`)
    and the settings used.
    """
    from .detections import labelled_image_names, read_detections, read_images_list
    from .model import PAPER_SCORE_THRESHOLD

    if score_threshold is None:
        score_threshold = PAPER_SCORE_THRESHOLD
    if images is None and not hasattr(truth, "columns"):
        images = labelled_image_names(read_images_list(truth))
    truth = truth if hasattr(truth, "columns") else read_detections(truth)
    detections = detections if hasattr(detections, "columns") else read_detections(detections)
    settings = {"rule": rule, "iou_threshold": iou_threshold}
    at = scores_table(truth, detections, thresholds=[score_threshold], images=images, **settings).iloc[0]
    return {
        **settings,
        "score_threshold": score_threshold,
        "by_threshold": scores_table(truth, detections, images=images, **settings),
        "at_threshold": {k: float(at[k]) for k in at.index},
        "coco": coco_average_precision(truth, detections, images),
    }
