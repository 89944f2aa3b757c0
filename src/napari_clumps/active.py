"""Active learning for the review queue: which galaxies a person should correct first.

A correction teaches the model most where the model is unsure of its own answer. Per image, two
signals, both counted in boxes so that they add up and read as counts (docs/active-learning.md):

* **uncertainty**: boxes whose score lies near the model's own threshold
  (``detector.score_threshold``), where one correction can move the decision. A box weighs 1 at
  the threshold and less the further its score is in log-odds, down to 0 at
  :data:`NEAR_THRESHOLD_LOGIT` from it (:func:`near_threshold_band`: 0.11-0.48 for a threshold of
  0.25).
* **disagreement**: the image is detected again mirrored left-right. The model was trained with
  flips (:func:`napari_clumps.training.augmentations`), so an answer it is sure of does not depend
  on them. The boxes of the two views are paired (:func:`napari_clumps.metrics.match_image`, IoU
  rule) and every pair whose two scores fall on different sides of the threshold (a box that one
  view finds and the other does not included) weighs the difference of its scores.

``priority = uncertainty + disagreement`` (strategy ``"combined"``, the default); the strategies
``"uncertainty"`` and ``"disagreement"`` use one term each, ``"random"`` a seeded shuffle (the
baseline of ``benchmarks/active_learning.py``). At most two forward passes per image (one for
``"uncertainty"``, none for ``"random"``). :func:`rank_for_review` ranks images,
:func:`rank_review_queue` the unreviewed images of a :class:`~napari_clumps.review.ReviewSession`;
each row says in ``reason`` why the image comes where it does.
"""

from __future__ import annotations

import math

import numpy as np

#: Ways of ordering images, the first the default (see the module docstring).
STRATEGIES = ("combined", "uncertainty", "disagreement", "random")
DEFAULT_STRATEGY = STRATEGIES[0]
#: How far (in log-odds) a score may be from the threshold and still count as near it: 1.0 is a
#: factor e (2.7) in the odds, wide enough to hold the scores one fine-tuning moves across the
#: threshold, narrow enough to leave out the boxes the model is sure of.
NEAR_THRESHOLD_LOGIT = 1.0
#: Images read and detected together: enough to fill the detector's batches, few enough that a
#: folder of thousands is never in memory at once.
IMAGES_PER_CHUNK = 8
#: The table's columns: the ranking, then the terms the priority is made of.
RANK_COLUMNS = [
    "rank",
    "image",
    "priority",
    "reason",
    "n_boxes",
    "n_near_threshold",
    "near_threshold_min",
    "near_threshold_max",
    "uncertainty",
    "n_disagreements",
    "disagreement",
    "error",
]
# log-odds of scores kept off 0 and 1, where they are infinite
_SCORE_EPS = 1e-6


def _logit(p):
    p = np.clip(np.asarray(p, float), _SCORE_EPS, 1 - _SCORE_EPS)
    return np.log(p / (1 - p))


def near_threshold_band(threshold: float) -> tuple[float, float]:
    """The scores that count as near ``threshold``: within :data:`NEAR_THRESHOLD_LOGIT` in log-odds."""
    centre = float(_logit(threshold))
    return tuple(1 / (1 + math.exp(-(centre + side * NEAR_THRESHOLD_LOGIT))) for side in (-1, 1))


def near_threshold_weight(scores, threshold: float) -> np.ndarray:
    """Per score, 1 at ``threshold`` falling linearly in log-odds to 0 at the edge of
    :func:`near_threshold_band` (0 beyond it)."""
    distance = np.abs(_logit(scores) - _logit(threshold))
    return np.clip(1 - distance / NEAR_THRESHOLD_LOGIT, 0, None)


