"""The review queue: go through a set of galaxy images, check or correct each one's boxes, and
never lose a correction.

A :class:`ReviewSession` holds, per image, its boxes (pixel-edge ``(x_min, y_min, x_max,
y_max)``, :mod:`napari_clumps.pixels`), their labels, scores and model ids, and whether a person
has reviewed it. **Every change is written at once** to the labels CSV, atomically, in the
detections format (:mod:`napari_clumps.detections`) with the images list carrying a
``review_status`` column, so that a crash loses nothing and ``napari-clumps train --labels``
takes the file as it is (it leaves unreviewed images out). Opening a session on an existing CSV
resumes it. No napari, no Qt: the review widget (``_review_widget``) is a view of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path

import numpy as np

from .detections import (
    BOX_COLUMNS,
    HAND_MODEL,
    IMAGES_COLUMNS,
    LABELS,
    REVIEW_RANK_COLUMN,
    REVIEW_REASON_COLUMN,
    REVIEW_STATUS_COLUMN,
    REVIEWED,
    UNREVIEWED,
    box_array,
    label_names,
)

#: Score of a box a person drew or kept (docs/contracts.md: 1 for hand labels).
HAND_SCORE = 1.0


@dataclass
class ImageReview:
    """One image of the queue: where it is, its boxes and whether it was reviewed."""

    name: str  # the CSV ``image`` (as :func:`napari_clumps.io.find_images` names it)
    path: Path
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: list = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    models: list = field(default_factory=list)
    status: str = UNREVIEWED
    width: int | None = None
    height: int | None = None
    wcs: object = None
    #: Place in an active-learning order (1 = review first) and why; None / "" when not ranked.
    rank: int | None = None
    reason: str = ""

    def copy(self) -> ImageReview:
        return replace(
            self, boxes=self.boxes.copy(), labels=list(self.labels), scores=self.scores.copy(), models=list(self.models)
        )

    @property
    def n_boxes(self) -> int:
        return len(self.boxes)

    def same_state(self, other: ImageReview) -> bool:
        """Whether ``other`` has the same boxes (labels, scores, model ids) and review status."""
        return (
            self.status == other.status
            and self.labels == other.labels
            and self.models == other.models
            and self.boxes.shape == other.boxes.shape
            and np.array_equal(self.boxes, other.boxes)
            and np.array_equal(self.scores, other.scores)
        )


class ReviewSession:
    """A review queue over ``images`` (files and/or folders) saved to ``labels_csv``.

    Box operations (:meth:`add_box`, :meth:`delete_box`, :meth:`set_label`, :meth:`accept`,
    :meth:`mark_no_clumps`) act on the :attr:`current` image; :meth:`set_boxes` on any.
    """

    def __init__(self, images, labels_csv):
        from .io import find_images

        self.labels_csv = Path(labels_csv)
        self.items = [ImageReview(name, Path(path)) for path, name in find_images(images)]
        if not self.items:
            raise ValueError(f"no images found in {images}")
        self._index = {item.name: i for i, item in enumerate(self.items)}
        self._undo: list[tuple[int, ImageReview]] = []
        self._radec_cache: dict[str, tuple] = {}
        # more images-list columns the CSV had (e.g. a simulation's PSF size): kept as they were
        self._listed_extras: dict[str, dict] = {}
        # rows of images this session was not given: written back untouched, never dropped
        self._other_rows = None
        self._other_images = None
        if self.labels_csv.exists():
            self._resume()
        unreviewed = [i for i in self.order if self.items[i].status != REVIEWED]
        self.current = unreviewed[0] if unreviewed else self.order[0]

    # ------------------------------------------------------------------ navigation

    @property
    def order(self) -> list[int]:
        """Item indices in the order of the queue: the images outside a ranking first (in folder
        order: reviewed before it was made), then the ranked ones by rank (:meth:`set_ranking`)."""
        ranks = [item.rank for item in self.items]
        return sorted(range(len(ranks)), key=lambda i: (ranks[i] is not None, ranks[i] or 0, i))

    def _step(self, steps: int) -> ImageReview:
        order = self.order
        position = order.index(self.current)
        return self.go_to(order[int(np.clip(position + steps, 0, len(order) - 1))])

    @property
    def item(self) -> ImageReview:
        return self.items[self.current]

    def __len__(self) -> int:
        return len(self.items)

    def go_to(self, index: int) -> ImageReview:
        self.current = int(np.clip(index, 0, len(self.items) - 1))
        return self.item

    def next(self) -> ImageReview:
        return self._step(1)

    def previous(self) -> ImageReview:
        return self._step(-1)

    def next_unreviewed(self) -> ImageReview:
        """The first unreviewed image after the current one in the queue's order (wrapping round),
        else the next one."""
        order = self.order
        position = order.index(self.current)
        for step in range(1, len(order) + 1):
            index = order[(position + step) % len(order)]
            if self.items[index].status != REVIEWED:
                return self.go_to(index)
        return self.next()

    def set_ranking(self, ranking) -> None:
        """Order the queue by an active-learning ranking (a table with ``image``, ``rank`` and
        ``reason``, as :func:`napari_clumps.active.rank_review_queue` gives) and save it; images not
        in it (the reviewed ones) come first, unranked. The current image stays; :meth:`next_unreviewed`
        then follows the ranking."""
        ranked = {row.image: (int(row.rank), str(row.reason)) for row in ranking.itertuples(index=False)}
        for item in self.items:
            item.rank, item.reason = ranked.get(item.name, (None, ""))
        self.save()

    @property
    def ranked(self) -> bool:
        return any(item.rank is not None for item in self.items)

    def reviewed_items(self) -> list[ImageReview]:
        """Copies of the reviewed images, safe to hand to a worker thread while the user goes on."""
        return [item.copy() for item in self.items if item.status == REVIEWED]

    @property
    def progress(self) -> tuple[int, int]:
        """(reviewed, total)."""
        return sum(item.status == REVIEWED for item in self.items), len(self.items)

    def index_of(self, image) -> int:
        """Index of an image given by index, CSV name or path."""
        if isinstance(image, (int, np.integer)):
            return int(image)
        if str(image) in self._index:
            return self._index[str(image)]
        for i, item in enumerate(self.items):
            if item.path == Path(image):
                return i
        raise KeyError(f"{image}: not in this review session")

    # ------------------------------------------------------------------ changes (each one saved)

    def set_boxes(self, image, boxes, labels=None, scores=HAND_SCORE, models=HAND_MODEL) -> None:
        """Replace an image's boxes, e.g. with the model's detections or the boxes as edited.

        ``boxes``: a detections table (labels, scores and models from its columns), or ``(N, 4)``
        edge boxes with ``labels`` (default clump), ``scores`` and ``models`` (one or one per box).
        The review status stays as it was.
        """
        index = self.index_of(image)
        if hasattr(boxes, "columns"):
            table = boxes
            boxes, labels, scores = box_array(table), list(table.label), table.score.to_numpy(float)
            models = list(table.model) if "model" in table else HAND_MODEL
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        n = len(boxes)
        labels = label_names(labels) if labels is not None else [LABELS[0]] * n
        models = [str(models)] * n if isinstance(models, str) else [str(m) for m in models]
        if len(labels) != n or len(models) != n:
            raise ValueError(f"{n} boxes but {len(labels)} labels and {len(models)} model ids")
        self._change(
            index,
            boxes=boxes,
            labels=labels,
            scores=np.broadcast_to(np.asarray(scores, float), (n,)).copy(),
            models=models,
        )

    def add_box(self, x: float, y: float, side: float, label: str = LABELS[0]) -> int:
        """Add a square hand box of ``side`` px centred on edge point ``(x, y)``; returns its index."""
        item = self.item
        half = side / 2
        box = np.array([[x - half, y - half, x + half, y + half]])
        self._change(
            self.current,
            boxes=np.vstack([item.boxes, box]),
            labels=[*item.labels, *label_names(label)],
            scores=np.append(item.scores, HAND_SCORE),
            models=[*item.models, HAND_MODEL],
        )
        return self.item.n_boxes - 1

    def delete_box(self, index: int) -> None:
        item = self.item
        keep = np.arange(item.n_boxes) != self._box_index(index)
        self._change(
            self.current,
            boxes=item.boxes[keep],
            labels=[v for v, k in zip(item.labels, keep) if k],
            scores=item.scores[keep],
            models=[v for v, k in zip(item.models, keep) if k],
        )

    def set_label(self, index: int, label: str) -> None:
        labels = list(self.item.labels)
        labels[self._box_index(index)] = label_names(label)[0]
        self._change(self.current, labels=labels)

    def toggle_label(self, index) -> list[str]:
        """clump <-> odd_clump of one box or several (one change, one undo step); returns the new labels."""
        indices = [index] if isinstance(index, (int, np.integer)) else list(index)
        labels = list(self.item.labels)
        for i in map(self._box_index, indices):
            labels[i] = LABELS[1 - LABELS.index(labels[i])]
        self._change(self.current, labels=labels)
        return [labels[i] for i in indices]

    def accept(self) -> None:
        """The current image is reviewed, with its boxes as they are (model boxes keep their scores)."""
        self._change(self.current, status=REVIEWED)

    def mark_no_clumps(self) -> None:
        """The current image is reviewed and has no clumps."""
        self._change(self.current, boxes=np.zeros((0, 4)), labels=[], scores=np.zeros(0), models=[], status=REVIEWED)

    def undo(self) -> bool:
        """Revert the last change (of any kind; several levels), save, and go to its image.
        Returns False when there is nothing to undo."""
        if not self._undo:
            return False
        index, before = self._undo.pop()
        self.items[index] = before
        self.current = index
        self.save()
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def _change(self, index: int, **values) -> None:
        before = self.items[index]
        after = replace(before.copy(), **values)
        if before.same_state(after):
            return  # e.g. a layer reporting the same edit twice: nothing to save or undo
        self._undo.append((index, before))
        self.items[index] = after
        self.save()

    def _box_index(self, index: int) -> int:
        if not 0 <= index < self.item.n_boxes:
            raise IndexError(f"{self.item.name} has {self.item.n_boxes} boxes, no box {index}")
        return int(index)

    # ------------------------------------------------------------------ what the images are like

    def describe_image(self, image, galaxy) -> None:
        """Record an image's size and WCS once it is read (:class:`~napari_clumps.io.GalaxyImage`):
        the CSV gets RA/Dec and the images list the size from the next save on."""
        item = self.items[self.index_of(image)]
        item.width, item.height, item.wcs = galaxy.width, galaxy.height, galaxy.wcs

    def typical_box_side(self, image=None, galaxy=None) -> float:
        """Side (px) of a new box on an image: the median side of its boxes; else the simulator's
        box side per PSF FWHM times the PSF FWHM from the header (``galaxy``,
        :func:`napari_clumps.scale.header_psf_fwhm`); else the simulator's median box side, scaled
        to the image's width."""
        from .scale import header_psf_fwhm
        from .simulate import BOX_SIDE_PER_FWHM, SimulationSettings

        item = self.items[self.current if image is None else self.index_of(image)]
        if item.n_boxes:
            sides = np.concatenate([item.boxes[:, 2] - item.boxes[:, 0], item.boxes[:, 3] - item.boxes[:, 1]])
            return float(np.median(sides))
        fwhm = header_psf_fwhm(getattr(galaxy, "header", None), getattr(galaxy, "wcs", None))
        if fwhm:
            return BOX_SIDE_PER_FWHM * fwhm
        settings = SimulationSettings()
        width = getattr(galaxy, "width", None) or item.width or settings.size
        return settings.box_side_median * width / settings.size

    # ------------------------------------------------------------------ the CSV

    def tables(self):
        """(detections table, images list) of the session as it is now, as :meth:`save` writes them."""
        import pandas as pd

        from .detections import detections_frame, images_row

        # one table for all images at once: a save per key press must stay fast for thousands of images
        ranked = self.ranked
        counts = [item.n_boxes for item in self.items]
        boxes = np.concatenate([item.boxes.reshape(-1, 4) for item in self.items])
        table = detections_frame(
            "",
            boxes,
            list(chain.from_iterable(item.labels for item in self.items)),
            np.concatenate([item.scores for item in self.items]),
            model=list(chain.from_iterable(item.models for item in self.items)),
        )
        table["image"] = np.repeat([item.name for item in self.items], counts)
        starts = np.cumsum([0, *counts])
        for i, item in enumerate(self.items):
            if item.wcs is not None and item.n_boxes:
                rows = slice(starts[i], starts[i + 1])
                table.loc[table.index[rows], ["ra", "dec"]] = np.column_stack(self._radec(item))
        frames = [table]
        images = pd.DataFrame(
            [
                {
                    **self._listed_extras.get(item.name, {}),
                    **images_row(item.name, item.n_boxes, item.width, item.height),
                    REVIEW_STATUS_COLUMN: item.status,
                    **({REVIEW_RANK_COLUMN: item.rank, REVIEW_REASON_COLUMN: item.reason} if ranked else {}),
                }
                for item in self.items
            ]
        )
        if ranked:  # whole numbers, empty for the unranked, not floats
            images[REVIEW_RANK_COLUMN] = images[REVIEW_RANK_COLUMN].astype("Int64")
        if self._other_rows is not None and len(self._other_rows):
            frames.append(self._other_rows)
        if self._other_images is not None and len(self._other_images):
            images = pd.concat([images, self._other_images], ignore_index=True)
        frames = [frame for frame in frames if len(frame)]
        table = pd.concat(frames, ignore_index=True) if frames else detections_frame("", np.zeros((0, 4)), [], [])
        return table, images

    def _radec(self, item):
        """RA/Dec of an image's box centres, recomputed only when its boxes change."""
        from .pixels import pixel_to_radec

        key = (item.boxes.tobytes(), id(item.wcs))
        cached = self._radec_cache.get(item.name)
        if cached is None or cached[0] != key:
            centres = (item.boxes[:, :2] + item.boxes[:, 2:]) / 2
            cached = self._radec_cache[item.name] = (key, pixel_to_radec(item.wcs, centres[:, 0], centres[:, 1]))
        return cached[1]

    def save(self) -> Path:
        """Write the labels CSV and its images list (atomic renames: a crash leaves the old file or the new one)."""
        from .detections import write_detections

        table, images = self.tables()
        return write_detections(table, self.labels_csv, images)

    def _resume(self) -> None:
        """Take boxes and statuses back from the labels CSV (a session that was left or crashed)."""
        from .detections import read_detections, read_images_list

        table = read_detections(self.labels_csv)
        listed = read_images_list(self.labels_csv)
        mine = table.image.isin(self._index)
        for name, rows in table[mine].groupby("image", sort=False):
            item = self.items[self._index[name]]
            item.boxes = rows[BOX_COLUMNS].to_numpy(float)
            item.labels, item.scores, item.models = list(rows.label), rows.score.to_numpy(float), list(rows.model)
        self._other_rows = table[~mine].reset_index(drop=True)
        if listed is None:
            return
        listed_mine = listed.image.isin(self._index)
        own = {REVIEW_STATUS_COLUMN, REVIEW_RANK_COLUMN, REVIEW_REASON_COLUMN}
        extras = [c for c in listed.columns if c not in IMAGES_COLUMNS and c not in own]
        self._listed_extras = {row["image"]: row for row in listed[listed_mine][["image", *extras]].to_dict("records")}
        for row in listed[listed_mine].itertuples(index=False):
            item = self.items[self._index[row.image]]
            status = getattr(row, REVIEW_STATUS_COLUMN, UNREVIEWED)
            # a plain detections/labels CSV (no review column) lists processed images, not reviewed ones
            item.status = status if status in (UNREVIEWED, REVIEWED) else UNREVIEWED
            item.width, item.height = _int_or_none(row.width), _int_or_none(row.height)
            item.rank = _int_or_none(getattr(row, REVIEW_RANK_COLUMN, None))
            reason = getattr(row, REVIEW_REASON_COLUMN, "")
            item.reason = "" if item.rank is None or not isinstance(reason, str) else reason
        self._other_images = listed[~listed_mine].reset_index(drop=True)


def training_images(reviews: list[ImageReview]):
    """Reviewed images as training data: ``(labelled images, notes)``, each image read from its
    file and its boxes cleaned as :func:`napari_clumps.training.load_labelled_images` does for a
    labels CSV (so the queue and ``napari-clumps train --labels`` train on the same thing)."""
    from .detections import CLASS_NAMES
    from .io import read_image
    from .training import LabelledImage, clean_boxes

    labelled, notes = [], []
    for review in reviews:
        image = read_image(review.path)
        labels = [CLASS_NAMES.index(label) for label in review.labels]
        boxes, classes, image_notes = clean_boxes(review.boxes, labels, image.width, image.height, review.name)
        notes.extend(image_notes)
        labelled.append(LabelledImage(image, boxes, classes, review.name))
    return labelled, notes


def _int_or_none(value):
    import pandas as pd

    return None if value is None or pd.isna(value) else int(value)
