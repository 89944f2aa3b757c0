"""Simulated SDSS-like clumpy galaxies with known truth.

Each galaxy is drawn in g, r, i: an exponential disc (random inclination, position angle,
optional two-armed spiral pattern) with an optional redder bulge, 0-9 unresolved star-forming
clumps bluer than the disc (a few "odd" red ones), unrelated stars, background galaxies and
compact blue sources beyond the disc as distractors (a star over the disc is labelled an odd
clump, as volunteers do), a Moffat PSF, sky and source noise. Each
galaxy's JPEG has its own stretch, colour saturation and JPEG quality. Truth boxes are squares of side
``BOX_SIDE_PER_FWHM`` x PSF FWHM around each clump, as in Galaxy Zoo: Clump Scout.

The distributions (PSF size, clumps per galaxy, clump distance from the centre, odd fraction)
are calibrated to the Clump Scout volunteer boxes (``clumpscout_boxes.csv``, docs/data.md); see
``docs/simulation.md`` for the comparison. Everything is deterministic for a seed: galaxy ``i``
of seed ``s`` is the same whatever ``n`` is.

Outputs of :func:`write_dataset`: per galaxy a FITS band cube (3, H, W) with a celestial TAN
WCS (array row 0 = FITS row 1 = south; north up, east left as shown in DS9) and a colour JPEG
as survey cutout services make them (north up, so its rows are the FITS rows flipped), plus
``truth.csv`` in the detections format (score 1) and ``truth.images.csv`` listing every image.
"""

from __future__ import annotations

import functools
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
#: Power index (beta) of the Moffat PSF: broader wings than a Gaussian's, as seeing has.
MOFFAT_BETA = 3.5
#: The PSF kernel spans this many FWHM (4 each side): the profile there is below 1e-4 of its peak.
PSF_KERNEL_SIDE_PER_FWHM = 8
#: FWHM over sigma of a Gaussian, 2 sqrt(2 ln 2). A point source's flux is taken as its peak x
#: 2 pi sigma^2 of a Gaussian of the PSF's FWHM (the PSF's effective area).
GAUSSIAN_FWHM_PER_SIGMA = 2.3548
#: Intrinsic axis ratio of a disc seen edge-on: discs have thickness.
DISC_THICKNESS = 0.15
#: Arms of a disc's spiral pattern.
SPIRAL_ARMS = 2
#: Added to radius / scale length before its log, which has no value at the centre.
SPIRAL_CENTRE_SOFTENING = 1e-3
#: Tries at placing a galaxy's clumps: a galaxy with little visible disc gets fewer clumps.
MAX_CLUMP_PLACEMENT_ATTEMPTS = 200
#: A truth box's centre is at least this many box sides inside the image edge ...
TRUTH_BOX_EDGE_MARGIN = 0.3
#: ... and this many box sides from any other truth box's centre (boxes rarely overlap much).
MIN_TRUTH_BOX_SEPARATION = 0.8
#: Background galaxies are placed no nearer the disc centre than this many disc scale lengths.
BACKGROUND_GALAXY_MIN_DISC_SCALES = 1.5
#: Key of the second random stream (``SeedSequence([seed, index, EXTRA_STREAM])``).
EXTRA_STREAM = 1
BANDS = ("g", "r", "i")
TRUTH_MODEL_ID = "simulation-truth"


