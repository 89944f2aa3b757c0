"""Simulated SDSS-like clumpy galaxies with known truth.

Each galaxy is drawn in g, r, i: an exponential disc (random inclination, position angle,
optional two-armed spiral pattern) with an optional redder bulge, 0-9 unresolved star-forming
clumps bluer than the disc (a few "odd" red ones), unrelated stars, background galaxies and
compact blue sources beyond the disc as distractors (a star over the disc is labelled an odd
clump, as volunteers do), a Moffat PSF, sky and source noise. Each
galaxy's JPEG has its own stretch, colour saturation and JPEG quality. Truth boxes are squares of side
``BOX_SIDE_PER_FWHM`` x PSF FWHM around each clump, as in Galaxy Zoo: Clump Scout.

The distributions (PSF size, clumps per galaxy, clump distance from the centre, odd fraction)
are calibrated to the volunteer boxes in ``shared/data/clumpscout_boxes.csv``; see
``docs/simulation.md`` for the comparison. Everything is deterministic for a seed: galaxy ``i``
of seed ``s`` is the same whatever ``n`` is.

Outputs of :func:`write_dataset`: per galaxy a FITS band cube (3, H, W) with a celestial TAN
WCS (array row 0 = FITS row 1 = south; north up, east left as shown in DS9) and a colour JPEG
as survey cutout services make them (north up, so its rows are the FITS rows flipped), plus
``truth.csv`` in the detections format (score 1) and ``truth.images.csv`` listing every image.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .composite import LUPTON_Q, WHITE_PERCENTILE

BOX_SIDE_PER_FWHM = 2.5
#: Where the galaxy is seen: its (unconvolved) r surface brightness is at least this many times
#: the sky noise per pixel. Clumps lie there; a star there counts as an odd clump.
ON_GALAXY_SNR = 2.0
#: Look-alike negatives (stars, compact blue sources) only where the galaxy is fainter than this;
#: in between, where nobody could say whether a source is on the galaxy, none are placed.
OFF_GALAXY_SNR = 0.5
BANDS = ("g", "r", "i")
TRUTH_MODEL_ID = "simulation-truth"

# Colours as flux ratios g:r:i relative to r (from g-r and r-i in magnitudes).
def _flux_ratios(g_r: float, r_i: float) -> np.ndarray:
    return np.array([10 ** (-0.4 * g_r), 1.0, 10 ** (0.4 * r_i)])


@dataclass
class SimulationSettings:
    """Knobs of the simulator; the defaults are calibrated to Clump Scout volunteer boxes."""

    size: int = 200
    #: Box side (= 2.5 x FWHM) distribution: log-normal, median and log-sigma, clipped range.
    box_side_median: float = 16.6
    box_side_log_sigma: float = 0.35
    box_side_range: tuple = (4.3, 48.2)
    #: PSF FWHM in arcsec (sets the pixel scale together with the FWHM in pixels).
    seeing_arcsec: tuple = (1.0, 1.8)
    #: Relative frequency of 1, 2, ..., 9 clumps among clumpy galaxies (Clump Scout: 7+ = 191).
    clump_count_weights: tuple = (5175, 8329, 3573, 1602, 710, 376, 100, 55, 36)
    #: Fraction of galaxies drawn without clumps (a star over the disc can still add an odd
    #: clump: ~14 % end up with none).
    clump_free_fraction: float = 0.2
    #: Fraction of injected clumps that are "odd" (red, compact; volunteers' label 2). Stars over
    #: the disc add odd clumps: ~27 % of all truth boxes are odd, as in Clump Scout (27.6 %).
    odd_fraction: float = 0.16
    #: Disc scale length in pixels (log-uniform range).
    disc_scale_px: tuple = (24.0, 45.0)
    #: Sky noise per pixel in r, in units of the disc's central r surface brightness.
    noise_range: tuple = (0.008, 0.04)
    max_stars: int = 1
    max_background_galaxies: int = 3
    #: Compact blue background sources (clump look-alikes) beyond the disc, up to this many.
    max_compact_blue_sources: int = 2
    #: Each galaxy's JPEG gets its own look, as cutout services differ: asinh softening Q,
    #: percentile mapped to white, colour saturation (1 = as computed) and JPEG quality.
    jpeg_q_range: tuple = (1.5, 8.0)
    jpeg_white_percentile_range: tuple = (99.0, 99.95)
    jpeg_saturation_range: tuple = (0.7, 1.5)
    jpeg_quality_range: tuple = (50, 95)


@dataclass
class Clump:
    x: float
    y: float
    flux_r: float
    label: str


@dataclass
class JpegStyle:
    """How one galaxy's colour JPEG is made (see :class:`SimulationSettings`)."""

    q: float = LUPTON_Q
    white_percentile: float = WHITE_PERCENTILE
    saturation: float = 1.0
    quality: int = 90


