"""The detections table: the schema of the CSV contract (docs/contracts.md), in one place.

Columns, in this order (more may follow)::

    image,label,score,x_min,y_min,x_max,y_max,x_center,y_center,ra,dec,model

Boxes are 0-based pixel-edge coordinates (:mod:`napari_clumps.pixels`); ``ra``/``dec`` are
ICRS degrees of the box centre, empty without a celestial WCS; ``label`` is ``clump`` or
``odd_clump``; ``score`` is 0-1 (1 for hand labels and truth).

Every CSV is written with a companion *images list*, ``<name>.images.csv`` next to
``<name>.csv``: one row per image that was processed (``image, status, n_detections, width,
height, error`` and optional extras), so that an image with no clumps (a row with
``n_detections = 0``) differs from one that was not processed or failed (``status = failed``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: A box, pixel-edge convention (:mod:`napari_clumps.pixels`), as torchvision orders it.
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
COLUMNS = ["image", "label", "score", *BOX_COLUMNS, "x_center", "y_center", "ra", "dec", "model"]
#: Columns the detector adds after the contract's own (:mod:`napari_clumps.host`): the
#: detection's elliptical distance from the host galaxy's centre in units of the host's
#: semi-major axis, and whether it lies on the host (empty when no host was found).
HOST_COLUMNS = ["host_distance", "on_host"]
#: Class names by detector class index (0 is background).
CLASS_NAMES = ("background", "clump", "odd_clump")
LABELS = CLASS_NAMES[1:]
#: Box colours by class, wherever boxes are drawn (napari layers, PNG pictures).
CLASS_COLOURS = {"clump": "#00e5ff", "odd_clump": "#ff9f1c"}
#: ``model`` of boxes drawn by hand (score 1).
HAND_MODEL = "hand"
# Written precision: 1e-4 px, 1e-8 deg (0.04 mas), scores to 1e-5.
_DECIMALS = {
    "score": 5,
    **dict.fromkeys(BOX_COLUMNS, 4),
    "x_center": 4,
    "y_center": 4,
    "ra": 8,
    "dec": 8,
    "host_distance": 4,
}
IMAGES_COLUMNS = ["image", "status", "n_detections", "width", "height", "error"]
#: Extra images-list column of a labels CSV made in the review queue (:mod:`napari_clumps.review`):
#: whether a person has checked the image's boxes. Only reviewed images are labels.
REVIEW_STATUS_COLUMN = "review_status"
UNREVIEWED, REVIEWED = "unreviewed", "reviewed"
REVIEW_STATUSES = (UNREVIEWED, REVIEWED)
#: Extra images-list columns of a review queue ordered by active learning (:mod:`napari_clumps.active`):
#: the image's place in the order (1 = review first; empty for images outside the ranking) and why.
REVIEW_RANK_COLUMN, REVIEW_REASON_COLUMN = "review_rank", "review_reason"


def box_array(table) -> np.ndarray:
    """The boxes of a detections table as an ``(N, 4)`` float array."""
    return table[BOX_COLUMNS].to_numpy(float).reshape(-1, 4)


def images_row(image: str, n_detections: int = 0, width=None, height=None, error: str = "") -> dict:
    """One row of an images list: an image processed (``ok``) or ``failed`` with its ``error``."""
    return {
        "image": str(image),
        "status": "failed" if error else "ok",
        "n_detections": 0 if error else n_detections,
        "width": width,
        "height": height,
        "error": error,
    }


class DetectionsFileError(ValueError):
    """A detections/labels CSV that breaks the contract; ``str()`` names the file."""


def label_names(labels) -> list[str]:
    """Class names from class indices (1, 2) or names, mixed freely."""
    labels = [labels] if isinstance(labels, (str, int, np.integer)) else list(labels)
    names = [label if isinstance(label, str) else CLASS_NAMES[int(label)] for label in labels]
    unknown = sorted(set(names) - set(LABELS))
    if unknown:
        raise ValueError(f"unknown class label(s) {unknown}; expected {', '.join(LABELS)}")
    return names


def detections_frame(image: str, boxes, labels, scores, wcs=None, model="", **extra):
    """A detections table for one image from ``(N, 4)`` edge boxes and per-box labels/scores.

    ``scores`` and ``model`` are one value for all boxes or one per box.
    """
    import pandas as pd

    from .pixels import pixel_to_radec

    boxes = np.asarray(boxes, float).reshape(-1, 4)
    n = len(boxes)
    x_center = (boxes[:, 0] + boxes[:, 2]) / 2
    y_center = (boxes[:, 1] + boxes[:, 3]) / 2
    ra, dec = pixel_to_radec(wcs, x_center, y_center) if n else (np.empty(0), np.empty(0))
    labels = label_names(labels) if n else []
    table = pd.DataFrame(
        {
            "image": [str(image)] * n,
            "label": labels,
            "score": np.broadcast_to(np.asarray(scores, float), (n,)).copy(),
            **dict(zip(BOX_COLUMNS, boxes.T)),
            "x_center": x_center,
            "y_center": y_center,
            "ra": ra,
            "dec": dec,
            "model": [str(model)] * n if isinstance(model, str) else [str(m) for m in model],
        }
    )
    for name, values in extra.items():
        table[name] = values
    return table


def images_list_path(path) -> Path:
    """``detections.csv`` -> ``detections.images.csv``."""
    path = Path(path)
    stem = path.name[:-4] if path.name.lower().endswith(".csv") else path.name
    return path.with_name(f"{stem}.images.csv")


def write_detections(table, path, images=None) -> Path:
    """Write the table (and the images list, if given) atomically; returns ``path``."""
    from .atomic import atomic_path

    path = Path(path)
    table = table[COLUMNS + [c for c in table.columns if c not in COLUMNS]].round(_DECIMALS)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    if images is not None:
        images = images.copy()
        for column in IMAGES_COLUMNS:
            if column not in images:
                images[column] = "" if column == "error" else np.nan
        images = images[IMAGES_COLUMNS + [c for c in images.columns if c not in IMAGES_COLUMNS]]
        images = images.astype({"n_detections": "Int64", "width": "Int64", "height": "Int64"})
        with atomic_path(images_list_path(path)) as tmp:
            images.to_csv(tmp, index=False)
    return path


def read_detections(path):
    """Read a detections / labels CSV, checking the contract. Raises :class:`DetectionsFileError`."""
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"image": str, "label": str, "model": str}, keep_default_na=True)
    except FileNotFoundError:
        raise DetectionsFileError(f"{path}: no such file") from None
    except Exception as error:
        raise DetectionsFileError(f"{path}: not a readable CSV ({type(error).__name__})") from error
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DetectionsFileError(f"{path}: missing columns {', '.join(missing)}")
    bad = ~table["label"].isin(LABELS)
    if bad.any():
        raise DetectionsFileError(
            f"{path}: line {int(np.flatnonzero(bad)[0]) + 2}: label {table['label'][bad].iloc[0]!r} "
            f"is not one of {', '.join(LABELS)}"
        )
    table["model"] = table["model"].fillna("")
    return table


def read_images_list(path):
    """The images list next to a detections CSV, or None when there is none."""
    import pandas as pd

    companion = images_list_path(path)
    return pd.read_csv(companion, dtype={"image": str}) if companion.exists() else None


def labelled_image_names(images_list) -> list[str] | None:
    """The images of an images list that count as labelled: all of them, except in a review
    queue's list (:data:`REVIEW_STATUS_COLUMN`) the ones nobody has reviewed yet. None when
    there is no images list."""
    if images_list is None:
        return None
    if REVIEW_STATUS_COLUMN in images_list:
        images_list = images_list[images_list[REVIEW_STATUS_COLUMN] == REVIEWED]
    return list(images_list["image"])
