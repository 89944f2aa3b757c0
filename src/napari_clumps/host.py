"""The host galaxy: the galaxy a cutout is centred on, and where each detection lies on it.

Clumps belong to the galaxy being studied (Clump Scout: "clumps in this galaxy"), so a compact
source in the empty field around it is never a clump, and an "odd clump" is an unusual object
*over* the galaxy (often a foreground star), not any star in the field.

:func:`find_host` segments the colour composite with photutils (smoothed luminance, a threshold
over the sigma-clipped sky noise, deblending so that a neighbour touching the host is cut
away) and takes the source at the image centre. The host's *size* is the semi-major axis of the
ellipse with the footprint's area and second-moment shape; :meth:`Host.distance` is a point's
elliptical radius in that unit (1 = the edge of that ellipse). :func:`add_host_columns` adds, after
the contract's columns, ``host_distance`` and ``on_host`` (centre inside the host's footprint or
its ellipse). Cutout centring is a survey convention (SDSS, Legacy Surveys, Galaxy Zoo); an image
with no source near its centre has no host, and its detections are kept with ``on_host`` empty.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

#: Width of the image border, as a fraction of its smaller side, where the sky level and noise
#: are measured.
BORDER_FRACTION = 0.08
#: Smoothing before segmentation, FWHM in pixels: suppresses single-pixel noise and JPEG blocks.
SMOOTHING_FWHM = 3.0
#: Detection threshold over the sky, in units of the sky's (sigma-clipped) noise per pixel.
THRESHOLD_SIGMA = 2.0
#: The host is the source under the image centre, or the nearest one within this fraction of
#: the image's smaller side (cutouts are centred on their galaxy to a few pixels).
CENTRE_TOLERANCE = 0.1
#: Deblending contrast: high enough that clumps and arms stay part of their galaxy (0.05 cut
#: 7.5 % of the real dev clumps off their host, 0.3 keeps 99 %), low enough to cut off a
#: comparable neighbour (a galaxy or bright star holding 30 % of the blend) that touches it.
DEBLEND_CONTRAST = 0.3
#: Multi-threshold levels of the deblending (photutils' default is 32). Fewer levels, fewer
#: candidate children, and photutils runs one watershed per candidate that fails the contrast:
#: 8 levels halve the cost on simulated cutouts full of clumps (216 -> 100 ms at 200 px) and
#: leave the footprint identical on 40/40 of them and 183/187 real ones (Legacy Surveys + dev).
DEBLEND_LEVELS = 8
#: Larger images are binned for segmentation until their smaller side is at most this many
#: pixels: deblending a 424 px cutout costs 85 ms, binned 2 x 2 26 ms, and the on-host verdicts
#: of 99.3 % of real detections stay the same (docs/benchmarks/default_model.md).
SEGMENTATION_MAX_SIDE = 256


@dataclass
class Host:
    """The central galaxy of a cutout, in the pixel-edge convention of :mod:`napari_clumps.pixels`."""

    x: float
    y: float
    #: Semi-axes (pixels) of the ellipse with the footprint's area and second-moment shape.
    semi_major: float
    semi_minor: float
    #: Position angle of the major axis, radians, counter-clockwise from +x (array columns).
    theta: float
    #: Boolean footprint of the host, (height, width).
    mask: np.ndarray

    @property
    def size(self) -> float:
        """The unit of :meth:`distance`: the semi-major axis, in pixels."""
        return self.semi_major

    def distance(self, x, y) -> np.ndarray:
        """Elliptical radius of points (x, y) from the host centre, in units of :attr:`size`."""
        dx, dy = np.asarray(x, float) - self.x, np.asarray(y, float) - self.y
        cos, sin = np.cos(self.theta), np.sin(self.theta)
        along = (dx * cos + dy * sin) / self.semi_major
        across = (-dx * sin + dy * cos) / self.semi_minor
        return np.hypot(along, across)

    def contains(self, x, y) -> np.ndarray:
        """Whether points lie on the host: inside its footprint or inside its ellipse."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        height, width = self.mask.shape
        col = np.clip(np.floor(x).astype(int), 0, width - 1)
        row = np.clip(np.floor(y).astype(int), 0, height - 1)
        inside_image = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        return (inside_image & self.mask[row, col]) | (self.distance(x, y) <= 1.0)