# Colours as flux ratios g:r:i relative to r (from g-r and r-i in magnitudes: 0.4 dex per mag).
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

    # The numbers below were inline in the simulator until it was split into steps (issue 12);
    # the defaults are those numbers. Ranges are drawn uniformly unless said otherwise; colours
    # are (g-r range, r-i range) in magnitudes. Brightnesses are in the units of the disc (its
    # central r surface brightness is 1) or of the sky noise per pixel in r ("snr").
    #: Offset of the disc centre from the frame centre: Gaussian sigma in pixels, per axis.
    disc_centre_sigma_px: float = 2.0
    #: cos(inclination): 0.3 is ~73 deg, as volunteers skip edge-on discs.
    cos_inclination_range: tuple = (0.3, 1.0)
    #: Fraction of discs with a two-armed logarithmic spiral pattern.
    spiral_fraction: float = 0.7
    #: Spiral amplitude: relative modulation of the disc from one scale length outwards.
    spiral_amplitude_range: tuple = (0.2, 0.7)
    #: Spiral pitch angle in degrees.
    spiral_pitch_deg: tuple = (12.0, 30.0)
    #: Disc colour.
    disc_colour: tuple = ((0.4, 0.7), (0.2, 0.4))
    #: Fraction of galaxies with a Sersic bulge (same centre and position angle as the disc).
    bulge_fraction: float = 0.7
    #: Bulge effective radius in disc scale lengths.
    bulge_r_eff_per_disc_scale: tuple = (0.15, 0.4)
    #: Bulge Sersic index.
    bulge_sersic_n: tuple = (1.5, 4.0)
    #: Bulge axis ratio (bulges are rounder than inclined discs).
    bulge_axis_ratio: tuple = (0.7, 1.0)
    #: Bulge peak r surface brightness (before the PSF), in units of the disc's central one.
    bulge_peak: tuple = (0.5, 3.0)
    #: Bulge colour: redder than the disc.
    bulge_colour: tuple = ((0.7, 0.95), (0.35, 0.5))
    #: Clump distance from the centre in the disc plane: Gamma(shape, scale) in disc scale lengths
    #: (mean ~2.2: mostly the outer disc, as the volunteers' boxes).
    clump_radius_gamma: tuple = (6.0, 0.36)
    #: Clump peak over the local (unconvolved) disc brightness; the peak is the larger of this
    #: contrast and the floor ``clump_peak_snr_range``.
    clump_contrast_range: tuple = (0.5, 3.0)
    #: Floor of the clump peak, in sky noise: a clump on a faint outer disc is still seen.
    clump_peak_snr_range: tuple = (8.0, 25.0)
    #: Clump colour: bluer than the disc (young stars).
    clump_colour: tuple = ((-0.1, 0.3), (-0.2, 0.1))
    #: Odd clump colour: red.
    odd_clump_colour: tuple = ((1.0, 1.5), (0.4, 0.7))
    #: Star brightness in sky noise, log-uniform (flux = this x sky noise x PSF area): any.
    star_peak_snr_range: tuple = (8.0, 400.0)
    #: Star colour: redder than clumps.
    star_colour: tuple = ((0.5, 1.6), (0.1, 0.6))
    #: Background galaxy Sersic effective radius in pixels (small: far away).
    background_r_eff_px: tuple = (1.5, 6.0)
    #: Background galaxy Sersic index.
    background_sersic_n: tuple = (1.0, 4.0)
    #: Background galaxy axis ratio.
    background_axis_ratio: tuple = (0.3, 1.0)
    #: Background galaxy peak before the PSF, in sky noise.
    background_peak_snr_range: tuple = (5.0, 40.0)
    #: Background galaxy colour: red (distant, redshifted).
    background_colour: tuple = ((0.8, 1.6), (0.3, 0.7))
    #: Compact blue source brightness in sky noise, log-uniform (flux = this x sky noise x PSF
    #: area): fainter than stars, as clumps are.
    compact_blue_peak_snr_range: tuple = (8.0, 80.0)
    #: Compact blue source size: up to this many PSF FWHM, added in quadrature to the PSF FWHM
    #: (point-like to barely resolved).
    compact_blue_max_size_per_fwhm: float = 1.5
    #: Compact blue source colour: that of clumps, a little wider.
    compact_blue_colour: tuple = ((-0.1, 0.4), (-0.2, 0.2))
    #: Sky noise per pixel of g, r, i relative to r: g is noisier relative to its signal, as in SDSS.
    band_noise_ratios: tuple = (1.3, 1.0, 1.2)
    #: Source noise: variance per unit of flux, in units of the r sky noise.
    source_noise_factor: float = 0.05
    #: Declination range in degrees (uniform on the sphere; RA anywhere): an SDSS-like footprint.
    dec_range_deg: tuple = (-10.0, 60.0)


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