@dataclass
class SimulatedGalaxy:
    """One simulated galaxy: pixels, truth and the settings that made it."""

    bands: np.ndarray  # (3, H, W) float32, array rows as in the FITS file
    clumps: list
    psf_fwhm_px: float
    pixel_scale_arcsec: float
    ra: float
    dec: float
    index: int
    seed: int
    jpeg_style: JpegStyle = field(default_factory=JpegStyle)

    @property
    def box_side(self) -> float:
        return BOX_SIDE_PER_FWHM * self.psf_fwhm_px

    def truth_boxes(self) -> np.ndarray:
        """``(N, 4)`` edge-convention boxes, clipped to the image."""
        size = self.bands.shape[-1]
        half = self.box_side / 2
        boxes = np.array([[c.x - half, c.y - half, c.x + half, c.y + half] for c in self.clumps])
        return np.clip(boxes.reshape(-1, 4), 0, size)

    def truth_labels(self) -> list[str]:
        return [c.label for c in self.clumps]

    def wcs(self):
        """Celestial TAN WCS: north up, east left when FITS row 1 is at the bottom."""
        from astropy.wcs import WCS

        size = self.bands.shape[-1]
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [self.ra, self.dec]
        wcs.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]  # FITS pixels are 1-based centres
        scale = self.pixel_scale_arcsec / 3600
        wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
        wcs.wcs.radesys = "ICRS"
        return wcs


def _moffat(xx, yy, x0, y0, flux, fwhm, beta=3.5):
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    r2 = ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha**2
    return flux * (beta - 1) / (np.pi * alpha**2) * (1 + r2) ** (-beta)


def _sersic(xx, yy, x0, y0, amplitude, r_eff, n, axis_ratio, theta):
    from astropy.modeling.models import Sersic2D

    model = Sersic2D(amplitude=amplitude, r_eff=r_eff, n=n, x_0=x0, y_0=y0,
                     ellip=1 - axis_ratio, theta=theta)
    return model(xx, yy)


