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

log = logging.getLogger(__name__)

#: The paper's post-processing: class-agnostic NMS at IoU 0.2 (and a score threshold of 0.3,
#: used for models without a calibrated threshold of their own).
DEFAULT_NMS_IOU = 0.2
#: Network inputs (images or tiles) per forward pass.
DEFAULT_BATCH_SIZE = 4


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
    return GalaxyImage.from_rgb(item, name or "array")


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


#: A :class:`_Read`'s host before anyone looked for it (None means "looked: no host").
_NOT_SEARCHED = object()


@dataclass
class ImageDetections:
    """The outcome for one image: a detections table, or the error that stopped it."""

    name: str
    table: object = None  # pandas.DataFrame in the detections schema
    error: str = ""
    width: int = 0
    height: int = 0
    wcs: object = None  # the image's celestial astropy WCS, None without one (DS9 regions in sky coordinates)

    def images_row(self) -> dict:
        """This outcome as a row of the images list (:func:`napari_clumps.detections.images_row`)."""
        from .detections import images_row

        if self.error:
            return images_row(self.name, error=self.error)
        return images_row(self.name, len(self.table), self.width, self.height)


def postprocess(boxes, scores, labels, nms_iou: float, score_threshold: float):
    """Class-agnostic NMS then the score threshold (numpy arrays in, numpy arrays out)."""
    import torch
    from torchvision.ops import nms

    boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores_t = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    keep = nms(boxes_t, scores_t, nms_iou).numpy()
    keep = keep[np.asarray(scores)[keep] >= score_threshold]
    return np.asarray(boxes)[keep], np.asarray(scores)[keep], np.asarray(labels)[keep]


def iter_detections(
    items,
    model=None,
    *,
    names=None,
    device="auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    score_threshold: float | None = None,
    nms_iou: float = DEFAULT_NMS_IOU,
    keep_off_host: bool = False,
    psf_fwhm: float | None = None,
    pixel_scale: float | None = None,
    seeing: float | None = None,
    should_stop=None,
    num_workers: int = 0,
    catalog=None,
):
    """Yield an :class:`ImageDetections` per image, in order.

    ``items``: paths, folders (searched recursively, sorted; images named relative to the
    folder, as the CLI names them), :class:`~napari_clumps.io.GalaxyImage` objects or arrays. A
    file that cannot be read (corrupt, deleted or unreadable while the run goes on) yields its
    error and the others go on. Tiles of all images are batched together, ``batch_size``
    network inputs at a time. ``model``: anything :func:`~napari_clumps.model.get_detector`
    takes. ``score_threshold`` defaults to the model's recommended one. ``should_stop()`` is
    polled between images and batches; once it says True nothing more is yielded.
    ``num_workers`` > 0 reads files, and finds their host galaxies, in that many worker
    processes (a torch ``DataLoader``) while the network runs; 0 does both here, between batches.

    Every table has the host columns of :mod:`napari_clumps.host`, then the photometry columns of
    the image's bands (:mod:`napari_clumps.photometry`); detections off the host galaxy are
    dropped unless ``keep_off_host``. ``psf_fwhm`` (pixels), or ``pixel_scale`` (arcsec/px)
    with ``seeing`` (arcsec), say how large the PSF is (FITS headers may say it too); the image is
    then resampled to the model's training PSF (:mod:`napari_clumps.scale`).

    ``catalog``: a cutout catalogue (a :class:`~napari_clumps.cutouts.CutoutCatalog` or its
    file) that gives images without a celestial WCS of their own (JPEG, PNG) one, matched by
    their names (:mod:`napari_clumps.cutouts`), so that their rows get RA/Dec too. An image no row
    fits keeps empty RA/Dec; a name two rows fit is that image's error.
    """
    from .cutouts import as_cutout_catalog
    from .model import ModelError, get_detector
    from .scale import image_psf_fwhm

    image_psf_fwhm(None, psf_fwhm, pixel_scale, seeing)  # bad values fail here, before any work
    catalog = as_cutout_catalog(catalog)  # a bad file fails here too
    items, names = expand_items(items, names)
    detector = get_detector(model, device)
    if not detector.trained:
        raise ModelError(
            f"{detector.source}: a built-in architecture has an untrained detection head; train "
            f"it first (napari-clumps train --model {detector.source}) or pass a trained model file"
        )
    run = _BatchedRun(detector, batch_size, score_threshold, nms_iou, keep_off_host)
    in_workers = num_workers > 0 and all(isinstance(item, (str, Path)) for item in items)
    # Reading workers also find each host galaxy, off the network's critical path; here, it is
    # found only for images with detections (no search for nothing).
    reader = _ImageReader(items, names, psf_fwhm, pixel_scale, seeing, find_hosts=in_workers, catalog=catalog)
    with contextlib.closing(_read_all(reader, num_workers if in_workers else 0, batch_size)) as reads:
        for index, read in enumerate(reads):
            if should_stop is not None and should_stop():
                return
            if read.error:
                run.fail(index, names[index], read.error)
            else:
                for _ in run.add(index, names[index], read.image, read.psf_fwhm, read.host):
                    if should_stop is not None and should_stop():
                        return
                    run.run_batch()
            yield from run.ready()
    run.run_batch()
    run.finish_all()
    yield from run.ready()