def _moffat_alpha(fwhm, beta=MOFFAT_BETA):
    """Core width of a Moffat profile of that FWHM."""
    return fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))


def _moffat(xx, yy, x0, y0, flux, fwhm, beta=MOFFAT_BETA):
    alpha = _moffat_alpha(fwhm, beta)
    r2 = ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha**2
    return flux * (beta - 1) / (np.pi * alpha**2) * (1 + r2) ** (-beta)


def _sersic(xx, yy, x0, y0, amplitude, r_eff, n, axis_ratio, theta):
    from astropy.modeling.models import Sersic2D

    model = Sersic2D(amplitude=amplitude, r_eff=r_eff, n=n, x_0=x0, y_0=y0, ellip=1 - axis_ratio, theta=theta)
    return model(xx, yy)


def _draw_colour(rng, colour) -> np.ndarray:
    """g:r:i flux ratios of a colour drawn from ``((g-r range), (r-i range))``."""
    (g_r, r_i) = colour
    return _flux_ratios(rng.uniform(*g_r), rng.uniform(*r_i))


def _draw_log_uniform(rng, value_range) -> float:
    """A value spread evenly in log between the two ends: brightnesses span decades."""
    low, high = value_range
    return np.exp(rng.uniform(np.log(low), np.log(high)))


def _add_coloured(images, colour, plane) -> None:
    """Adds one source, ``plane`` in r, to the g, r, i images in its colour."""
    images += colour[:, None, None] * plane[None]


# The galaxy is drawn in steps, each from one random stream. The order of the steps and of the
# draws within them is part of the data set: galaxy i of seed s must stay the same, and a draw
# added to the main stream, or moved, would change the galaxies of every seed.


@dataclass(frozen=True)
class _Grid:
    """The square frame's pixel centres in edge coordinates (pixel i spans i .. i + 1)."""

    size: int
    xx: np.ndarray
    yy: np.ndarray

    @classmethod
    def square(cls, size: int) -> _Grid:
        centres = np.arange(size) + 0.5
        xx, yy = np.meshgrid(centres, centres)
        return cls(size, xx, yy)


@dataclass(frozen=True)
class _Psf:
    """The observing conditions: a Moffat PSF, and the pixel scale that goes with the seeing."""

    box_side: float  # truth box side in px, as drawn (BOX_SIDE_PER_FWHM x fwhm, up to rounding)
    fwhm: float  # px
    pixel_scale: float  # arcsec per px

    @property
    def area(self) -> float:
        """2 pi sigma^2 of a Gaussian of that FWHM: brightness x area = flux of a point source."""
        return np.pi * (self.fwhm / GAUSSIAN_FWHM_PER_SIGMA) ** 2 * 2

    @functools.cached_property
    def kernel(self):
        from astropy.convolution import Moffat2DKernel

        side = int(PSF_KERNEL_SIDE_PER_FWHM * self.fwhm) | 1  # odd, so that it has a centre pixel
        return Moffat2DKernel(gamma=_moffat_alpha(self.fwhm), alpha=MOFFAT_BETA, x_size=side, y_size=side)

    def blur(self, image: np.ndarray) -> np.ndarray:
        """An extended source as seen through the PSF (flux kept; zero beyond the frame)."""
        from astropy.convolution import convolve_fft

        return convolve_fft(image, self.kernel, boundary="fill", normalize_kernel=True)

    def point_source(self, grid: _Grid, x, y, flux, fwhm=None) -> np.ndarray:
        """A point source (or one a little wider than the PSF, of FWHM ``fwhm``) at x, y."""
        return _moffat(grid.xx, grid.yy, x, y, flux, self.fwhm if fwhm is None else fwhm)