def simulate_galaxy(seed: int, index: int = 0, settings: SimulationSettings | None = None) -> SimulatedGalaxy:
    """Galaxy ``index`` of the data set made with ``seed``."""
    from astropy.convolution import Moffat2DKernel, convolve_fft

    s = settings or SimulationSettings()
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    # Later additions to the simulator draw from their own stream, so that everything the
    # first stream draws (the galaxy, its clumps, stars, noise) stays as it was for a seed.
    extra_rng = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))
    size = s.size
    centres = np.arange(size) + 0.5  # pixel centres in edge coordinates
    xx, yy = np.meshgrid(centres, centres)

    side = float(np.clip(s.box_side_median * np.exp(rng.normal(0, s.box_side_log_sigma)), *s.box_side_range))
    fwhm = side / BOX_SIDE_PER_FWHM
    pixel_scale = rng.uniform(*s.seeing_arcsec) / fwhm

    # Disc (+ spiral arms) and bulge, then the PSF.
    cx, cy = size / 2 + rng.normal(0, 2, 2)
    h = float(np.exp(rng.uniform(*np.log(s.disc_scale_px))))
    cos_i = rng.uniform(0.3, 1.0)  # inclination up to ~73 deg: volunteers skip edge-on discs
    axis_ratio = np.hypot(cos_i, 0.15)  # discs have thickness
    theta = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)  # disc-plane coordinates
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / axis_ratio
    radius, azimuth = np.hypot(u, v), np.arctan2(v, u)
    disc = np.exp(-radius / h)
    arm_amplitude = rng.choice([0.0, rng.uniform(0.2, 0.7)], p=[0.3, 0.7])
    if arm_amplitude:
        pitch = np.radians(rng.uniform(12, 30))
        phase = 2 * (azimuth - np.log(radius / h + 1e-3) / np.tan(pitch)) + rng.uniform(0, 2 * np.pi)
        disc *= 1 + arm_amplitude * np.cos(phase) * np.clip(radius / h, 0, 1)
    disc_colour = _flux_ratios(rng.uniform(0.4, 0.7), rng.uniform(0.2, 0.4))
    images = disc_colour[:, None, None] * disc[None]
    if rng.random() < 0.7:
        bulge = _sersic(xx, yy, cx, cy, 1.0, rng.uniform(0.15, 0.4) * h, rng.uniform(1.5, 4.0),
                        rng.uniform(0.7, 1.0), theta)
        bulge *= rng.uniform(0.5, 3.0) / bulge.max()
        images += _flux_ratios(rng.uniform(0.7, 0.95), rng.uniform(0.35, 0.5))[:, None, None] * bulge
    disc_r = images[1].copy()  # local surface brightness, for clump contrast
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / 3.5) - 1))
    kernel = Moffat2DKernel(gamma=alpha, alpha=3.5, x_size=int(8 * fwhm) | 1, y_size=int(8 * fwhm) | 1)
    images = np.stack([convolve_fft(band, kernel, boundary="fill", normalize_kernel=True) for band in images])

    noise_r = rng.uniform(*s.noise_range)
    psf_area = np.pi * (fwhm / 2.3548) ** 2 * 2  # 2 pi sigma^2 of a Gaussian of that FWHM

    def galaxy_snr(x, y):  # the galaxy's local surface brightness over the sky noise per pixel
        return disc_r[int(np.clip(y, 0, size - 1)), int(np.clip(x, 0, size - 1))] / noise_r

    def room_for_truth_box(x, y):  # not cut by the image edge, not piled on another truth box
        margin = 0.3 * side  # volunteers' boxes rarely overlap much
        return (margin < x < size - margin and margin < y < size - margin
                and not any(np.hypot(x - c.x, y - c.y) < 0.8 * side for c in clumps))

    # Clumps: disc-plane positions weighted to the outer disc, projected like the disc.
    clumps = []
    n_clumps = 0
    if rng.random() >= s.clump_free_fraction:
        weights = np.asarray(s.clump_count_weights, float)
        n_clumps = int(rng.choice(np.arange(1, len(weights) + 1), p=weights / weights.sum()))
    attempts = 0
    while len(clumps) < n_clumps and attempts < 200:
        attempts += 1
        r_disc = h * rng.gamma(6.0, 0.36)
        phi = rng.uniform(0, 2 * np.pi)
        uu, vv = r_disc * np.cos(phi), r_disc * np.sin(phi) * axis_ratio
        x = cx + uu * np.cos(theta) - vv * np.sin(theta)
        y = cy + uu * np.sin(theta) + vv * np.cos(theta)
        if not room_for_truth_box(x, y):
            continue
        if galaxy_snr(x, y) < ON_GALAXY_SNR:
            continue  # volunteers mark clumps in the galaxy, not in empty sky
        local = disc_r[int(y), int(x)]
        # Peak above the local disc: a contrast vs the disc and a floor vs the noise.
        peak = max(rng.uniform(0.5, 3.0) * local, rng.uniform(8, 25) * noise_r)
        label = "odd_clump" if rng.random() < s.odd_fraction else "clump"
        clumps.append(Clump(x=float(x), y=float(y), flux_r=float(peak * psf_area), label=label))
    for c in clumps:
        colour = (_flux_ratios(rng.uniform(1.0, 1.5), rng.uniform(0.4, 0.7)) if c.label == "odd_clump"
                  else _flux_ratios(rng.uniform(-0.1, 0.3), rng.uniform(-0.2, 0.1)))
        images += colour[:, None, None] * _moffat(xx, yy, c.x, c.y, c.flux_r, fwhm)[None]

    # Foreground stars (point sources, redder than clumps). Over the disc, no one can tell a star
    # from a red clump in one image; volunteers box it and call it odd, and so does the truth.
    for _ in range(rng.integers(0, s.max_stars + 1)):
        x, y = rng.uniform(0, size, 2)
        flux = psf_area * noise_r * np.exp(rng.uniform(np.log(8), np.log(400)))
        colour = _flux_ratios(rng.uniform(0.5, 1.6), rng.uniform(0.1, 0.6))
        snr = galaxy_snr(x, y)
        if OFF_GALAXY_SNR <= snr < ON_GALAXY_SNR:
            continue
        if snr >= ON_GALAXY_SNR:
            if not room_for_truth_box(x, y):
                continue
            clumps.append(Clump(x=float(x), y=float(y), flux_r=float(flux), label="odd_clump"))
        images += colour[:, None, None] * _moffat(xx, yy, x, y, flux, fwhm)[None]
    for _ in range(rng.integers(0, s.max_background_galaxies + 1)):
        x, y = rng.uniform(0, size, 2)
        if np.hypot(x - cx, y - cy) < 1.5 * h:
            continue
        blob = _sersic(xx, yy, x, y, 1.0, rng.uniform(1.5, 6.0), rng.uniform(1.0, 4.0),
                       rng.uniform(0.3, 1.0), rng.uniform(0, np.pi))
        blob *= noise_r * rng.uniform(5, 40) / blob.max()
        blob = convolve_fft(blob, kernel, boundary="fill", normalize_kernel=True)
        images += _flux_ratios(rng.uniform(0.8, 1.6), rng.uniform(0.3, 0.7))[:, None, None] * blob[None]

    # Compact blue background sources: clump look-alikes, but off the galaxy.
    for _ in range(extra_rng.integers(0, s.max_compact_blue_sources + 1)):
        x, y = extra_rng.uniform(0, size, 2)
        if galaxy_snr(x, y) >= OFF_GALAXY_SNR:
            continue
        flux = psf_area * noise_r * np.exp(extra_rng.uniform(np.log(8), np.log(80)))
        width = np.hypot(fwhm, extra_rng.uniform(0, 1.5 * fwhm))  # point-like to barely resolved
        colour = _flux_ratios(extra_rng.uniform(-0.1, 0.4), extra_rng.uniform(-0.2, 0.2))
        images += colour[:, None, None] * _moffat(xx, yy, x, y, flux, width)[None]
    jpeg_style = JpegStyle(q=float(extra_rng.uniform(*s.jpeg_q_range)),
                           white_percentile=float(extra_rng.uniform(*s.jpeg_white_percentile_range)),
                           saturation=float(extra_rng.uniform(*s.jpeg_saturation_range)),
                           quality=int(extra_rng.integers(s.jpeg_quality_range[0], s.jpeg_quality_range[1] + 1)))

    # Sky noise (g is noisier relative to its signal, as in SDSS) plus source noise.
    band_noise = noise_r * np.array([1.3, 1.0, 1.2])[:, None, None]
    variance = band_noise**2 + np.clip(images, 0, None) * noise_r * 0.05
    images = images + rng.normal(size=images.shape) * np.sqrt(variance)

    ra = float(rng.uniform(0, 360))
    dec = float(np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-10)), np.sin(np.radians(60))))))
    return SimulatedGalaxy(bands=images.astype(np.float32), clumps=clumps, psf_fwhm_px=fwhm,
                           pixel_scale_arcsec=float(pixel_scale), ra=ra, dec=dec, index=index, seed=seed,
                           jpeg_style=jpeg_style)