def compare_views(original, flipped_back, threshold: float) -> dict:
    """The uncertainty and disagreement terms of one image (see the module docstring).

    ``original``: the image's detections (a detections table, every box the detector gives down to
    the bottom of :func:`near_threshold_band`); ``flipped_back``: those of its mirrored view with
    the boxes mapped back to the image (:func:`napari_clumps.pixels.flip_boxes_horizontally`), or
    None to leave out the disagreement (its terms are then NaN).
    """
    from .detections import box_array
    from .metrics import DEFAULT_IOU, match_image

    scores = original.score.to_numpy(float)
    weights = near_threshold_weight(scores, threshold)
    near = scores[weights > 0]
    terms = {
        "n_boxes": int((scores >= threshold).sum()),
        "n_near_threshold": len(near),
        "near_threshold_min": float(near.min()) if len(near) else math.nan,
        "near_threshold_max": float(near.max()) if len(near) else math.nan,
        "uncertainty": float(weights.sum()),
        "n_disagreements": math.nan,
        "disagreement": math.nan,
    }
    if flipped_back is None:
        return terms
    flipped_scores = flipped_back.score.to_numpy(float)
    match = match_image(
        box_array(original), box_array(flipped_back), flipped_scores, rule="iou", iou_threshold=DEFAULT_IOU
    )
    # Score pairs (original, flipped); a box one view misses scores 0 in it.
    pairs = [(scores[t] if t >= 0 else 0.0, s) for t, s in zip(match.detection_partner, flipped_scores)]
    pairs += [(s, 0.0) for s in scores[~match.truth_matched]]
    pairs = np.asarray(pairs, float).reshape(-1, 2)
    split = (pairs[:, 0] >= threshold) != (pairs[:, 1] >= threshold)
    terms["n_disagreements"] = int(split.sum())
    terms["disagreement"] = float(np.abs(pairs[split, 0] - pairs[split, 1]).sum())
    return terms


def priority_of(terms: dict, strategy: str = DEFAULT_STRATEGY) -> float:
    """An image's priority under ``strategy`` from its :func:`compare_views` terms."""
    if strategy == "uncertainty":
        return terms["uncertainty"]
    if strategy == "disagreement":
        return terms["disagreement"]
    if strategy == "combined":
        return terms["uncertainty"] + terms["disagreement"]
    raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def _boxes(n: int) -> str:
    return f"{n} box" if n == 1 else f"{n} boxes"


def explain(terms: dict, threshold: float, strategy: str = DEFAULT_STRATEGY) -> str:
    """The ``reason`` of an image's place: the numbers its priority under ``strategy`` comes from."""
    parts = []
    if strategy in ("combined", "uncertainty"):
        n = terms["n_near_threshold"]
        low, high = terms["near_threshold_min"], terms["near_threshold_max"]
        if n == 0:
            parts.append(f"no boxes near the threshold {threshold:.2f}")
        else:
            scores = f"{low:.2f}" if n == 1 else f"{low:.2f}-{high:.2f}"
            parts.append(
                f"{_boxes(n)} with {'score' if n == 1 else 'scores'} near the threshold {threshold:.2f} ({scores})"
            )
    if strategy in ("combined", "disagreement"):
        n = terms["n_disagreements"]
        parts.append(f"flipped view disagrees on {_boxes(n)}" if n else "flipped view agrees")
    return "; ".join(parts)


def _flipped(image):
    """The image mirrored left-right. Header and WCS are kept because the detector reads the PSF
    size from them, which a mirror does not change; the mirrored view's RA/Dec are never used."""
    from dataclasses import replace

    return replace(
        image,
        bands=np.ascontiguousarray(image.bands[..., ::-1]),
        composite=np.ascontiguousarray(image.composite[:, ::-1]),
    )


def _as_list(images) -> list:
    """One image, file or folder, or a list of them (as :func:`napari_clumps.inference.detect` takes)."""
    return list(images) if isinstance(images, (list, tuple)) else [images]