def _draw_psf(rng, s: SimulationSettings) -> _Psf:
    # The box side is what the volunteer data measures; the FWHM follows from it.
    side = float(np.clip(s.box_side_median * np.exp(rng.normal(0, s.box_side_log_sigma)), *s.box_side_range))
    fwhm = side / BOX_SIDE_PER_FWHM
    return _Psf(box_side=side, fwhm=fwhm, pixel_scale=rng.uniform(*s.seeing_arcsec) / fwhm)


@dataclass(frozen=True)
class _Disc:
    """Where the disc is and how it is seen: centre, scale length and projection."""

    cx: float
    cy: float
    scale: float  # exponential scale length h, px
    axis_ratio: float  # projected minor over major axis
    theta: float  # position angle of the major axis, radians from +x

    def plane_coordinates(self, grid: _Grid):
        """Radius and azimuth in the disc plane (deprojected) of every pixel."""
        dx, dy = grid.xx - self.cx, grid.yy - self.cy
        u = dx * np.cos(self.theta) + dy * np.sin(self.theta)
        v = (-dx * np.sin(self.theta) + dy * np.cos(self.theta)) / self.axis_ratio
        return np.hypot(u, v), np.arctan2(v, u)

    def project(self, radius, azimuth):
        """Frame x, y of a point at ``radius``, ``azimuth`` in the disc plane."""
        u, v = radius * np.cos(azimuth), radius * np.sin(azimuth) * self.axis_ratio
        return (
            self.cx + u * np.cos(self.theta) - v * np.sin(self.theta),
            self.cy + u * np.sin(self.theta) + v * np.cos(self.theta),
        )


def _draw_disc(rng, s: SimulationSettings) -> _Disc:
    cx, cy = s.size / 2 + rng.normal(0, s.disc_centre_sigma_px, 2)
    scale = float(np.exp(rng.uniform(*np.log(s.disc_scale_px))))
    cos_i = rng.uniform(*s.cos_inclination_range)
    # A disc seen edge-on is not a line: it has thickness.
    return _Disc(cx=cx, cy=cy, scale=scale, axis_ratio=np.hypot(cos_i, DISC_THICKNESS), theta=rng.uniform(0, np.pi))


def _draw_spiral_pattern(rng, s: SimulationSettings, disc: _Disc, radius, azimuth):
    """Relative modulation of the disc by a logarithmic spiral, or None for a disc without arms."""
    # The amplitude is drawn whether or not the disc gets arms (the draw order is fixed).
    amplitude = rng.choice([0.0, rng.uniform(*s.spiral_amplitude_range)], p=[1 - s.spiral_fraction, s.spiral_fraction])
    if not amplitude:
        return None
    pitch = np.radians(rng.uniform(*s.spiral_pitch_deg))
    log_radius = np.log(radius / disc.scale + SPIRAL_CENTRE_SOFTENING)
    phase = SPIRAL_ARMS * (azimuth - log_radius / np.tan(pitch)) + rng.uniform(0, 2 * np.pi)
    # The arms grow from nothing at the centre to full amplitude at one scale length, so the
    # centre stays smooth, where a log spiral winds infinitely tight.
    return 1 + amplitude * np.cos(phase) * np.clip(radius / disc.scale, 0, 1)


def _disc_images(rng, s: SimulationSettings, disc: _Disc, grid: _Grid) -> np.ndarray:
    """g, r, i of the exponential disc and its spiral pattern, before the PSF."""
    radius, azimuth = disc.plane_coordinates(grid)
    light = np.exp(-radius / disc.scale)
    spiral = _draw_spiral_pattern(rng, s, disc, radius, azimuth)
    if spiral is not None:
        light *= spiral
    return _draw_colour(rng, s.disc_colour)[:, None, None] * light[None]