@dataclass
class _Read:
    """One item as read: the image and its PSF FWHM (and its host galaxy, when the reader looks
    for it), or the error that stopped it."""

    image: object = None
    psf_fwhm: float | None = None
    host: object = _NOT_SEARCHED
    error: str = ""


class _ImageReader:
    """Reads item ``i`` into a :class:`_Read`; the map-style data set of the reading workers
    (picklable: paths, names, numbers and the cutout catalogue's rows)."""

    def __init__(self, items, names, psf_fwhm, pixel_scale, seeing, find_hosts: bool = False, catalog=None):
        self.items, self.names = items, names
        self.psf = (psf_fwhm, pixel_scale, seeing)
        self.find_hosts = find_hosts
        self.catalog = catalog

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Read:
        from .cutouts import with_catalog_wcs
        from .host import find_host
        from .io import ImageReadError
        from .scale import image_psf_fwhm

        item, name = self.items[index], self.names[index]
        try:
            image = with_catalog_wcs(as_galaxy_image(item, name), name, self.catalog)
            read = _Read(image, image_psf_fwhm(image, *self.psf))
            if self.find_hosts:
                read.host = find_host(image)
            return read
        except (ImageReadError, ValueError) as error:  # ValueError: an array of the wrong shape, two catalogue rows
            return _Read(error=str(error))
        except Exception as error:  # noqa: BLE001 - one bad file never costs the others
            where = str(item) if isinstance(item, (str, Path)) else name
            reason = " ".join(str(error).split())
            return _Read(error=f"{where}: {type(error).__name__}" + (f": {reason}" if reason else ""))