def galaxy_name(index: int) -> str:
    return f"sim_{index:05d}"


def write_fits(galaxy: SimulatedGalaxy, path) -> None:
    """FITS band cube with the celestial WCS, written atomically."""
    from astropy.io import fits

    from .atomic import atomic_path

    header = galaxy.wcs().to_header()
    header["BANDS"] = (",".join(BANDS), "band of each plane, blue to red")
    header["BUNIT"] = ("arbitrary", "flux per pixel, sky subtracted")
    header["PSFFWHM"] = (round(galaxy.psf_fwhm_px, 4), "PSF FWHM in pixels")
    header["NCLUMPS"] = (len(galaxy.clumps), "injected clumps")
    header["SIMSEED"] = (galaxy.seed, "napari-clumps simulate seed")
    header["SIMINDEX"] = (galaxy.index, "galaxy index within the seed")
    with atomic_path(path) as tmp:
        fits.PrimaryHDU(galaxy.bands, header=header).writeto(tmp, overwrite=True, output_verify="exception")


def write_jpeg(galaxy: SimulatedGalaxy, path) -> None:
    """North-up colour JPEG (rows flipped w.r.t. the FITS array) in the galaxy's JPEG style."""
    from PIL import Image, ImageEnhance

    from .atomic import atomic_path
    from .composite import lupton_composite

    style = galaxy.jpeg_style
    rgb = lupton_composite(galaxy.bands, BANDS, q=style.q, white_percentile=style.white_percentile)[::-1]
    image = ImageEnhance.Color(Image.fromarray(np.ascontiguousarray(rgb))).enhance(style.saturation)
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=style.quality)


