"""Running the detector over images: batching, tiling, class-agnostic NMS, the detections table.

:func:`detect` is the one-call API (one image or many -> a detections table);
:func:`iter_detections` yields per image, for progress bars, cancelling and per-file errors.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .model import Detector, ModelError, load_model, select_device

log = logging.getLogger(__name__)

#: The paper's post-processing: class-agnostic NMS at IoU 0.2 (and a score threshold of 0.3,
#: used for models without a calibrated threshold of their own).
DEFAULT_NMS_IOU = 0.2
DEFAULT_MODEL = "default"
_PACKAGED_MODELS = {"default": "default_clump_detector.safetensors"}


def packaged_model_path(name: str = DEFAULT_MODEL) -> Path:
    return Path(__file__).parent / "models" / _PACKAGED_MODELS[name]


_MODEL_CACHE: dict = {}


def resolve_model(model=None, device="auto") -> Detector:
    """A :class:`Detector` from a Detector, a model file, or a packaged model name (cached)."""
    if isinstance(model, Detector):
        return model
    name = DEFAULT_MODEL if model is None else str(model)
    if name in _PACKAGED_MODELS:
        path = packaged_model_path(name)
        if not path.is_file():
            raise ModelError(f"{path}: the packaged '{name}' model is missing from this installation")
    else:
        path = Path(name)
        if not path.exists():
            from .model import BACKBONES

            if name in BACKBONES:
                raise ModelError(f"{name}: a built-in architecture has an untrained detection head; train it "
                                 f"first (napari-clumps train --model {name}) or pass a trained model file")
            raise ModelError(f"{name}: no such model file or packaged model")
    torch_device = select_device(device)
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(torch_device))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # keep one model in memory
        _MODEL_CACHE[key] = load_model(path, device=torch_device)
    return _MODEL_CACHE[key]


def as_galaxy_image(item, name: str | None = None):
    """A :class:`~napari_clumps.io.GalaxyImage` from a path, a GalaxyImage or an array.

    Arrays are ``(H, W, 3)`` or ``(H, W)``, uint8 (0-255) or float (0-1), in the pixel
    convention of :mod:`napari_clumps.pixels`.
    """
    from .io import GalaxyImage, read_image

    if isinstance(item, GalaxyImage):
        return item
    if isinstance(item, (str, Path)):
        return read_image(item)
    array = np.asarray(item)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"{name or 'array'}: expected an (H, W, 3) colour or (H, W) grey image, got {array.shape}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(np.rint(np.nan_to_num(array.astype(np.float32)) * 255), 0, 255).astype(np.uint8)
    return GalaxyImage(path=Path(name or "array"), bands=np.moveaxis(array, -1, 0) / np.float32(255),
                       band_names=("R", "G", "B"), composite=array)


def image_tensor(image, in_chans: int = 3):
    """``(C, H, W)`` float tensor in 0-1 of the image's colour composite (grey if ``in_chans`` is 1)."""
    import torch

    rgb = torch.from_numpy(np.ascontiguousarray(image.composite)).permute(2, 0, 1).float().div_(255)
    return rgb.mean(dim=0, keepdim=True) if in_chans == 1 else rgb


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(y0, x0, y1, x1)`` windows covering the image; one window if it fits in ``tile``."""
    def starts(n):
        if n <= tile:
            return [0]
        step = tile - overlap
        positions = list(range(0, n - tile, step)) + [n - tile]
        return sorted(set(positions))

    return [(y, x, min(y + tile, height), min(x + tile, width)) for y in starts(height) for x in starts(width)]


@dataclass
class ImageDetections:
    """The outcome for one image: a detections table, or the error that stopped it."""

    name: str
    table: object = None  # pandas.DataFrame in the detections schema
    error: str = ""
    width: int = 0
    height: int = 0


def postprocess(boxes, scores, labels, nms_iou: float, score_threshold: float):
    """Class-agnostic NMS then the score threshold (numpy arrays in, numpy arrays out)."""
    import torch
    from torchvision.ops import nms

    boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores_t = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    keep = nms(boxes_t, scores_t, nms_iou).numpy()
    keep = keep[np.asarray(scores)[keep] >= score_threshold]
    return np.asarray(boxes)[keep], np.asarray(scores)[keep], np.asarray(labels)[keep]


def iter_detections(items, model=None, *, names=None, device="auto", batch_size: int = 4,
                    score_threshold: float | None = None, nms_iou: float = DEFAULT_NMS_IOU,
                    keep_off_host: bool = False, psf_fwhm: float | None = None,
                    pixel_scale: float | None = None, seeing: float | None = None, should_stop=None):
    """Yield an :class:`ImageDetections` per item, in order.

    ``items``: paths, :class:`~napari_clumps.io.GalaxyImage` objects or arrays. A file that cannot
    be read yields its error and the others go on. Tiles of all images are batched together,
    ``batch_size`` network inputs at a time. ``score_threshold`` defaults to the model's
    recommended one. ``should_stop()`` is polled between batches.

    Every table has the host columns of :mod:`napari_clumps.host`; detections off the host galaxy
    are dropped unless ``keep_off_host``. ``psf_fwhm`` (pixels), or ``pixel_scale`` (arcsec/px)
    with ``seeing`` (arcsec), say how large the PSF is (FITS headers may say it too); the image is
    then resampled to the model's training PSF (:mod:`napari_clumps.scale`).
    """
    import torch

    from .detections import detections_frame
    from .host import add_host_columns, find_host, on_host_rows
    from .io import ImageReadError
    from .scale import image_psf_fwhm, resample, resample_factor

    image_psf_fwhm(None, psf_fwhm, pixel_scale, seeing)  # bad values fail here, before any work
    detector = resolve_model(model, device)
    network, config = detector.network, detector.config
    if score_threshold is None:
        score_threshold = detector.score_threshold
    torch_device = next(network.parameters()).device
    network.eval()
    names = list(names) if names is not None else [None] * len(items)
    tile = max(int(round(config.tile_size / config.input_scale)), 32)
    overlap = int(round(config.tile_overlap / config.input_scale))
    autocast = (torch.autocast("cuda", dtype=torch.float16) if torch_device.type == "cuda"
                else contextlib.nullcontext())

    pending = {}  # image index -> dict(image, name, parts, n_tiles)
    batch = []  # (image index, y0, x0, tensor)
    next_to_yield = 0
    finished = {}

    def run_batch():
        with torch.inference_mode(), autocast:
            outputs = network([t.to(torch_device) for *_, t in batch])
        for (index, y0, x0, _), out in zip(batch, outputs):
            boxes = out["boxes"].float().cpu().numpy() + np.array([x0, y0, x0, y0], np.float32)
            boxes /= pending[index]["factor"]  # back to the image's own pixels
            pending[index]["parts"].append((boxes, out["scores"].float().cpu().numpy(), out["labels"].cpu().numpy()))
        batch.clear()

    def finish(index):
        state = pending.pop(index)
        image, parts = state["image"], state["parts"]  # every image has at least one tile
        boxes = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        labels = np.concatenate([p[2] for p in parts])
        boxes, scores, labels = postprocess(boxes, scores, labels, nms_iou, score_threshold)
        order = np.argsort(-scores, kind="stable")
        table = detections_frame(state["name"], boxes[order], labels[order], scores[order], wcs=image.wcs,
                                 model=detector.model_id)
        table = add_host_columns(table, find_host(image) if len(table) else None)  # no search for nothing
        if not keep_off_host:
            table = on_host_rows(table).reset_index(drop=True)
        finished[index] = ImageDetections(state["name"], table, width=image.width, height=image.height)

    def ready():
        nonlocal next_to_yield
        while next_to_yield in finished:
            yield finished.pop(next_to_yield)
            next_to_yield += 1

    for index, (item, name) in enumerate(zip(items, names)):
        if should_stop is not None and should_stop():
            return
        name = name or (str(item) if isinstance(item, (str, Path)) else
                        str(getattr(item, "path", f"image_{index}")))
        try:
            image = as_galaxy_image(item, name)
        except (ImageReadError, ValueError) as error:
            finished[index] = ImageDetections(name, error=str(error))
            yield from ready()
            continue
        factor = resample_factor(config.psf_fwhm_px, image_psf_fwhm(image, psf_fwhm, pixel_scale, seeing))
        tensor = resample(image_tensor(image, config.in_chans), factor)
        height, width = tensor.shape[-2:]
        windows = tile_windows(height, width, tile, overlap)
        pending[index] = {"image": image, "name": name, "parts": [], "n_tiles": len(windows),
                          "factor": np.array([width / image.width, height / image.height] * 2, np.float32)}
        for y0, x0, y1, x1 in windows:
            batch.append((index, y0, x0, tensor[:, y0:y1, x0:x1]))
            if len(batch) >= batch_size:
                if should_stop is not None and should_stop():
                    return
                run_batch()
                for done in [i for i, s in pending.items() if len(s["parts"]) == s["n_tiles"]]:
                    finish(done)
                yield from ready()
    if batch:
        run_batch()
    for done in sorted(pending):
        finish(done)
    yield from ready()


def detect(images, model=None, **options):
    """Detect clumps in one image or many; returns a detections table (design.md schema).

    ``images``: a path, :class:`~napari_clumps.io.GalaxyImage` or array, or a list of them.
    ``model``: a :class:`~napari_clumps.model.Detector`, a model file or a packaged model name
    (default: the packaged default model). Options as :func:`iter_detections`. Unreadable
    images raise; use :func:`iter_detections` to skip them instead.
    """
    import pandas as pd

    from .detections import COLUMNS, HOST_COLUMNS

    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    tables = []
    for result in iter_detections(items, model, **options):
        if result.error:
            raise ValueError(result.error)
        tables.append(result.table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS + HOST_COLUMNS)