def iter_priorities(
    images,
    detector=None,
    *,
    names=None,
    strategy: str = DEFAULT_STRATEGY,
    device="auto",
    keep_off_host: bool = False,
    should_stop=None,
    **detection_options,
):
    """Yield per image, in order, a dict of its ``image`` name, :func:`compare_views` terms,
    ``priority``, ``reason`` and ``error`` (an image that cannot be read: priority NaN and why).

    ``images``: one image, file or folder, or a list of them; ``names`` as
    :func:`~napari_clumps.inference.iter_detections`; ``detector``
    anything :func:`~napari_clumps.model.get_detector` takes. Boxes off the host galaxy do not
    count unless ``keep_off_host`` (the review queue's detections leave them out too).
    ``detection_options`` go to :func:`~napari_clumps.inference.iter_detections` (``psf_fwhm``,
    ``batch_size``, ...). ``should_stop()`` is polled between batches. Not for ``"random"``, which
    needs no detections (:func:`rank_for_review`).
    """
    from .detections import BOX_COLUMNS
    from .inference import as_galaxy_image, expand_items, iter_detections
    from .io import ImageReadError
    from .model import get_detector
    from .pixels import flip_boxes_horizontally

    if strategy not in STRATEGIES or strategy == "random":
        raise ValueError(f"strategy {strategy!r}: iter_priorities takes one of {', '.join(STRATEGIES[:-1])}")
    images = _as_list(images)
    n_views = 1 if strategy == "uncertainty" else 2  # the mirrored view only where it counts
    detector = get_detector(detector, device)
    threshold = detector.score_threshold
    floor = near_threshold_band(threshold)[0]  # lower scores count for nothing
    items, names = expand_items(images, names)
    for start in range(0, len(items), IMAGES_PER_CHUNK):
        if should_stop is not None and should_stop():
            return
        chunk = []  # (name, image or None, error)
        for item, name in zip(items[start : start + IMAGES_PER_CHUNK], names[start : start + IMAGES_PER_CHUNK]):
            try:
                chunk.append((name, as_galaxy_image(item, name), ""))
            except (ImageReadError, ValueError) as error:
                chunk.append((name, None, str(error)))
        read = [(name, image) for name, image, _ in chunk if image is not None]
        views = [view for _, image in read for view in (image, _flipped(image))[:n_views]]
        results = list(
            iter_detections(
                views,
                detector,
                names=[name for name, _ in read for _ in range(n_views)],
                device=device,
                score_threshold=floor,
                keep_off_host=keep_off_host,
                should_stop=should_stop,
                **detection_options,
            )
        )
        by_image = iter(results[i : i + n_views] for i in range(0, len(results), n_views))
        for name, image, error in chunk:
            per_view = next(by_image, None) if image is not None else None
            if image is not None and (per_view is None or len(per_view) < n_views):
                return  # stopped part-way through the chunk
            error = error or next((r.error for r in per_view or () if r.error), "")
            if error:
                yield {"image": name, "priority": math.nan, "reason": f"not ranked: {error}", "error": error}
                continue
            flipped_back = None
            if n_views == 2:
                flipped_back = per_view[1].table.copy()
                flipped_back[BOX_COLUMNS] = flip_boxes_horizontally(flipped_back[BOX_COLUMNS], image.width)
            terms = compare_views(per_view[0].table, flipped_back, threshold)
            yield {
                "image": name,
                **terms,
                "priority": priority_of(terms, strategy),
                "reason": explain(terms, threshold, strategy),
                "error": "",
            }


def rank_for_review(
    images,
    detector=None,
    *,
    names=None,
    strategy: str = DEFAULT_STRATEGY,
    seed: int = 0,
    device="auto",
    keep_off_host: bool = False,
    **detection_options,
):
    """Rank images for review: a pandas DataFrame of :data:`RANK_COLUMNS`, one row per image,
    sorted by ``rank`` (1 = review first; highest ``priority`` first, ties in the order given,
    unreadable images last).

    Options as :func:`iter_priorities`; ``strategy`` one of :data:`STRATEGIES`. ``"random"``
    runs no detector: its priorities are uniform draws of ``numpy.random.default_rng(seed)``.
    """
    if strategy == "random":
        from .inference import expand_items

        _, names = expand_items(_as_list(images), names)
        draws = np.random.default_rng(seed).random(len(names))
        rows = [
            {"image": name, "priority": float(draw), "reason": f"random order (seed {seed})", "error": ""}
            for name, draw in zip(names, draws)
        ]
    else:
        rows = list(
            iter_priorities(
                images,
                detector,
                names=names,
                strategy=strategy,
                device=device,
                keep_off_host=keep_off_host,
                **detection_options,
            )
        )
    return ranking_table(rows)


def ranking_table(rows):
    """The rows of :func:`iter_priorities` (in the order given) as :func:`rank_for_review`'s table."""
    import pandas as pd

    table = pd.DataFrame(list(rows), columns=[c for c in RANK_COLUMNS if c != "rank"])
    table = table.sort_values("priority", ascending=False, kind="stable", na_position="last")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def rank_review_queue(session, detector=None, **options):
    """:func:`rank_for_review` of the images of a :class:`~napari_clumps.review.ReviewSession`
    that nobody has reviewed yet, by the names the session gives them (``session.index_of(name)``
    finds each)."""
    from .detections import REVIEWED

    waiting = [item for item in session.items if item.status != REVIEWED]
    return rank_for_review([item.path for item in waiting], detector, names=[item.name for item in waiting], **options)