def write_dataset(outdir, n: int = 10, seed: int = 0, settings: SimulationSettings | None = None,
                  progress=None) -> Path:
    """Simulate ``n`` galaxies into ``outdir``; returns the truth CSV path."""
    import pandas as pd

    from .detections import detections_frame, write_detections
    from .pixels import flip_boxes_vertically

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    tables, images = [], []
    for index in (progress or (lambda it: it))(range(n)):
        galaxy = simulate_galaxy(seed, index, settings)
        name = galaxy_name(index)
        write_fits(galaxy, outdir / f"{name}.fits")
        write_jpeg(galaxy, outdir / f"{name}.jpg")
        boxes, labels = galaxy.truth_boxes(), galaxy.truth_labels()
        size = galaxy.bands.shape[-1]
        tables.append(detections_frame(f"{name}.fits", boxes, labels, scores=1.0,
                                       wcs=galaxy.wcs(), model=TRUTH_MODEL_ID))
        tables.append(detections_frame(f"{name}.jpg", flip_boxes_vertically(boxes, size), labels,
                                       scores=1.0, wcs=None, model=TRUTH_MODEL_ID))
        for file_name in (f"{name}.fits", f"{name}.jpg"):
            images.append(dict(image=file_name, status="ok", n_detections=len(boxes), width=size,
                               height=size, psf_fwhm_px=round(galaxy.psf_fwhm_px, 4),
                               pixel_scale_arcsec=round(galaxy.pixel_scale_arcsec, 5),
                               seed=seed, index=index))
    truth_path = outdir / "truth.csv"
    write_detections(pd.concat(tables, ignore_index=True), truth_path, pd.DataFrame(images))
    settings_path = outdir / "simulation.json"
    import json

    settings_path.write_text(json.dumps(dict(seed=seed, n=n, **asdict(settings or SimulationSettings())),
                                        indent=2))
    return truth_path