def _add_bulge(rng, s: SimulationSettings, images, disc: _Disc, grid: _Grid) -> None:
    """Adds a redder Sersic bulge, before the PSF, to some galaxies."""
    if rng.random() >= s.bulge_fraction:
        return
    bulge = _sersic(
        grid.xx,
        grid.yy,
        disc.cx,
        disc.cy,
        1.0,
        rng.uniform(*s.bulge_r_eff_per_disc_scale) * disc.scale,
        rng.uniform(*s.bulge_sersic_n),
        rng.uniform(*s.bulge_axis_ratio),
        disc.theta,
    )
    bulge *= rng.uniform(*s.bulge_peak) / bulge.max()
    images += _draw_colour(rng, s.bulge_colour)[:, None, None] * bulge


@dataclass
class _Truth:
    """The truth boxes so far, and where a source may go: the galaxy's surface brightness decides
    whether a source is on it (a clump, an odd clump) or off it (a distractor)."""

    disc_r: np.ndarray  # unconvolved r surface brightness of disc and bulge
    noise_r: float  # sky noise per pixel in r
    box_side: float
    clumps: list = field(default_factory=list)

    def galaxy_snr(self, x, y) -> float:
        """The galaxy's local surface brightness over the sky noise per pixel."""
        size = self.disc_r.shape[-1]
        return self.disc_r[int(np.clip(y, 0, size - 1)), int(np.clip(x, 0, size - 1))] / self.noise_r

    def has_room(self, x, y) -> bool:
        """Not cut by the image edge, not piled on another truth box (volunteers' boxes rarely
        overlap much)."""
        size = self.disc_r.shape[-1]
        margin = TRUTH_BOX_EDGE_MARGIN * self.box_side
        return (
            margin < x < size - margin
            and margin < y < size - margin
            and not any(np.hypot(x - c.x, y - c.y) < MIN_TRUTH_BOX_SEPARATION * self.box_side for c in self.clumps)
        )


def _draw_clump_count(rng, s: SimulationSettings) -> int:
    if rng.random() < s.clump_free_fraction:
        return 0
    weights = np.asarray(s.clump_count_weights, float)
    return int(rng.choice(np.arange(1, len(weights) + 1), p=weights / weights.sum()))


def _place_clumps(rng, s: SimulationSettings, n_clumps: int, disc: _Disc, psf: _Psf, truth: _Truth) -> None:
    """Adds up to ``n_clumps`` clumps to the truth: disc-plane positions weighted to the outer
    disc, projected like the disc, where the galaxy is seen and there is room for a box. A galaxy
    with little visible disc gets fewer (the attempts are bounded)."""
    for _ in range(MAX_CLUMP_PLACEMENT_ATTEMPTS):
        if len(truth.clumps) >= n_clumps:
            return
        radius = disc.scale * rng.gamma(*s.clump_radius_gamma)
        x, y = disc.project(radius, rng.uniform(0, 2 * np.pi))
        if not truth.has_room(x, y):
            continue
        if truth.galaxy_snr(x, y) < ON_GALAXY_SNR:
            continue  # volunteers mark clumps in the galaxy, not in empty sky
        local = truth.disc_r[int(y), int(x)]
        # Peak above the local disc: a contrast vs the disc and a floor vs the noise.
        over_disc = rng.uniform(*s.clump_contrast_range) * local
        over_noise = rng.uniform(*s.clump_peak_snr_range) * truth.noise_r
        peak = max(over_disc, over_noise)
        label = "odd_clump" if rng.random() < s.odd_fraction else "clump"
        truth.clumps.append(Clump(x=float(x), y=float(y), flux_r=float(peak * psf.area), label=label))


def _add_clumps(rng, s: SimulationSettings, images, clumps, psf: _Psf, grid: _Grid) -> None:
    """Adds the clumps' light: unresolved, so the PSF itself, bluer than the disc (odd: red)."""
    for c in clumps:
        colour = _draw_colour(rng, s.odd_clump_colour if c.label == "odd_clump" else s.clump_colour)
        _add_coloured(images, colour, psf.point_source(grid, c.x, c.y, c.flux_r))


