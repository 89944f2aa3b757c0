"""Training and fine-tuning the detector on images with boxes (no napari).

* :func:`load_labelled_images` pairs images with a labels CSV (the detections format, docs/contracts.md); every image
  given counts as fully labelled, so one with no rows is a negative.
* :func:`clean_boxes` repairs or drops hand-drawn boxes (inverted corners, partly outside,
  zero size) and says what it did.
* :func:`fine_tune` is :func:`train` with validation that holds for a user's few reviewed images
  (k-fold cross-validation below :data:`CROSS_VALIDATION_BELOW` images, a calibrated threshold).
* :func:`train` fine-tunes a :class:`~napari_clumps.model.Detector`: AdamW with a one-cycle
  schedule and gradient clipping, flips and 90-degree rotations (torchvision transforms.v2 with
  tv_tensors, box-aware) and optional scale jitter, a validation split with early stopping on
  F1, a callback each step and epoch, and cancelling within one step.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detections import CLASS_NAMES, box_array

log = logging.getLogger(__name__)

#: Boxes narrower than this (pixels) after clipping to the image are dropped.
MIN_BOX_SIDE = 1.0


class TrainingError(ValueError):
    """Training data or options that cannot work, or a training that failed (the loss became NaN,
    out of memory even one image at a time); the message says which and why, and for a failed
    training that the model file asked for is unchanged and where the best epoch so far is."""

    #: The partial model file holding the best epoch so far (None: no epoch finished).
    checkpoint = None


class TrainingCancelled(Exception):
    """Raised inside :func:`train` when ``should_stop()`` turns true; says what was kept."""

    checkpoint = None


def partial_path(out) -> Path:
    """Where :func:`train` keeps the best epoch so far while it trains for ``out``:
    ``<stem>.partial.safetensors`` beside it (``out`` itself is written once, at the end)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.partial{out.suffix or '.safetensors'}")


def _stopped(error, *, part: str = "", out=None, checkpoint=None, saved: dict | None = None):
    """``error`` again (its type), its message followed by what happened to the files."""
    notes = [f"{error} ({part})" if part else str(error)]
    if out is not None:
        notes.append(f"{out} is unchanged" if Path(out).exists() else f"nothing was written to {out}")
    kept = getattr(error, "checkpoint", None)
    if checkpoint is not None:
        if saved is not None:
            f1 = saved.get("val_f1")
            score = "" if f1 is None else f", validation F1 {f1:.3f}"
            notes.append(f"the best epoch so far (epoch {saved['epoch']}{score}) is in {checkpoint}")
            kept = checkpoint
        else:
            notes.append("no epoch of this run finished, so it saved no partial model")
    new = type(error)("; ".join(notes))
    new.checkpoint = kept
    return new


@dataclass
class LabelledImage:
    """An image with its boxes (edge convention) and class indices (1 clump, 2 odd clump)."""

    image: object  # GalaxyImage
    boxes: np.ndarray
    labels: np.ndarray
    name: str = ""