def _read_all(reader: _ImageReader, num_workers: int, batch_size: int = DEFAULT_BATCH_SIZE):
    """Every item of ``reader`` in order: here, or in ``num_workers`` processes that keep a whole
    batch read ahead, so that they go on working while the network runs on the last one."""
    if num_workers <= 0:
        for index in range(len(reader)):
            yield reader[index]
        return
    from torch.utils.data import DataLoader

    loader = iter(
        DataLoader(
            reader,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            worker_init_fn=_reading_worker_init,
            prefetch_factor=max(2, -(-batch_size // num_workers)),
        )
    )
    try:
        yield from loader
    finally:
        shutdown = getattr(loader, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _as_is(item):
    return item


def _reading_worker_init(_worker_id: int) -> None:
    """Ctrl-C is for the main process, which stops cleanly; workers only read."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def expand_items(items, names=None) -> tuple[list, list[str]]:
    """``items`` with every folder replaced by its images (:func:`~napari_clumps.io.find_images`)
    and a name for each: the one given, the path as given, or ``image_<i>`` for arrays."""
    from .io import find_images

    items = list(items)
    if names is not None:
        names = [str(n) if n is not None else None for n in names]
        if len(names) != len(items):
            raise ValueError(f"{len(names)} names for {len(items)} images")
    expanded, expanded_names = [], []
    for index, item in enumerate(items):
        given = names[index] if names is not None else None
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            found = find_images([item])
            expanded += [path for path, _ in found]
            expanded_names += [f"{given}/{name}" if given else name for _, name in found]
            continue
        expanded.append(item)
        expanded_names.append(
            given or (str(item) if isinstance(item, (str, Path)) else str(getattr(item, "path", f"image_{index}")))
        )
    return expanded, expanded_names


class _BatchedRun:
    """Tiles of many images through the network in batches, and each image's table once all its
    tiles are done; tables come out in the order the images went in."""

    def __init__(self, detector, batch_size: int, score_threshold, nms_iou: float, keep_off_host: bool):
        import torch

        self.detector, self.batch_size, self.nms_iou = detector, batch_size, nms_iou
        self.keep_off_host = keep_off_host
        self.score_threshold = detector.score_threshold if score_threshold is None else score_threshold
        self.device = next(detector.network.parameters()).device
        detector.network.eval()
        config = detector.config
        self.tile = max(int(round(config.tile_size / config.input_scale)), 32)
        self.overlap = int(round(config.tile_overlap / config.input_scale))
        self.autocast = (
            torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else contextlib.nullcontext()
        )
        self.pending = {}  # image index -> dict(image, name, parts, n_tiles, factor)
        self.batch = []  # (image index, y0, x0, tensor)
        self.finished = {}
        self.next_to_yield = 0

    def add(self, index: int, name: str, image, psf_fwhm, host=_NOT_SEARCHED):
        """Queue the tiles of an image; yields each time a batch is full (the caller runs it).
        ``host``: the image's host galaxy (or None) when already found; else found at the end."""
        from .scale import resample, resample_factor

        config = self.detector.config
        tensor = resample(image_tensor(image, config.in_chans), resample_factor(config.psf_fwhm_px, psf_fwhm))
        height, width = tensor.shape[-2:]
        windows = tile_windows(height, width, self.tile, self.overlap)
        self.pending[index] = {
            "image": image,
            "host": host,
            "name": name,
            "parts": [],
            "n_tiles": len(windows),
            "factor": np.array([width / image.width, height / image.height] * 2, np.float32),
        }
        for y0, x0, y1, x1 in windows:
            self.batch.append((index, y0, x0, tensor[:, y0:y1, x0:x1]))
            if len(self.batch) >= self.batch_size:
                yield

    def run_batch(self) -> None:
        """The network on the queued tiles; images whose tiles are all done get their tables."""

        if not self.batch:
            return
        outputs = self._network_on([t for *_, t in self.batch])
        for (index, y0, x0, _), out in zip(self.batch, outputs):
            state = self.pending[index]
            boxes = out["boxes"].float().cpu().numpy() + np.array([x0, y0, x0, y0], np.float32)
            boxes /= state["factor"]  # back to the image's own pixels
            state["parts"].append((boxes, out["scores"].float().cpu().numpy(), out["labels"].cpu().numpy()))
        self.batch.clear()
        for index in [i for i, state in self.pending.items() if len(state["parts"]) == state["n_tiles"]]:
            self._finish(index)

    def _network_on(self, tiles) -> list:
        """The network's outputs for ``tiles``. Out of GPU memory, for each half of them in turn,
        and this run's batches are that much smaller from then on; one tile still too many is
        ``torch.OutOfMemoryError`` with a message that says what to do."""
        import torch

        try:
            with torch.inference_mode(), self.autocast:
                return self.detector.network([self._to_device(t) for t in tiles])
        except torch.OutOfMemoryError:
            pass  # handled out here: the exception's traceback holds the failed pass's tensors
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(tiles) <= 1:
            raise torch.OutOfMemoryError(
                f"out of memory on {self.device} even with one {self.tile} px tile at a time; free GPU memory "
                "(close what else uses it) or use the CPU (--device cpu)"
            )
        half = (len(tiles) + 1) // 2
        if half < self.batch_size:
            log.warning("out of memory on %s with %d tiles at a time: going on with %d", self.device, len(tiles), half)
            self.batch_size = half
        return self._network_on(tiles[:half]) + self._network_on(tiles[half:])

    def _to_device(self, tile):
        """A tile on the network's device; to a GPU from page-locked memory without waiting, so
        that the copies of a batch overlap (the network's first kernel waits for them)."""
        if self.device.type != "cuda":
            return tile.to(self.device)
        return tile.pin_memory().to(self.device, non_blocking=True)

    def finish_all(self) -> None:
        for index in sorted(self.pending):
            self._finish(index)

    def fail(self, index: int, name: str, error: str) -> None:
        self.finished[index] = ImageDetections(name, error=error)

    def ready(self):
        """Outcomes that are next in order."""
        while self.next_to_yield in self.finished:
            yield self.finished.pop(self.next_to_yield)
            self.next_to_yield += 1

    def _finish(self, index: int) -> None:
        from .detections import detections_frame
        from .host import add_host_columns, find_host, on_host_rows
        from .photometry import add_photometry_columns

        state = self.pending.pop(index)
        image, parts = state["image"], state["parts"]
        boxes, scores, labels = (np.concatenate([part[k] for part in parts]) for k in range(3))
        boxes, scores, labels = postprocess(boxes, scores, labels, self.nms_iou, self.score_threshold)
        order = np.argsort(-scores, kind="stable")
        table = detections_frame(
            state["name"], boxes[order], labels[order], scores[order], wcs=image.wcs, model=self.detector.model_id
        )
        host = state["host"]
        if host is _NOT_SEARCHED:
            host = find_host(image) if len(table) else None  # no search for nothing
        table = add_host_columns(table, host)
        if not self.keep_off_host:
            table = on_host_rows(table).reset_index(drop=True)
        table = add_photometry_columns(table, image, host)
        self.finished[index] = ImageDetections(
            state["name"], table, width=image.width, height=image.height, wcs=image.wcs
        )


def detect(images, model=None, **options):
    """Detect clumps in one image or many; returns a detections table (docs/contracts.md).

    ``images``: a path, a folder, a :class:`~napari_clumps.io.GalaxyImage` or an array, or a list
    of them. ``model``: a :class:`~napari_clumps.model.Detector`, a model file or a packaged model
    name (default: the packaged default model). Options as :func:`iter_detections`. Unreadable
    images raise; use :func:`iter_detections` to skip them instead. Images with different bands
    (FITS g, r, i and JPEG red, green, blue) give the union of their photometry columns, empty
    where an image has no such band.
    """
    import pandas as pd

    from .detections import COLUMNS, HOST_COLUMNS

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    tables = []
    for result in iter_detections(items, model, **options):
        if result.error:
            raise ValueError(result.error)
        tables.append(result.table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS + HOST_COLUMNS)