def _add_stars(rng, s: SimulationSettings, images, truth: _Truth, psf: _Psf, grid: _Grid) -> None:
    """Foreground stars (point sources, redder than clumps). Over the disc, no one can tell a star
    from a red clump in one image; volunteers box it and call it odd, and so does the truth."""
    for _ in range(rng.integers(0, s.max_stars + 1)):
        x, y = rng.uniform(0, s.size, 2)
        flux = psf.area * truth.noise_r * _draw_log_uniform(rng, s.star_peak_snr_range)
        colour = _draw_colour(rng, s.star_colour)
        snr = truth.galaxy_snr(x, y)
        if OFF_GALAXY_SNR <= snr < ON_GALAXY_SNR:
            continue  # nobody could say whether it is on the galaxy
        if snr >= ON_GALAXY_SNR:
            if not truth.has_room(x, y):
                continue
            truth.clumps.append(Clump(x=float(x), y=float(y), flux_r=float(flux), label="odd_clump"))
        _add_coloured(images, colour, psf.point_source(grid, x, y, flux))


def _add_background_galaxies(
    rng, s: SimulationSettings, images, disc: _Disc, noise_r: float, psf: _Psf, grid: _Grid
) -> None:
    """Small, red, extended galaxies behind, beyond the disc: not in the truth."""
    for _ in range(rng.integers(0, s.max_background_galaxies + 1)):
        x, y = rng.uniform(0, s.size, 2)
        if np.hypot(x - disc.cx, y - disc.cy) < BACKGROUND_GALAXY_MIN_DISC_SCALES * disc.scale:
            continue
        blob = _sersic(
            grid.xx,
            grid.yy,
            x,
            y,
            1.0,
            rng.uniform(*s.background_r_eff_px),
            rng.uniform(*s.background_sersic_n),
            rng.uniform(*s.background_axis_ratio),
            rng.uniform(0, np.pi),
        )
        blob *= noise_r * rng.uniform(*s.background_peak_snr_range) / blob.max()
        _add_coloured(images, _draw_colour(rng, s.background_colour), psf.blur(blob))


def _add_compact_blue_sources(rng, s: SimulationSettings, images, truth: _Truth, psf: _Psf, grid: _Grid) -> None:
    """Compact blue background sources: clump look-alikes, but off the galaxy (not in the truth)."""
    for _ in range(rng.integers(0, s.max_compact_blue_sources + 1)):
        x, y = rng.uniform(0, s.size, 2)
        if truth.galaxy_snr(x, y) >= OFF_GALAXY_SNR:
            continue
        flux = psf.area * truth.noise_r * _draw_log_uniform(rng, s.compact_blue_peak_snr_range)
        # point-like to barely resolved: an intrinsic size added in quadrature to the PSF
        width = np.hypot(psf.fwhm, rng.uniform(0, s.compact_blue_max_size_per_fwhm * psf.fwhm))
        colour = _draw_colour(rng, s.compact_blue_colour)
        _add_coloured(images, colour, psf.point_source(grid, x, y, flux, fwhm=width))


def _draw_jpeg_style(rng, s: SimulationSettings) -> JpegStyle:
    """Each galaxy's JPEG gets its own look, as cutout services differ."""
    return JpegStyle(
        q=float(rng.uniform(*s.jpeg_q_range)),
        white_percentile=float(rng.uniform(*s.jpeg_white_percentile_range)),
        saturation=float(rng.uniform(*s.jpeg_saturation_range)),
        quality=int(rng.integers(s.jpeg_quality_range[0], s.jpeg_quality_range[1] + 1)),
    )


def _add_noise(rng, s: SimulationSettings, images, noise_r: float) -> np.ndarray:
    """Sky noise per band plus source noise (growing with the flux, as photon noise does)."""
    band_noise = noise_r * np.array(s.band_noise_ratios)[:, None, None]
    variance = band_noise**2 + np.clip(images, 0, None) * noise_r * s.source_noise_factor
    return images + rng.normal(size=images.shape) * np.sqrt(variance)


