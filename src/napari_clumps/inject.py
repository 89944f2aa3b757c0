"""Training data from the real sky: simulated clumps injected into real host galaxies.

Real cutouts (SDSS, Legacy Surveys colour JPEGs) bring what the simulator lacks: real discs and
bulges, real fields of stars and background galaxies, real noise, JPEG artefacts and display
stretches. A host where real clumps are unlikely (an elliptical) gets a few simulated clumps,
whose truth is then known exactly. This module is the core of that (no napari, no Qt);
``tools/make_real_training_set.py`` builds a training folder with it and
``docs/real-sky-training.md`` describes the choices and the calibration.

* :func:`estimate_psf_fwhm` measures the PSF FWHM (pixels) of a colour image from its most
  compact point-like sources;
* :func:`host_mask_from_light` is a simple footprint of the central galaxy (a fallback for
  :func:`napari_clumps.host.find_host`);
* :func:`inject_clumps` adds PSF-sized, blue clumps on a host and returns their truth boxes;
* :func:`measure_clump` measures contrast, colour, size and noise at a position (calibration).

Pixel coordinates follow :mod:`napari_clumps.pixels`: 0-based pixel edges, x = column,
y = row, boxes ``(x_min, y_min, x_max, y_max)``.

Display values and flux
-----------------------
Survey JPEGs are asinh-stretched display values, not fluxes, and the stretch of a given JPEG is
not known. Clumps are added in an *approximately linearised* space and stretched back: SDSS,
Legacy Surveys and this project's composites use the Lupton et al. (2004) stretch of the mean of
the channels with colour-preserving scaling, which :func:`linearise_rgb` inverts for a nominal
non-linearity :data:`BETA` (``I = sinh(BETA D) / sinh(BETA)``) and :func:`restretch_rgb` redoes
exactly. This keeps what a stretch does to a source added to a background: the same clump shows
less on a bright bulge than on a faint outer disc, and its profile flattens near white. Adding
in display space instead would make a clump equally visible everywhere. BETA is nominal, but the
contrasts are *measured in the same space* on real clumps (:func:`measure_clump`, run on the real
development set by ``tools/make_real_training_set.py --calibrate``), so an error in BETA is
absorbed by the calibration to first order: injected clumps reproduce what real clumps show when
measured the same way (the closure check in docs/real-sky-training.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# Box side over PSF FWHM (the Clump Scout convention) and the clump counts of Clump Scout galaxies:
# one definition, in the simulator.
from .simulate import BOX_SIDE_PER_FWHM, SimulationSettings

#: Nominal asinh non-linearity of survey JPEGs: display d in 0-1 <-> x = sinh(BETA d)/sinh(BETA).
#: With 3, display 0.1 / 0.5 / 1.0 are x = 0.03 / 0.21 / 1: a dynamic range of ~30 between a faint
#: disc and a saturated core, as in SDSS and Legacy Surveys cutouts.
BETA = 3.0


def linearise(display) -> np.ndarray:
    """Display values (uint8 0-255 or floats 0-1) to the approximately linear space, 0-1 floats.

    Works on any shape, value by value: ``x = sinh(BETA d) / sinh(BETA)``.
    """
    display = np.asarray(display)
    d = display.astype(np.float64) / 255.0 if display.dtype == np.uint8 else display.astype(np.float64)
    return np.sinh(BETA * d) / np.sinh(BETA)


def delinearise(linear) -> np.ndarray:
    """The inverse of :func:`linearise`, as 0-1 floats (not clipped above)."""
    return np.arcsinh(np.clip(linear, 0, None) * np.sinh(BETA)) / BETA


def linearise_rgb(rgb) -> np.ndarray:
    """``(H, W, 3)`` display colours to linear channels, inverting a Lupton et al. (2004) stretch.

    SDSS, Legacy Surveys and this project's composites stretch the *mean* of the channels,
    ``D = f(I)``, and scale every channel by ``f(I) / I`` so that colours are kept. The inverse:
    ``I = f^-1(D)`` (:func:`linearise`) and ``x_c = d_c I / D``. Exact for Lupton composites
    of stretch BETA (this project's use Q = 3 by default), approximate for others.
    """
    d = np.asarray(rgb, dtype=np.float64) / 255.0
    mean = d.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(mean > 0, linearise(mean) / mean, BETA / np.sinh(BETA))
    return d * ratio[..., None]


def restretch_rgb(linear) -> np.ndarray:
    """The inverse of :func:`linearise_rgb`: linear channels to ``(H, W, 3)`` uint8 display colours.

    A pixel whose brightest channel would pass 1 is scaled down as a whole, keeping its colour
    (as astropy's ``make_lupton_rgb`` does).
    """
    x = np.clip(np.asarray(linear, dtype=np.float64), 0, None)
    mean = x.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(mean > 0, delinearise(mean) / mean, np.sinh(BETA) / BETA)
    d = x * ratio[..., None]
    peak = d.max(axis=-1, keepdims=True)
    d = np.where(peak > 1, d / np.maximum(peak, 1e-12), d)
    return np.clip(np.rint(d * 255.0), 0, 255).astype(np.uint8)


def _luminance(rgb) -> np.ndarray:
    """Linearised mean of the display channels, (H, W) floats (Lupton: the stretched quantity)."""
    d = np.asarray(rgb)
    d = d.astype(np.float64) / 255.0 if d.dtype == np.uint8 else d.astype(np.float64)
    return linearise(d.mean(axis=-1) if d.ndim == 3 else d)


# ----------------------------------------------------------------------------- PSF


@dataclass
class PsfSource:
    """One fitted compact source: centre (edge convention), FWHM (px), axis ratio, peak S/N."""

    x: float
    y: float
    fwhm: float
    axis_ratio: float
    snr: float


#: Sources fitted per image: the brightest unsaturated peaks of the high-pass image.
PSF_MAX_CANDIDATES = 60
#: Peak significance (high-pass peak / sky noise) of a candidate: faint sources give noisy widths.
PSF_MIN_SNR = 8.0
#: Noise floor of the band-passed image, in display levels (of 255) at the sky.
PSF_NOISE_FLOOR_LEVELS = 1.0
#: A candidate whose brightest display pixel is at least this (0-1) is saturated (flat top).
PSF_SATURATION = 0.92
#: Point-like: the fitted elliptical Gaussian's minor/major axis ratio is at least this.
PSF_MIN_AXIS_RATIO = 0.7
#: Narrower fits are noise spikes or JPEG artefacts: a PSF under 1.5 px is undersampled anyway.
PSF_MIN_FWHM = 1.5
#: At least this many point-like sources are needed to say anything.
PSF_MIN_SOURCES = 3


def _fit_gaussian(stamp: np.ndarray, x0: float, y0: float, fwhm0: float):
    """Least-squares elliptical Gaussian + plane on a stamp; returns (x, y, fwhm, axis ratio, amp) or None.

    Coordinates are pixel centres of the stamp (0-based, centre-of-pixel at integers).
    """
    from scipy.optimize import least_squares

    rows, cols = np.mgrid[: stamp.shape[0], : stamp.shape[1]]
    rows, cols, values = rows.ravel().astype(float), cols.ravel().astype(float), stamp.ravel()
    s0 = fwhm0 / 2.3548
    background = float(np.percentile(values, 20))
    amplitude = float(values.max() - background)
    if amplitude <= 0:
        return None

    def residual(p):
        amp, xc, yc, sa, sb, theta, c0, cx, cy = p
        ct, st = np.cos(theta), np.sin(theta)
        dx, dy = cols - xc, rows - yc
        u, v = dx * ct + dy * st, -dx * st + dy * ct
        model = amp * np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2)) + c0 + cx * dx + cy * dy
        return model - values

    p0 = [amplitude, x0, y0, s0, s0, 0.0, background, 0.0, 0.0]
    try:  # Levenberg-Marquardt (MINPACK): several times faster than the bounded solvers
        fit = least_squares(residual, p0, method="lm", x_scale="jac", max_nfev=300)
    except (ValueError, np.linalg.LinAlgError):
        return None
    if not fit.success or not np.all(np.isfinite(fit.x)) or fit.x[0] <= 0:
        return None
    amp, xc, yc, sa, sb = fit.x[:5]
    sa, sb = abs(sa), abs(sb)
    major, minor = max(sa, sb), min(sa, sb)
    return float(xc), float(yc), float(2.3548 * np.sqrt(major * minor)), float(minor / major), float(amp)


#: Candidate peaks are looked for at these (inner, outer) Gaussian sigmas of a difference of
#: Gaussians (pixels): small PSFs (SDSS at native scale) and large ones (cutouts scaled up).
PSF_DETECTION_SCALES = ((1.0, 6.0), (3.0, 18.0))


def psf_sources(rgb, max_candidates: int = PSF_MAX_CANDIDATES) -> list[PsfSource]:
    """Compact, unsaturated sources of an image with their fitted FWHM (pixels).

    Candidates are the peaks of difference-of-Gaussians luminance images (two scales,
    :data:`PSF_DETECTION_SCALES`) that stand :data:`PSF_MIN_SNR` times their noise above their
    surroundings, brightest first; each is fitted with an elliptical Gaussian on a local plane,
    twice (the stamp resized to the first fit's width: +-2 FWHM). Stamps are cut at the image edge.
    """
    from scipy import ndimage

    rgb = np.asarray(rgb)
    luminance = _luminance(rgb)
    display_max = (rgb.max(axis=-1) if rgb.ndim == 3 else rgb).astype(float)
    display_max = display_max / 255.0 if rgb.dtype == np.uint8 else display_max
    height, width = luminance.shape
    candidates = {}
    for inner, outer in PSF_DETECTION_SCALES:
        bandpass = ndimage.gaussian_filter(luminance, inner) - ndimage.gaussian_filter(luminance, outer)
        # Its noise, measured on it: JPEG compression correlates the noise of neighbouring pixels,
        # so the pixel-to-pixel noise says little about the noise at a source's scale. Most of
        # the band-passed image is empty sky, so its MAD is the noise.
        bp_noise = 1.4826 * float(np.median(np.abs(bandpass - np.median(bandpass))))
        # A sky clipped to black (common in survey JPEGs) has almost no spread: the floor is the
        # quantisation step of the display, one level in 255 at the sky, in linearised units.
        bp_noise = max(bp_noise, PSF_NOISE_FLOOR_LEVELS / 255.0 * BETA / np.sinh(BETA))
        size = max(5, int(2 * inner) | 1)
        peaks = (bandpass == ndimage.maximum_filter(bandpass, size=size)) & (bandpass > PSF_MIN_SNR * bp_noise)
        for r, c in zip(*np.nonzero(peaks)):
            snr = bandpass[r, c] / bp_noise
            key = (int(r) // 3, int(c) // 3)
            if snr > candidates.get(key, (0, 0, 0))[0]:
                candidates[key] = (snr, int(r), int(c))
    ordered = sorted(candidates.values(), reverse=True)
    sources, seen = [], []
    for snr, r, c in ordered:
        if len(sources) >= max_candidates:
            break
        if any(abs(r - r2) <= 2 and abs(c - c2) <= 2 for r2, c2 in seen):
            continue
        seen.append((r, c))
        if display_max[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].max() >= PSF_SATURATION:
            continue
        if min(r, c, height - 1 - r, width - 1 - c) < 2:
            continue
        fwhm, fitted = 4.0, None
        for _ in range(2):  # fit, then refit on a stamp sized to the first width
            half = int(np.clip(np.ceil(2.0 * fwhm), 5, 40))
            r0, r1 = max(r - half, 0), min(r + half + 1, height)
            c0, c1 = max(c - half, 0), min(c + half + 1, width)
            fitted = _fit_gaussian(luminance[r0:r1, c0:c1], c - c0, r - r0, fwhm)
            if fitted is None:
                break
            fwhm = fitted[2]
        if fitted is None:
            continue
        xc, yc, fwhm, axis_ratio, amplitude = fitted
        if abs(xc - (c - c0)) > 2 or abs(yc - (r - r0)) > 2 or not PSF_MIN_FWHM <= fwhm <= 60:
            continue
        sources.append(PsfSource(x=c0 + xc + 0.5, y=r0 + yc + 0.5, fwhm=fwhm, axis_ratio=axis_ratio, snr=float(snr)))
    return sources


def estimate_psf_fwhm(rgb) -> float | None:
    """PSF FWHM in pixels, measured from the image's most compact point-like sources, or None.

    ``rgb``: ``(H, W, 3)`` uint8 display values (or ``(H, W)``). Stars and unresolved clumps are
    the most compact sources of an image, so the PSF is the *lower envelope* of the fitted widths:
    among round (axis ratio >= :data:`PSF_MIN_AXIS_RATIO`), unsaturated, significant sources
    (:func:`psf_sources`), the median width of those within [1, 1.35] x the 20th percentile.
    Returns None with fewer than :data:`PSF_MIN_SOURCES` such sources.

    Accuracy (docs/real-sky-training.md): synthetic star fields (Moffat PSF 2.5-9 px, Lupton
    Q = 3, JPEG 90): estimate / true 0.84-1.10. The simulator's galaxies with up to 10 stars
    (Q = 3 composite, JPEG 90): an answer for 22 of 40, ratio 5 / 50 / 95 % = 0.83 / 1.00 / 1.21.
    In the simulator's own harsh JPEG styles it mostly returns None (few unsaturated stars). On 32
    of the 37 real SDSS Stripe 82 development JPEGs it answers, tracking the pixel scale (91 %
    within 25 % of the median ratio) at 1.77 x the nominal 1.2" seeing; stars there measure
    1.05 x the estimate, so it is the size of a point source as the JPEG shows it.
    """
    sources = [s for s in psf_sources(rgb) if s.axis_ratio >= PSF_MIN_AXIS_RATIO]
    if len(sources) < PSF_MIN_SOURCES:
        return None
    widths = np.sort([s.fwhm for s in sources])
    floor = float(np.percentile(widths, 20))
    core = widths[(widths >= floor) & (widths <= 1.35 * floor)]
    if len(core) < PSF_MIN_SOURCES:
        core = widths[:PSF_MIN_SOURCES]
    return float(np.median(core))


# ----------------------------------------------------------------------------- host mask


#: Smoothing (Gaussian sigma, px) and threshold (x sky noise) of :func:`host_mask_from_light`.
HOST_SMOOTHING_SIGMA = 1.5
HOST_THRESHOLD_SIGMA = 2.0
#: The host is the component under the image centre, or the nearest one within this fraction of
#: the image's smaller side (cutouts are centred on their galaxy).
HOST_CENTRE_TOLERANCE = 0.1


def host_mask_from_light(rgb) -> np.ndarray:
    """A simple footprint of the central galaxy: ``(H, W)`` bool, all False when there is none.

    The linearised luminance is smoothed (Gaussian sigma :data:`HOST_SMOOTHING_SIGMA` px), cut at
    the sky plus :data:`HOST_THRESHOLD_SIGMA` x the sky noise (sigma-clipped statistics of the
    smoothed image), and the connected component under the image centre (or the nearest within
    :data:`HOST_CENTRE_TOLERANCE` of the image size) is kept, its holes filled. No deblending: a
    neighbour that touches the host is part of it (:func:`napari_clumps.host.find_host` cuts it off).
    """
    from astropy.stats import sigma_clipped_stats
    from scipy import ndimage

    smoothed = ndimage.gaussian_filter(_luminance(rgb), HOST_SMOOTHING_SIGMA)
    height, width = smoothed.shape
    _, sky, noise = sigma_clipped_stats(smoothed, sigma=3.0, maxiters=5)
    if not np.isfinite(noise) or noise <= 0:
        noise = max(float(np.std(smoothed)), 1e-6)
    labels, n = ndimage.label(smoothed > sky + HOST_THRESHOLD_SIGMA * noise)
    if n == 0:
        return np.zeros((height, width), bool)
    label = labels[height // 2, width // 2]
    if label == 0:
        rows, cols = np.nonzero(labels)
        distance = np.hypot(rows + 0.5 - height / 2, cols + 0.5 - width / 2)
        nearest = int(np.argmin(distance))
        if distance[nearest] > HOST_CENTRE_TOLERANCE * min(height, width):
            return np.zeros((height, width), bool)
        label = labels[rows[nearest], cols[nearest]]
    return ndimage.binary_fill_holes(labels == label)


# ----------------------------------------------------------------------------- injection


@dataclass
class InjectionSettings:
    """Every number of :func:`inject_clumps`; where each comes from is said beside it.

    "Dev set" is the 37 real SDSS Stripe 82 galaxies with 213 catalogued clumps
    (the real development set, docs/data.md), measured with :func:`measure_clump` by
    ``tools/make_real_training_set.py --calibrate`` (numbers in docs/real-sky-training.md);
    "Clump Scout" is the 46,164 volunteer boxes of ``clumpscout_boxes.csv`` (docs/data.md).
    """

    #: Relative frequency of 1, 2, ..., 9 clumps per host: Clump Scout galaxies with boxes
    #: (1: 5175, 2: 8329, 3: 3573, 4: 1602, 5: 710, 6: 376, 7+: 191 split as in the simulator;
    #: median 2, mean 2.3 clumps per clumpy galaxy).
    count_weights: tuple = SimulationSettings.clump_count_weights
    #: Contrast = mean linearised excess within 0.5 PSF FWHM of the clump / the host's local light
    #: (median of the annulus 1.5-3 FWHM), log-normal: median and log-sigma, clipped to a range.
    #: Dev set, all 213 clumps: median 0.46, log-sigma 0.88 (measurement noise included),
    #: 10 / 25 / 75 / 90 % = 0.14 / 0.28 / 0.80 / 1.28; the 125 with excess > noise (the ones a
    #: volunteer could see: the dev README warns that some catalogue clumps are invisible in the
    #: JPEGs): median 0.69, 10 / 90 % = 0.29 / 1.49. Injected clumps follow the visible ones.
    contrast_median: float = 0.69
    contrast_log_sigma: float = 0.6
    contrast_range: tuple = (0.25, 2.0)
    #: The excess is also at least this many times the local noise (1.4826 MAD of the luminance
    #: in the same annulus, per pixel), uniformly: in the faint outskirts of an elliptical the
    #: contrast alone gives clumps nobody can see. Dev set excess / noise: 10 / 25 / 50 / 75 % =
    #: 0.43 / 0.69 / 1.18 / 1.88; the floor keeps injected clumps at the visible ones' level.
    min_snr_range: tuple = (0.8, 1.6)
    #: Bluer than the host's local light by this much, uniformly: 2.5 log10 of the clump's B/R
    #: (excess) over the host's B/R, magnitudes. Dev set: median 0.45, quartiles 0.18 / 0.82 (all);
    #: 0.49, 0.26 / 0.83 for clumps with excess > noise; 10 % measure redder than their host. The
    #: measurement dilutes colour (the annulus holds the clump's wings; JPEG halves chroma
    #: resolution): clumps injected with 0.4-1.4 measure 0.53 (0.29 / 0.80), like the real ones.
    blueness_range: tuple = (0.4, 1.4)
    #: Clump FWHM / PSF FWHM, uniformly. Clump Scout treats clumps as unresolved (boxes scale with
    #: the PSF); in the dev JPEGs real clumps measure 1.8 x the PSF (equivalent Gaussian from the
    #: core / shoulder light ratio; quartiles 1.5 / 2.2; stars measured the same way: 1.05).
    #: Host structure and noise widen every measurement: injected 1.0-1.6 measure 1.6 (1.4 / 2.0).
    size_range: tuple = (1.0, 1.6)
    #: Truth box side = this x PSF FWHM (Clump Scout convention; docs/data.md).
    box_side_per_fwhm: float = BOX_SIDE_PER_FWHM
    #: Clump centres at least this many PSF FWHM apart (= 0.8 box side, as in the simulator:
    #: volunteers' boxes rarely overlap much).
    min_separation_fwhm: float = 2.0
    #: Clump centres at least this fraction of a box side from the image edge (as the simulator).
    margin_box_fraction: float = 0.3
    #: Elliptical radius of the clump on its host (1 = the edge of the ellipse with the mask's
    #: area and second moments), drawn uniformly in radius (not area) in this range. Dev set (host
    #: footprints from napari_clumps.host.find_host): 10 / 50 / 90 % = 0.24 / 0.49 / 0.81;
    #: uniform on 0.2-0.85 gives 0.27 / 0.53 / 0.79 (injected, measured back: 0.24 / 0.53 / 0.81).
    #: (Clump Scout: centre distance median 52 px in a 200 px crop, on galaxies that fill the crop:
    #: also the middle of the disc.)
    radius_range: tuple = (0.2, 0.85)
    #: No clump where the display is already (nearly) saturated within 1 FWHM, or where the clump
    #: would take its peak pixel past this fraction of white: nothing could show but a flat disc.
    saturation: float = 0.95
    #: Placement tries per wanted clump before giving up (small hosts take fewer clumps).
    attempts_per_clump: int = 50


#: Aperture (radius, x PSF FWHM; at least 1 px), shoulder (core radius to this) and host annulus
#: (x PSF FWHM) of :func:`measure_clump`.
CORE_RADIUS_FWHM = 0.5
SHOULDER_FWHM = 1.0
ANNULUS_FWHM = (1.5, 3.0)


@dataclass
class ClumpMeasurement:
    """What :func:`measure_clump` measures at one position (linearised units, channels R, G, B)."""

    x: float
    y: float
    excess: np.ndarray  # (3,) mean excess over the local host light within the core aperture
    shoulder: np.ndarray  # (3,) mean excess between the core and SHOULDER_FWHM
    host: np.ndarray  # (3,) local host light: median of the annulus
    noise: float  # robust spread (1.4826 MAD) of the luminance in the annulus

    @property
    def contrast(self) -> float:
        """Core excess / local host light (luminance)."""
        host = float(self.host.mean())
        return float(self.excess.mean()) / host if host > 0 else float("inf")

    @property
    def concentration(self) -> float:
        """Core excess / shoulder excess (luminance): larger for more compact sources."""
        shoulder = float(self.shoulder.mean())
        return float(self.excess.mean()) / shoulder if shoulder > 0 else float("inf")

    @property
    def snr(self) -> float:
        return float(self.excess.mean()) / self.noise if self.noise > 0 else float("inf")

    @property
    def blueness(self) -> float:
        """2.5 log10 of (B/R of the excess) / (B/R of the host): > 0 is bluer than the host. NaN
        when an excess or host channel is not positive."""
        (er, _, eb), (hr, _, hb) = self.excess, self.host
        if min(er, eb, hr, hb) <= 0:
            return float("nan")
        return float(2.5 * np.log10((eb / er) / (hb / hr)))


def _apertures(shape, x: float, y: float, fwhm: float):
    """Pixel index arrays of the core, the shoulder and the annulus around edge-convention (x, y)."""
    height, width = shape
    outer = ANNULUS_FWHM[1] * fwhm
    r0, r1 = max(int(y - outer) - 1, 0), min(int(y + outer) + 2, height)
    c0, c1 = max(int(x - outer) - 1, 0), min(int(x + outer) + 2, width)
    rows, cols = np.mgrid[r0:r1, c0:c1]
    distance = np.hypot(cols + 0.5 - x, rows + 0.5 - y)
    core = distance <= max(CORE_RADIUS_FWHM * fwhm, 1.0)
    shoulder = ~core & (distance <= max(SHOULDER_FWHM * fwhm, 2.0))
    ring = (distance >= ANNULUS_FWHM[0] * fwhm) & (distance <= outer)
    return (rows[core], cols[core]), (rows[shoulder], cols[shoulder]), (rows[ring], cols[ring])


def measure_clump(linear_rgb: np.ndarray, x: float, y: float, fwhm: float) -> ClumpMeasurement:
    """Excess light, local host light and noise at edge-convention ``(x, y)`` of linear channels.

    ``linear_rgb``: :func:`linearise_rgb` of an image. The same measurement calibrates the
    injection on real clumps and checks the injected ones (closure).
    """
    core, shoulder, ring = _apertures(linear_rgb.shape[:2], x, y, fwhm)
    host = np.median(linear_rgb[ring], axis=0) if len(ring[0]) else np.zeros(3)
    excess = linear_rgb[core].mean(axis=0) - host if len(core[0]) else np.zeros(3)
    near = linear_rgb[shoulder].mean(axis=0) - host if len(shoulder[0]) else np.zeros(3)
    ring_lum = linear_rgb[ring].mean(axis=-1)
    noise = 1.4826 * float(np.median(np.abs(ring_lum - np.median(ring_lum)))) if len(ring_lum) else 0.0
    return ClumpMeasurement(x=float(x), y=float(y), excess=excess, shoulder=near, host=host, noise=noise)


def equivalent_size(concentration: float, fwhm: float) -> float:
    """The FWHM (in units of ``fwhm``) of a Gaussian whose :attr:`ClumpMeasurement.concentration`
    is ``concentration``, by the same pixel measurement on noiseless Gaussians; NaN when out of
    the tabulated 0.5-5 x range."""
    sizes, table = _concentration_table(round(float(fwhm), 2))
    if not np.isfinite(concentration) or not table[-1] <= concentration <= table[0]:
        return float("nan")
    return float(np.interp(concentration, table[::-1], sizes[::-1]))


@functools.lru_cache(maxsize=64)
def _concentration_table(fwhm: float):
    sizes = np.linspace(0.5, 5.0, 46)
    half = int(np.ceil(3 * fwhm * sizes[-1])) + 2
    table = []
    for size in sizes:
        image = np.zeros((2 * half, 2 * half, 3))
        _add_gaussian(image, half, half, size * fwhm, np.ones(3))
        table.append(measure_clump(image, half, half, fwhm).concentration)
    return sizes, np.asarray(table)  # concentration falls as the size grows


def _gaussian_core_mean(size_fwhm: float, psf_fwhm: float) -> float:
    """Mean of a unit-peak Gaussian of FWHM ``size_fwhm`` over the core aperture (radius R)."""
    sigma = size_fwhm / 2.3548
    radius = max(CORE_RADIUS_FWHM * psf_fwhm, 1.0)
    t = radius**2 / (2 * sigma**2)
    return float((1 - np.exp(-t)) / t)


def _mask_ellipse(mask: np.ndarray):
    """Centre (edge convention), semi-axes and angle of the ellipse with the mask's area and moments."""
    rows, cols = np.nonzero(mask)
    x, y = cols + 0.5, rows + 0.5
    xc, yc = x.mean(), y.mean()
    cov = np.cov(np.vstack([x - xc, y - yc])) if len(x) > 2 else np.eye(2)
    values, vectors = np.linalg.eigh(cov + 1e-9 * np.eye(2))
    axis_ratio = float(np.sqrt(max(values[0], 1e-9) / max(values[1], 1e-9)))
    semi_major = float(np.sqrt(len(x) / (np.pi * axis_ratio)))
    theta = float(np.arctan2(vectors[1, 1], vectors[0, 1]))
    return xc, yc, semi_major, semi_major * axis_ratio, theta


def _elliptical_radius(x, y, ellipse):
    xc, yc, a, b, theta = ellipse
    dx, dy = x - xc, y - yc
    along = (dx * np.cos(theta) + dy * np.sin(theta)) / a
    across = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
    return np.hypot(along, across)


def inject_clumps(
    rgb: np.ndarray,
    host_mask: np.ndarray,
    rng: np.random.Generator,
    settings: InjectionSettings | None = None,
    psf_fwhm: float | None = None,
):
    """Add simulated clumps to a real galaxy; returns ``(new_rgb, boxes, labels)``.

    Parameters
    ----------
    rgb : (H, W, 3) uint8
        A colour cutout (display values, e.g. a survey JPEG).
    host_mask : (H, W) bool
        Where the host galaxy's light is (:func:`napari_clumps.host.find_host` ``.mask`` or
        :func:`host_mask_from_light`). Clumps are centred only where it is True.
    rng : numpy.random.Generator
        Everything random comes from it: the same generator state gives the same output.
    settings : InjectionSettings
        The numbers; the defaults are calibrated on real clumps (docs/real-sky-training.md).
    psf_fwhm : float, optional
        PSF FWHM in pixels; measured with :func:`estimate_psf_fwhm` when None.

    Returns
    -------
    new_rgb : (H, W, 3) uint8
        The image with the clumps; pixels further than 3 clump FWHM from every clump are
        unchanged, bit for bit.
    boxes : (N, 4) float
        Truth boxes, pixel-edge convention ``(x_min, y_min, x_max, y_max)``: squares of side
        ``box_side_per_fwhm`` x PSF FWHM centred on each clump, clipped to the image.
    labels : (N,) int
        All 1 (``clump``, :data:`napari_clumps.detections.CLASS_NAMES`).

    Each clump is a circular Gaussian of FWHM ``size_range`` x PSF, added in the linearised space
    (:func:`linearise_rgb`) with a core excess of ``contrast`` x the host's local light (at least
    ``min_snr`` x the local noise), bluer than the local host light by ``blueness`` magnitudes in
    B/R; centred on the mask at an elliptical host radius in ``radius_range``, at least
    ``min_separation_fwhm`` PSF FWHM from each other, not where the display is saturated. Fewer
    clumps than drawn are injected when the host has no room; none (and no error) when the mask is
    empty or the PSF cannot be measured.

    Raises
    ------
    ValueError
        When ``rgb`` is not (H, W, 3) or the mask's shape differs.
    """
    s = settings or InjectionSettings()
    rgb = np.asarray(rgb)
    host_mask = np.asarray(host_mask, bool)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) colour image, got shape {rgb.shape}")
    if host_mask.shape != rgb.shape[:2]:
        raise ValueError(f"host mask of shape {host_mask.shape} does not match the image {rgb.shape[:2]}")
    rgb = rgb.astype(np.uint8, copy=False)
    empty = (rgb.copy(), np.zeros((0, 4)), np.zeros(0, int))
    if not host_mask.any():
        return empty
    fwhm = psf_fwhm if psf_fwhm is not None else estimate_psf_fwhm(rgb)
    if fwhm is None or not np.isfinite(fwhm) or fwhm <= 0:
        return empty
    fwhm = float(fwhm)
    height, width = host_mask.shape
    side = s.box_side_per_fwhm * fwhm
    margin = s.margin_box_fraction * side
    counts = np.asarray(s.count_weights, float)
    n_wanted = int(rng.choice(np.arange(1, len(counts) + 1), p=counts / counts.sum()))

    ellipse = _mask_ellipse(host_mask)
    rows, cols = np.nonzero(host_mask)
    radius = _elliptical_radius(cols + 0.5, rows + 0.5, ellipse)
    inside = (
        (radius >= s.radius_range[0])
        & (radius <= s.radius_range[1])
        & (cols + 0.5 >= margin)
        & (cols + 0.5 <= width - margin)
        & (rows + 0.5 >= margin)
        & (rows + 0.5 <= height - margin)
    )
    rows, cols, radius = rows[inside], cols[inside], radius[inside]
    if not len(rows):
        return empty
    # Uniform in radius: each pixel weighted by 1 / radius (the area at a radius grows with it).
    cdf = np.cumsum(1.0 / np.maximum(radius, 0.5 / max(ellipse[2], 1.0)))
    cdf /= cdf[-1]

    linear = linearise_rgb(rgb)
    display_max = rgb.max(axis=-1) / 255.0
    added = np.zeros_like(linear)
    centres = []
    for _ in range(n_wanted * s.attempts_per_clump):
        if len(centres) == n_wanted:
            break
        k = min(int(np.searchsorted(cdf, rng.random())), len(rows) - 1)
        x, y = cols[k] + rng.uniform(0, 1), rows[k] + rng.uniform(0, 1)
        contrast = float(np.clip(s.contrast_median * np.exp(rng.normal(0, s.contrast_log_sigma)), *s.contrast_range))
        min_snr = rng.uniform(*s.min_snr_range)
        blueness = rng.uniform(*s.blueness_range)
        size = rng.uniform(*s.size_range) * fwhm
        if any(np.hypot(x - cx, y - cy) < s.min_separation_fwhm * fwhm for cx, cy in centres):
            continue
        r0, r1 = max(int(y - fwhm), 0), min(int(y + fwhm) + 1, height)
        c0, c1 = max(int(x - fwhm), 0), min(int(x + fwhm) + 1, width)
        if display_max[r0:r1, c0:c1].max() >= s.saturation:
            continue
        local = measure_clump(linear, x, y, fwhm)
        host = np.clip(local.host, 1e-6, None)
        if local.host.mean() <= 0:
            continue
        excess = max(contrast * float(host.mean()), min_snr * local.noise)
        # Colour: the host's local colour made bluer in B/R by `blueness` mag, split evenly
        # between R (down) and B (up); normalised to unit mean so that the luminance is `excess`.
        colour = host * np.array([10 ** (-0.2 * blueness), 1.0, 10 ** (0.2 * blueness)])
        colour = colour / colour.mean()
        peak = excess / _gaussian_core_mean(size, fwhm)
        # A clump that would push its peak pixel past white shows as a flat disc of clipped
        # colour: not a clump any survey shows. Such a draw is rejected.
        row, col = min(int(y), height - 1), min(int(x), width - 1)
        top = linear[row, col] + added[row, col] + peak * colour
        if restretch_rgb(top[None, None, :]).max() >= 255 * s.saturation:
            continue
        _add_gaussian(added, x, y, size, peak * colour)
        centres.append((x, y))
    if not centres:
        return empty
    new_rgb = restretch_rgb(linear + added)
    changed = np.any(added > 0, axis=-1)
    new_rgb[~changed] = rgb[~changed]  # untouched pixels keep their exact bytes
    half = side / 2
    boxes = np.array([[x - half, y - half, x + half, y + half] for x, y in centres], float)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    return new_rgb, boxes, np.ones(len(boxes), int)


def _add_gaussian(image: np.ndarray, x: float, y: float, fwhm: float, amplitude: np.ndarray) -> None:
    """Add a circular Gaussian (peak ``amplitude`` per channel) at edge-convention (x, y), in place,
    truncated at 3 FWHM."""
    height, width = image.shape[:2]
    reach = 3.0 * fwhm
    r0, r1 = max(int(y - reach), 0), min(int(y + reach) + 1, height)
    c0, c1 = max(int(x - reach), 0), min(int(x + reach) + 1, width)
    rows, cols = np.mgrid[r0:r1, c0:c1]
    r2 = (cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2
    profile = np.exp(-0.5 * r2 / (fwhm / 2.3548) ** 2)
    profile[r2 > reach**2] = 0.0
    image[r0:r1, c0:c1] += profile[..., None] * np.asarray(amplitude)[None, None, :]
