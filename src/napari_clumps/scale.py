"""Pixel scale: clumps are PSF-sized, so the detector must see the PSF at the size it learnt.

A model records the PSF FWHM (pixels) of its training images (``DetectorConfig.psf_fwhm_px``,
0 when unknown). An image's PSF FWHM in pixels comes, in this order, from what the user says
(``psf_fwhm`` in pixels, or ``pixel_scale`` in arcsec per pixel with ``seeing`` in arcsec), then
from a FITS header (a PSF FWHM in pixels, or a seeing in arcsec with the WCS pixel scale). When
both are known the image is resampled by ``model FWHM / image FWHM`` before the network and the
boxes are mapped back; when either is unknown it is used as it is.
"""

from __future__ import annotations

import numpy as np

#: Typical seeing (FWHM, arcsec) of SDSS imaging and Stripe 82 co-adds, the surveys Galaxy Zoo:
#: Clump Scout and the dev set come from; used with a pixel scale when no seeing is given.
DEFAULT_SEEING_ARCSEC = 1.2
#: Header keywords holding the PSF FWHM in pixels, and the seeing FWHM in arcsec.
FWHM_PIXEL_KEYWORDS = ("PSFFWHM", "PSF_FWHM", "FWHM_PIX")
SEEING_ARCSEC_KEYWORDS = ("SEEING", "FWHM_ARC", "PSFSIZE")
#: Resampling factors are kept within this range (a mistaken header must not blow up an image).
FACTOR_RANGE = (0.25, 4.0)
#: Closer to 1 than this, the image is used as it is (resampling would only blur it).
FACTOR_TOLERANCE = 0.05


class ScaleError(ValueError):
    """A pixel scale, seeing or PSF size that makes no sense."""


def _positive(value, name: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ScaleError(f"{name} must be a positive number, got {value:g}")
    return value


def wcs_pixel_scale_arcsec(wcs) -> float:
    """The mean pixel scale (arcsec per pixel) of a celestial WCS; NaN when ``wcs`` is None."""
    if wcs is None:
        return np.nan
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs))) * 3600


def header_psf_fwhm(header, wcs=None) -> float | None:
    """PSF FWHM in pixels from a FITS header (and its WCS for a seeing in arcsec), else None."""
    if header is None:
        return None
    for key in FWHM_PIXEL_KEYWORDS:
        value = header.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    if wcs is None:
        return None
    for key in SEEING_ARCSEC_KEYWORDS:
        value = header.get(key)
        if isinstance(value, (int, float)) and value > 0:
            scale_arcsec = wcs_pixel_scale_arcsec(wcs)
            return float(value) / scale_arcsec if scale_arcsec > 0 else None
    return None


def image_psf_fwhm(image, psf_fwhm=None, pixel_scale=None, seeing=None) -> float | None:
    """The PSF FWHM of ``image`` in pixels, from the options or its header; None when unknown.

    ``psf_fwhm``: pixels. ``pixel_scale``: arcsec per pixel, with ``seeing`` in arcsec
    (default :data:`DEFAULT_SEEING_ARCSEC`).
    """
    psf_fwhm = _positive(psf_fwhm, "the PSF FWHM (pixels)")
    pixel_scale = _positive(pixel_scale, "the pixel scale (arcsec/pixel)")
    seeing = _positive(seeing, "the seeing (arcsec)")
    if psf_fwhm is not None:
        return psf_fwhm
    if pixel_scale is not None:
        return (seeing or DEFAULT_SEEING_ARCSEC) / pixel_scale
    return header_psf_fwhm(getattr(image, "header", None), getattr(image, "wcs", None))


def resample_factor(model_psf_fwhm: float, image_psf_fwhm: float | None) -> float:
    """How much to enlarge the image so that its PSF has the model's size (1.0 when unknown)."""
    if not model_psf_fwhm or not image_psf_fwhm:
        return 1.0
    factor = float(np.clip(model_psf_fwhm / image_psf_fwhm, *FACTOR_RANGE))
    return 1.0 if abs(factor - 1.0) < FACTOR_TOLERANCE else factor


def resample(tensor, factor: float):
    """``(C, H, W)`` tensor enlarged by ``factor`` (anti-aliased when it shrinks)."""
    if factor == 1.0:
        return tensor
    import torch

    return torch.nn.functional.interpolate(
        tensor[None],
        scale_factor=factor,
        mode="bilinear",
        align_corners=False,
        antialias=factor < 1.0,
        recompute_scale_factor=True,
    )[0]


def unused_psf_note(config, psf_fwhm=None, pixel_scale=None) -> str:
    """A line telling the user that a PSF they gave cannot be used (the model records no training
    PSF size), or "" when there is nothing to say."""
    if (psf_fwhm or pixel_scale) and not config.psf_fwhm_px:
        return "the model records no training PSF size, so the PSF given cannot resample the images"
    return ""