def clean_boxes(boxes, labels, width: int, height: int, name: str = "") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Order corners, clip to the image, drop boxes with a side under :data:`MIN_BOX_SIDE`.

    Returns the cleaned boxes, their labels and one message per repaired or dropped box.
    """
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    labels = np.asarray(labels, int).reshape(-1)
    notes = []
    fixed = np.column_stack(
        [
            np.minimum(boxes[:, 0], boxes[:, 2]),
            np.minimum(boxes[:, 1], boxes[:, 3]),
            np.maximum(boxes[:, 0], boxes[:, 2]),
            np.maximum(boxes[:, 1], boxes[:, 3]),
        ]
    )
    for i in np.flatnonzero((fixed != boxes).any(axis=1)):
        notes.append(f"{name}: box {i} had inverted corners; reordered")
    clipped = fixed.copy()
    clipped[:, [0, 2]] = np.clip(fixed[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(fixed[:, [1, 3]], 0, height)
    for i in np.flatnonzero((clipped != fixed).any(axis=1)):
        notes.append(f"{name}: box {i} reached outside the {width}x{height} image; clipped")
    finite = np.isfinite(clipped).all(axis=1)
    big_enough = (
        finite & ((clipped[:, 2] - clipped[:, 0]) >= MIN_BOX_SIDE) & ((clipped[:, 3] - clipped[:, 1]) >= MIN_BOX_SIDE)
    )
    for i in np.flatnonzero(~big_enough):
        notes.append(f"{name}: box {i} is smaller than {MIN_BOX_SIDE:g} px (or outside the image); dropped")
    return clipped[big_enough], labels[big_enough], notes


def load_labelled_images(
    image_paths, labels_csv, *, strict_names: bool = True
) -> tuple[list[LabelledImage], list[str]]:
    """Pair images with the rows of a labels CSV (matched on the ``image`` column).

    The CSV ``image`` may be the path as given, the path relative to a folder given, or the file
    name. Returns the labelled images and the cleaning notes. Rows naming no given image raise
    when ``strict_names``.
    """
    from .detections import labelled_image_names, read_detections, read_images_list
    from .io import find_images, read_image

    table = read_detections(labels_csv)
    found = find_images(image_paths)
    if not found:
        raise TrainingError("no images given")
    listed = read_images_list(labels_csv)
    skipped_notes = []
    if listed is not None and len(labelled_image_names(listed)) < len(listed):
        # a review queue's CSV: images nobody has reviewed yet are not labels (not even "no clumps")
        reviewed = set(labelled_image_names(listed))
        unreviewed = set(listed.image) - reviewed
        table = table[~table.image.isin(unreviewed)]
        kept = [(path, name) for path, name in found if not {name, Path(name).name, str(path)} & unreviewed]
        skipped_notes.append(f"{labels_csv}: {len(found) - len(kept)} image(s) not reviewed yet, left out")
        found = kept
        if not found:
            raise TrainingError(f"{labels_csv}: none of the images given has been reviewed")
    by_key = {}
    for path, name in found:
        for key in {name, Path(name).name, str(path)}:
            by_key.setdefault(key, (path, name))
    unknown = sorted(set(table.image) - set(by_key))
    if unknown and strict_names:
        raise TrainingError(
            f"{labels_csv}: {len(unknown)} labelled image(s) are not among the images given, e.g. {unknown[0]}"
        )
    rows_by_name = {}
    for image_name, rows in table.groupby("image"):
        if image_name in by_key:
            rows_by_name.setdefault(by_key[image_name][1], []).append(rows)
    labelled, notes = [], skipped_notes
    for path, name in found:
        image = read_image(path)
        rows = rows_by_name.get(name)
        if rows:
            import pandas as pd

            rows = pd.concat(rows)
            boxes = box_array(rows)
            labels = np.array([CLASS_NAMES.index(v) for v in rows.label])
        else:
            boxes, labels = np.zeros((0, 4)), np.zeros(0, int)
        boxes, labels, image_notes = clean_boxes(boxes, labels, image.width, image.height, name)
        notes.extend(image_notes)
        labelled.append(LabelledImage(image, boxes, labels, name))
    return labelled, notes


# ----------------------------------------------------------------------------- data


def augmentations(scale_jitter: float = 0.0):
    """Flips and 90-degree rotations (a galaxy has no preferred orientation), optional scale jitter."""
    from torchvision.transforms import v2

    steps = [
        v2.RandomHorizontalFlip(0.5),
        v2.RandomVerticalFlip(0.5),
        v2.RandomChoice([v2.Identity(), v2.RandomRotation((90, 90), expand=True)]),
    ]
    if scale_jitter > 0:
        steps.append(v2.RandomAffine(degrees=0, scale=(1 - scale_jitter, 1 + scale_jitter)))
    steps.append(v2.SanitizeBoundingBoxes(min_size=MIN_BOX_SIDE))
    return v2.Compose(steps)


class _Dataset:
    """Torch-style dataset of (image tensor, target) with box-aware augmentation."""

    def __init__(self, items: list[LabelledImage], in_chans: int, transform=None):
        self.items, self.in_chans, self.transform = items, in_chans, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        import torch
        from torchvision import tv_tensors

        from .inference import image_tensor

        item = self.items[index]
        image = tv_tensors.Image(image_tensor(item.image, self.in_chans))
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(item.boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=tuple(image.shape[-2:]),
        )
        target = {"boxes": boxes, "labels": torch.as_tensor(item.labels, dtype=torch.int64).reshape(-1)}
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor).reshape(-1, 4),
            "labels": target["labels"],
        }


def _collate(batch):
    return tuple(zip(*batch))


# ----------------------------------------------------------------------------- training


@dataclass
class TrainingOptions:
    epochs: int = 10
    learning_rate: float = 3e-4
    weight_decay: float = 5e-5
    batch_size: int = 4
    #: Backbone stages to train, counted from the deepest; None trains all (from scratch).
    #: 0 freezes the encoder, as in Zoobot fine-tuning.
    trainable_blocks: int | None = 0
    val_fraction: float = 0.2
    #: Stop after this many epochs without a better validation F1 (0: never).
    patience: int = 0
    scale_jitter: float = 0.0
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    #: Validation score threshold; None: the threshold with the best F1, which also becomes the
    #: model's recommended threshold.
    val_score_threshold: float | None = None
    num_workers: int = 0


@dataclass
class TrainingProgress:
    """What the callback receives: ``kind`` is "step" or "epoch"."""

    kind: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    seconds: float
    val_f1: float | None = None
    val_completeness: float | None = None
    val_purity: float | None = None
    history: list = field(default_factory=list)
    #: Which training of :func:`fine_tune` this is ("cross-validation fold 2 of 3", "final model");
    #: empty for a single training.
    part: str = ""
    #: For ``kind`` "note": what the trainer had to do, for the user (e.g. fewer images at a time
    #: after running out of GPU memory).
    note: str = ""


def set_trainable_blocks(network, trainable_blocks: int | None) -> None:
    """Freeze the encoder but its last ``trainable_blocks`` stages (None: train everything)."""
    for p in network.parameters():
        p.requires_grad_(True)
    if trainable_blocks is None:
        return
    body = network.backbone.body
    for p in body.parameters():
        p.requires_grad_(False)
    if trainable_blocks <= 0:
        return
    stages = _encoder_stages(body)
    for stage in stages[-trainable_blocks:]:
        for p in stage.parameters():
            p.requires_grad_(True)


def _encoder_stages(body):
    for attribute in ("stages", "blocks"):  # convnext/maxvit, efficientnet
        if hasattr(body, attribute):
            return list(getattr(body, attribute))
    names = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(body, n)]  # resnet
    if names:
        return [getattr(body, n) for n in names]
    raise TrainingError(f"cannot find the stages of a {type(body).__name__} encoder")


#: Fewer images than this are all used for training: a validation split of them would say nothing.
MIN_VALIDATION_IMAGES = 5


def split_train_val(items, val_fraction: float, seed: int):
    if val_fraction <= 0 or len(items) < MIN_VALIDATION_IMAGES:
        return list(items), []
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, int(round(val_fraction * len(items))))
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def evaluate_items(detector, items: list[LabelledImage], score_threshold: float | None = None, device="auto") -> dict:
    """Completeness, purity and F1 of ``detector`` on labelled images (see :mod:`napari_clumps.metrics`).

    At ``score_threshold``; with None, at the threshold (0.05-0.95) that gives the best F1, which
    is returned as ``threshold``.
    """
    floor = _SCORE_FLOOR if score_threshold is None else score_threshold
    return _best_scores(items, _found_table(detector, items, floor, device), score_threshold)


#: Lowest score kept when a threshold is to be chosen (the lowest threshold tried by scores_table).
_SCORE_FLOOR = 0.05


def _item_names(items) -> list[str]:
    return [it.name or f"image_{i}" for i, it in enumerate(items)]


def _found_table(detector, items: list[LabelledImage], score_floor: float, device="auto"):
    """The detections table of ``detector`` on ``items`` at scores >= ``score_floor``."""
    import pandas as pd

    from .inference import iter_detections

    images, names = [it.image for it in items], _item_names(items)
    results = iter_detections(images, detector, names=names, device=device, score_threshold=score_floor)
    return pd.concat([r.table for r in results])


def _best_scores(items: list[LabelledImage], found, score_threshold: float | None = None) -> dict:
    """Scores of a detections table against ``items``' boxes: at ``score_threshold``, or at the
    threshold with the best F1 (None)."""
    import pandas as pd

    from .detections import detections_frame
    from .metrics import scores_table

    names = _item_names(items)
    truth = pd.concat([detections_frame(n, it.boxes, it.labels, 1.0) for n, it in zip(names, items)])
    table = scores_table(truth, found, thresholds=None if score_threshold is None else [score_threshold], images=names)
    row = table.loc[table.f1.fillna(-1).idxmax()]
    keys = ("threshold", "completeness", "purity", "f1", "n_truth", "n_detections")
    return {k: float(row[k]) for k in keys}


def train(
    detector,
    items: list[LabelledImage],
    options: TrainingOptions | None = None,
    *,
    out=None,
    callback=None,
    should_stop=None,
    data_description: str = "",
    checkpoint=None,
):
    """Fine-tune a copy of ``detector`` on ``items``; returns the trained
    :class:`~napari_clumps.model.Detector` (the detector given is left as it was).

    ``out``: the model file to write, once, atomically, when the training has finished; until
    then it stays as it was, byte for byte (it may be the user's previous model). Each epoch that
    improves validation F1 (each epoch without validation) is written to ``checkpoint``, by default
    :func:`partial_path` of ``out``, which is removed once ``out`` is written. On cancel
    (``should_stop()`` true, polled every step: :class:`TrainingCancelled`) and on a failed
    training (a NaN loss, out of memory even one image at a time: :class:`TrainingError`) the
    message says that ``out`` is unchanged and where the best epoch so far is.
    """
    import torch

    from .model import Detector, save_model, select_device

    options = options or TrainingOptions()
    if not items:
        raise TrainingError("no training images")
    if options.epochs < 1 or options.batch_size < 1:
        raise TrainingError("epochs and batch size must be at least 1")
    torch.manual_seed(options.seed)
    device = select_device(options.device)
    network = copy.deepcopy(detector.network).to(device)
    set_trainable_blocks(network, options.trainable_blocks)
    train_items, val_items = split_train_val(items, options.val_fraction, options.seed)
    loader = _loader(train_items, detector.config.in_chans, options)
    optimisation = _Optimisation(network, options, device, total_steps=options.epochs * len(loader))
    best = _BestEpoch()
    history, start = [], time.perf_counter()
    # what is being trained is no longer an untrained architecture: validation may run it
    provenance = {k: v for k, v in detector.provenance.items() if k != "untrained"}

    def progress(kind, epoch, step, loss, record=None, note=""):
        if callback is not None:
            record = record or {}
            callback(
                TrainingProgress(
                    kind,
                    epoch,
                    options.epochs,
                    step,
                    len(loader),
                    loss,
                    time.perf_counter() - start,
                    record.get("val_f1"),
                    record.get("val_completeness"),
                    record.get("val_purity"),
                    history=history,
                    note=note,
                )
            )

    if checkpoint is None and out is not None:
        checkpoint = partial_path(out)
    saved = None  # the record of the epoch in ``checkpoint``, once one is written
    epoch = 0

    def say(note: str) -> None:
        log.warning("%s", note)
        progress("note", epoch, 0, math.nan, note=note)

    try:
        for epoch in range(1, options.epochs + 1):
            network.train()
            losses = []
            for step, (images, targets) in enumerate(loader, start=1):
                if should_stop is not None and should_stop():
                    raise TrainingCancelled(f"cancelled in epoch {epoch}, step {step}")
                losses.append(optimisation.step(images, targets, epoch, say))
                progress("step", epoch, step, losses[-1])
            network.eval()
            trained = Detector(network, detector.config, provenance, detector.source)
            record = {
                "epoch": epoch,
                "loss": float(np.mean(losses)) if losses else float("nan"),
                "seconds": round(time.perf_counter() - start, 2),
            }
            if val_items:
                metrics = evaluate_items(trained, val_items, options.val_score_threshold, device=str(device))
                record.update({f"val_{k}": v for k, v in metrics.items()})
            history.append(record)
            if best.update(record, network) and checkpoint is not None:
                save_model(
                    _with_provenance(
                        trained,
                        detector,
                        options,
                        history,
                        len(train_items),
                        len(val_items),
                        data_description,
                        best.threshold,
                    ),
                    checkpoint,
                )
                saved = record
            progress("epoch", epoch, len(loader), record["loss"], record)
            if options.patience and best.stale >= options.patience:
                log.info("early stop after epoch %d: no better validation F1 for %d epochs", epoch, best.stale)
                break
    except torch.OutOfMemoryError as error:  # in validation: inference already went one image at a time
        raise _stopped(
            TrainingError(f"out of memory on {device} in epoch {epoch}: {str(error).splitlines()[0]}"),
            out=out,
            checkpoint=checkpoint,
            saved=saved,
        ) from error
    except (TrainingCancelled, TrainingError) as error:
        raise _stopped(error, out=out, checkpoint=checkpoint, saved=saved) from error
    best.restore(network)
    final = Detector(network.eval(), detector.config, provenance, detector.source)
    result = _with_provenance(
        final, detector, options, history, len(train_items), len(val_items), data_description, best.threshold
    )
    if out is not None:
        save_model(result, out)  # atomic: the previous file until the new one is complete
        Path(checkpoint).unlink(missing_ok=True)  # its epoch is in ``out`` now
    return result


#: Fewer images than this are validated by k-fold cross-validation in :func:`fine_tune` rather than
#: a held-out split: a 20 % split of 10 images is two images, and the best threshold on two images
#: is noise.
CROSS_VALIDATION_BELOW = 20
CROSS_VALIDATION_FOLDS = 3


def fine_tune(
    detector,
    items: list[LabelledImage],
    options: TrainingOptions | None = None,
    *,
    out=None,
    callback=None,
    should_stop=None,
    data_description: str = "",
    folds: int = CROSS_VALIDATION_FOLDS,
):
    """Fine-tune on a user's reviewed images with validation that holds for small sets.

    From :data:`CROSS_VALIDATION_BELOW` images on (or with ``options.val_fraction`` 0) this is
    :func:`train`. Below, with at least two images, ``folds``-fold cross-validation: one training
    per fold on the other folds, each scoring its held-out images; the pooled held-out detections
    give the F1 and the calibrated threshold of the model, which is then trained on every image
    for the same number of epochs. The model's provenance keeps ``cross_validation``: the scores
    at that threshold, and the base model's on the same images at its own threshold, so that the
    user sees whether fine-tuning helped (None for an untrained base). Costs ``folds + 1`` trainings.
    """
    import pandas as pd

    from .model import Detector, save_model, select_device

    options = options or TrainingOptions()
    n = len(items)
    if n >= CROSS_VALIDATION_BELOW or n < 2 or options.val_fraction <= 0 or folds < 2:
        return train(
            detector,
            items,
            options,
            out=out,
            callback=callback,
            should_stop=should_stop,
            data_description=data_description,
        )
    from dataclasses import replace

    folds = min(folds, n)
    single = replace(options, val_fraction=0.0)
    device = str(select_device(options.device))

    def reporting(part):
        return None if callback is None else (lambda progress: callback(replace(progress, part=part)))

    order = np.random.default_rng(options.seed).permutation(n)
    held_out_tables = []
    part = ""
    try:
        for fold, held_out in enumerate(np.array_split(order, folds), start=1):
            held = set(held_out.tolist())
            part = f"cross-validation fold {fold} of {folds}"
            fold_model = train(
                detector,
                [items[i] for i in range(n) if i not in held],
                single,
                callback=reporting(part),
                should_stop=should_stop,
            )
            held_out_tables.append(_found_table(fold_model, [items[i] for i in held_out], _SCORE_FLOOR, device))
        cross_validated = _best_scores(items, pd.concat(held_out_tables))
        # an untrained architecture (training from scratch) has no score to compare with
        base = evaluate_items(detector, items, detector.score_threshold, device=device) if detector.trained else None
        part = f"final model on all {n} images"
        # ``out`` is written below with the cross-validation's provenance: the final training
        # keeps its best epoch so far in the partial file only
        final = train(
            detector,
            items,
            single,
            callback=reporting(part),
            should_stop=should_stop,
            data_description=data_description,
            checkpoint=None if out is None else partial_path(out),
        )
    except (TrainingCancelled, TrainingError) as error:
        raise _stopped(error, part=part, out=out) from error
    provenance = dict(final.provenance)
    provenance.update(
        {
            "score_threshold": round(cross_validated["threshold"], 2),
            "threshold_source": f"best F1 of {folds}-fold cross-validation on the {n} training images",
            "cross_validation": {
                "folds": folds,
                "n_images": n,
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in cross_validated.items()},
                "base_model_f1": None if base is None else round(base["f1"], 4),
                "base_model_threshold": round(detector.score_threshold, 2),
            },
            "best_val_f1": round(cross_validated["f1"], 4),
        }
    )
    tuned = Detector(final.network, final.config, provenance, final.source)
    if out is not None:
        save_model(tuned, out)
        partial_path(out).unlink(missing_ok=True)
    return tuned


def validation_summary(detector) -> str:
    """One line on how a fine-tuned model was validated and what it scored, for the CLI and widgets."""
    provenance = detector.provenance
    record = provenance.get("cross_validation")
    if record:
        base = record.get("base_model_f1")
        versus = "" if base is None else f"; base model {base:.3f} at {record['base_model_threshold']:g}"
        return (
            f"{record['folds']}-fold cross-validated F1 {record['f1']:.3f} on {record['n_images']} images at "
            f"threshold {provenance['score_threshold']:g} (completeness {record['completeness']:.3f}, "
            f"purity {record['purity']:.3f}{versus})"
        )
    best = provenance.get("best_val_f1")
    if best is None or best != best:  # NaN: no validation images
        source = provenance.get("threshold_source", "")
        return f"no validation images; threshold {detector.score_threshold:g} ({source})"
    return f"best validation F1 {best:.3f} at threshold {detector.score_threshold:g}"


def _loader(items, in_chans: int, options: TrainingOptions):
    """Shuffled, augmented batches of ``items`` (seeded)."""
    import torch

    return torch.utils.data.DataLoader(
        _Dataset(items, in_chans, augmentations(options.scale_jitter)),
        batch_size=options.batch_size,
        shuffle=True,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(options.seed),
        num_workers=options.num_workers,
        drop_last=len(items) > options.batch_size,
    )


class _Optimisation:
    """AdamW over the trainable parameters, a one-cycle schedule, gradient clipping, and mixed
    precision on CUDA: one :meth:`step` per batch.

    Out of GPU memory, a batch is run in halves (then quarters...) whose gradients add up to the
    batch's: the steps, the schedule and the effective batch size stay as they were, and the
    loader is not rebuilt. One image at a time still out of memory is a :class:`TrainingError`.
    """

    def __init__(self, network, options: TrainingOptions, device, total_steps: int):
        import torch

        self.network, self.device, self.grad_clip = network, device, options.grad_clip
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.optimiser = torch.optim.AdamW(self.params, lr=options.learning_rate, weight_decay=options.weight_decay)
        if total_steps >= 10:  # one-cycle: warm up over 20 % of the steps, then anneal
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimiser, max_lr=options.learning_rate, total_steps=total_steps, pct_start=0.2
            )
        else:  # too few steps for the schedule's phases: a constant rate
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimiser, factor=1.0, total_iters=0)
        self.use_amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        #: Images through the network at a time (the whole batch until memory runs out).
        self.chunk = options.batch_size

    def step(self, images, targets, epoch: int, say=None) -> float:
        """One optimisation step on a batch; returns its loss. ``say(text)`` tells the user of a
        retry with fewer images at a time."""
        import torch

        while True:
            try:
                return self._step(images, targets, epoch)
            except torch.OutOfMemoryError:
                pass  # handled out here: the exception's traceback holds the failed pass's tensors
            self._free_memory()
            chunk = min(self.chunk, len(images))
            if chunk <= 1:
                raise TrainingError(
                    f"out of memory on {self.device} even with batch size 1 in epoch {epoch}; train fewer encoder "
                    "blocks (--trainable-blocks 0), use smaller images, close what else uses the GPU, or train on "
                    "the CPU (--device cpu)"
                )
            self.chunk = chunk // 2
            if say is not None:
                say(
                    f"out of memory on {self.device} with {chunk} images at a time: going on with {self.chunk} at a "
                    f"time (their gradients add up to the batch of {len(images)}'s, so the training is the same)"
                )

    def _free_memory(self) -> None:
        import torch

        self.optimiser.zero_grad(set_to_none=True)
        # the scaler may have unscaled this step's gradients already; the step starts again
        self.scaler = torch.amp.GradScaler("cuda", init_scale=self.scaler.get_scale(), enabled=self.use_amp)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _step(self, images, targets, epoch: int) -> float:
        import torch

        images = [im.to(self.device) for im in images]
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        self.optimiser.zero_grad(set_to_none=True)
        n, total = len(images), 0.0
        for first in range(0, n, max(self.chunk, 1)):
            part = slice(first, first + max(self.chunk, 1))
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                loss = sum(self.network(images[part], targets[part]).values())
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} in epoch {epoch}; lower the learning rate")
            weight = len(images[part]) / n  # 1.0 for the whole batch at once: the plain step
            self.scaler.scale(loss * weight).backward()
            total += loss.item() * weight
        self.scaler.unscale_(self.optimiser)
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.scheduler.step()
        return total


class _BestEpoch:
    """The weights of the epoch with the best validation F1 (without validation: the last)."""

    def __init__(self):
        self.f1, self.state, self.threshold, self.stale = -1.0, None, None, 0

    def update(self, record: dict, network) -> bool:
        """Keep ``network``'s weights if this epoch is the best so far; returns whether it is."""
        val_f1 = record.get("val_f1")
        if val_f1 is not None and val_f1 <= self.f1:
            self.stale += 1
            return False
        self.f1 = -1.0 if val_f1 is None else val_f1
        self.threshold = record.get("val_threshold")
        self.state = copy.deepcopy({k: v.detach().cpu() for k, v in network.state_dict().items()})
        self.stale = 0
        return True

    def restore(self, network) -> None:
        if self.state is not None:
            network.load_state_dict(self.state)


def _with_provenance(trained, base, options, history, n_train, n_val, data_description, threshold=None):
    from dataclasses import asdict

    from .model import Detector

    provenance = {
        "model_id": f"{trained.config.backbone}-ft{time.strftime('%Y%m%d%H%M%S')}",
        "base_model": base.provenance.get("model_id") or base.source,
        "data": data_description,
        "n_train_images": n_train,
        "n_val_images": n_val,
        "epochs_run": len(history),
        "history": history,
        "options": asdict(options),
        "best_val_f1": max((h.get("val_f1", math.nan) for h in history), default=math.nan),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if threshold is not None:
        provenance["score_threshold"] = round(float(threshold), 2)
        provenance["threshold_source"] = "best F1 on the validation images"
    elif "score_threshold" in base.provenance:  # no validation images: the base model's, not 0.3
        provenance["score_threshold"] = base.provenance["score_threshold"]
        provenance["threshold_source"] = f"the base model's ({provenance['base_model']}); no validation images"
    return Detector(trained.network, trained.config, provenance, trained.source)