def _draw_sky_position(rng, s: SimulationSettings):
    """RA and Dec in degrees, uniform on the sphere within the Dec range."""
    ra = float(rng.uniform(0, 360))
    low, high = s.dec_range_deg
    dec = float(np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(low)), np.sin(np.radians(high))))))
    return ra, dec


def simulate_galaxy(seed: int, index: int = 0, settings: SimulationSettings | None = None) -> SimulatedGalaxy:
    """Galaxy ``index`` of the data set made with ``seed``."""
    s = settings or SimulationSettings()
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    # Later additions to the simulator draw from their own stream, so that everything the
    # first stream draws (the galaxy, its clumps, stars, noise) stays as it was for a seed.
    extra_rng = np.random.default_rng(np.random.SeedSequence([seed, index, EXTRA_STREAM]))
    grid = _Grid.square(s.size)

    psf = _draw_psf(rng, s)
    disc = _draw_disc(rng, s)
    images = _disc_images(rng, s, disc, grid)
    _add_bulge(rng, s, images, disc, grid)
    disc_r = images[1].copy()  # local surface brightness before the PSF, for clump contrast
    images = np.stack([psf.blur(band) for band in images])

    truth = _Truth(disc_r=disc_r, noise_r=rng.uniform(*s.noise_range), box_side=psf.box_side)
    _place_clumps(rng, s, _draw_clump_count(rng, s), disc, psf, truth)
    _add_clumps(rng, s, images, truth.clumps, psf, grid)
    _add_stars(rng, s, images, truth, psf, grid)
    _add_background_galaxies(rng, s, images, disc, truth.noise_r, psf, grid)
    _add_compact_blue_sources(extra_rng, s, images, truth, psf, grid)
    jpeg_style = _draw_jpeg_style(extra_rng, s)
    images = _add_noise(rng, s, images, truth.noise_r)
    ra, dec = _draw_sky_position(rng, s)
    return SimulatedGalaxy(
        bands=images.astype(np.float32),
        clumps=truth.clumps,
        psf_fwhm_px=psf.fwhm,
        pixel_scale_arcsec=float(psf.pixel_scale),
        ra=ra,
        dec=dec,
        index=index,
        seed=seed,
        jpeg_style=jpeg_style,
    )


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
    from .pixels import north_up

    style = galaxy.jpeg_style
    rgb = north_up(lupton_composite(galaxy.bands, BANDS, q=style.q, white_percentile=style.white_percentile))
    image = ImageEnhance.Color(Image.fromarray(np.ascontiguousarray(rgb))).enhance(style.saturation)
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=style.quality)


def write_dataset(
    outdir, n: int = 10, seed: int = 0, settings: SimulationSettings | None = None, progress=None
) -> Path:
    """Simulate ``n`` galaxies into ``outdir``; returns the truth CSV path."""
    import pandas as pd

    from .detections import detections_frame, images_row, write_detections
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
        tables.append(
            detections_frame(f"{name}.fits", boxes, labels, scores=1.0, wcs=galaxy.wcs(), model=TRUTH_MODEL_ID)
        )
        tables.append(
            detections_frame(
                f"{name}.jpg", flip_boxes_vertically(boxes, size), labels, scores=1.0, wcs=None, model=TRUTH_MODEL_ID
            )
        )
        for file_name in (f"{name}.fits", f"{name}.jpg"):
            images.append(
                {
                    **images_row(file_name, len(boxes), size, size),
                    "psf_fwhm_px": round(galaxy.psf_fwhm_px, 4),
                    "pixel_scale_arcsec": round(galaxy.pixel_scale_arcsec, 5),
                    "seed": seed,
                    "index": index,
                }
            )
    truth_path = outdir / "truth.csv"
    write_detections(pd.concat(tables, ignore_index=True), truth_path, pd.DataFrame(images))
    settings_path = outdir / "simulation.json"
    import json

    settings_path.write_text(json.dumps(dict(seed=seed, n=n, **asdict(settings or SimulationSettings())), indent=2))
    return truth_path