def _luminance(image) -> np.ndarray:
    """The detection image: mean of the composite's channels, 0-1 floats."""
    composite = getattr(image, "composite", image)
    array = np.asarray(composite, np.float32)
    if array.ndim == 3:
        array = array.mean(axis=-1)
    return array / 255.0 if np.asarray(composite).dtype == np.uint8 else array


def find_host(image) -> Host | None:
    """The galaxy at the centre of ``image`` (a :class:`~napari_clumps.io.GalaxyImage` or an
    ``(H, W[, 3])`` array), or None when no source lies near the centre."""
    from astropy.convolution import convolve
    from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources, make_2dgaussian_kernel
    from photutils.utils import NoDetectionsWarning

    full = _luminance(image)
    factor = -(-min(full.shape) // SEGMENTATION_MAX_SIDE)
    data = _binned(full, factor)
    height, width = data.shape
    sky, noise = border_sky(data)
    # A JPEG's sky is often clipped flat: no threshold below one 8-bit step.
    noise = max(float(noise) if np.isfinite(noise) else 0.0, 1.0 / 255)
    fwhm = SMOOTHING_FWHM / factor  # the same smoothing in the full image's pixels
    kernel = make_2dgaussian_kernel(fwhm, size=max(int(2 * fwhm) | 1, 3))
    smoothed = convolve(data - sky, kernel)
    npixels = max(10, int(0.0005 * height * width))
    with warnings.catch_warnings():  # an empty image is an answer (no host), not a warning
        warnings.filterwarnings("ignore", category=NoDetectionsWarning)
        segments = detect_sources(smoothed, THRESHOLD_SIGMA * noise, n_pixels=npixels)
    if segments is None:
        return None
    label = _central_label(segments.data, segments.labels, width, height)
    if label is None:
        return None
    island = segments.copy()
    island.keep_labels([label])
    try:
        children = deblend_sources(
            smoothed, island, n_pixels=npixels, n_levels=DEBLEND_LEVELS, contrast=DEBLEND_CONTRAST, progress_bar=False
        )
    except Exception:  # noqa: BLE001 - photutils raises several types on odd islands; keep the island
        children = island
    core = _central_label(children.data, children.labels, width, height) or children.labels[0]
    catalogue = SourceCatalog(data - sky, children)
    index = list(children.labels).index(core)
    source = catalogue[index]
    # Children whose centroid lies in the core's ellipse are parts of the host (its bulge,
    # clumps, arms); the others are neighbours the deblender cut off.
    host = _ellipse(source, children.data == core, 1)
    parts = [
        lab
        for lab, cx, cy in zip(children.labels, catalogue.x_centroid, catalogue.y_centroid)
        if host.distance(cx + 0.5, cy + 0.5) <= 1.0
    ]
    mask = np.isin(children.data, parts)
    if factor > 1:
        mask = np.pad(
            mask.repeat(factor, 0).repeat(factor, 1),
            [(0, full.shape[0] - height * factor), (0, full.shape[1] - width * factor)],
            mode="edge",
        )
    return _ellipse(source, mask, factor)


def border_sky(data, exclude=None):
    """Sky level and noise per pixel (sigma-clipped median and standard deviation) of an image's
    border, :data:`BORDER_FRACTION` of its smaller side wide: a galaxy may fill most of a cutout,
    never its edges. ``data``: ``(H, W)`` (two numbers) or ``(n, H, W)`` (two arrays of n).
    ``exclude``: a boolean ``(H, W)`` mask of pixels to leave out (a host's footprint), unless it
    would leave fewer than a tenth of the border."""
    from astropy.stats import sigma_clipped_stats

    data = np.asarray(data)
    planes = data.reshape(-1, *data.shape[-2:])
    height, width = data.shape[-2:]
    edge = max(2, int(BORDER_FRACTION * min(height, width)))
    strips = [np.s_[:edge, :], np.s_[-edge:, :], np.s_[:, :edge], np.s_[:, -edge:]]  # corners twice
    keep = [np.ones((height, width), bool)[strip] for strip in strips]
    if exclude is not None:
        outside = [~np.asarray(exclude)[strip] for strip in strips]
        if sum(k.sum() for k in outside) >= 0.1 * sum(k.size for k in keep):
            keep = outside
    border = np.concatenate([planes[(slice(None), *strip)][:, k] for strip, k in zip(strips, keep)], axis=1)
    if data.ndim == 2:
        _, sky, noise = sigma_clipped_stats(border[0], sigma=3.0, maxiters=5)
        return sky, noise
    _, sky, noise = sigma_clipped_stats(border, sigma=3.0, maxiters=5, axis=1)
    return np.asarray(sky, float), np.asarray(noise, float)


def _binned(data: np.ndarray, factor: int) -> np.ndarray:
    """``data`` averaged over ``factor`` x ``factor`` blocks (the ragged edge dropped)."""
    if factor <= 1:
        return data
    height, width = data.shape[0] // factor, data.shape[1] // factor
    return data[: height * factor, : width * factor].reshape(height, factor, width, factor).mean(axis=(1, 3))


def _central_label(segment_data, labels, width, height):
    """The segment under the image centre, else the nearest within the tolerance, else None."""
    at_centre = int(segment_data[height // 2, width // 2])
    if at_centre:
        return at_centre
    rows, cols = np.nonzero(segment_data)
    if not len(rows):
        return None
    distance = np.hypot(rows + 0.5 - height / 2, cols + 0.5 - width / 2)
    nearest = np.argmin(distance)
    if distance[nearest] > CENTRE_TOLERANCE * min(width, height):
        return None
    return int(segment_data[rows[nearest], cols[nearest]])


def _ellipse(source, mask: np.ndarray, factor: int) -> Host:
    """The host ellipse: centre and shape from the core source (measured on an image binned by
    ``factor``), area from the footprint (at full resolution)."""
    a_sigma = float(source.semimajor_axis.value)
    b_sigma = float(source.semiminor_axis.value)
    axis_ratio = b_sigma / a_sigma if a_sigma > 0 and np.isfinite(b_sigma) else 1.0
    axis_ratio = float(np.clip(axis_ratio, 0.1, 1.0))
    area = float(mask.sum())
    semi_major = max(np.sqrt(area / (np.pi * axis_ratio)), 1.0)
    # photutils centroids put pixel centres at integers; the edge convention puts them at i + 0.5.
    return Host(
        x=(float(source.x_centroid) + 0.5) * factor,
        y=(float(source.y_centroid) + 0.5) * factor,
        semi_major=semi_major,
        semi_minor=semi_major * axis_ratio,
        theta=float(np.radians(source.orientation.value)),
        mask=mask,
    )


def add_host_columns(table, host: Host | None):
    """``table`` (one image's detections) with ``host_distance`` and ``on_host`` filled in.

    Without a host both are empty (NaN / missing), and a filter on ``on_host`` keeps the rows.
    """
    import pandas as pd

    table = table.copy()
    if host is None or not len(table):
        table["host_distance"] = np.nan
        table["on_host"] = pd.array([pd.NA] * len(table), dtype="boolean")
        return table
    x, y = table["x_center"].to_numpy(float), table["y_center"].to_numpy(float)
    table["host_distance"] = host.distance(x, y)
    table["on_host"] = pd.array(host.contains(x, y), dtype="boolean")
    return table


def on_host_flags(values) -> np.ndarray:
    """``on_host`` values as booleans, unknown (no host found, hand-drawn) counted as on the host."""
    import pandas as pd

    return pd.Series(list(values), dtype="boolean").fillna(True).to_numpy(bool)


def on_host_rows(table):
    """Rows on the host, and rows whose image has no host (unknown is kept)."""
    if "on_host" not in table:
        return table
    return table[on_host_flags(table["on_host"])]
