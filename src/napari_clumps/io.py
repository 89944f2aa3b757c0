"""Reading galaxy cutouts: FITS (images, band cubes, multi-extension, compressed) and JPEG/PNG.

:func:`read_image` returns a :class:`GalaxyImage`: the raw bands, the colour composite the
detector sees, and the celestial WCS and header when the file has them. Pixel coordinates
follow :mod:`napari_clumps.pixels` (0-based edges of the array as returned here; for FITS the
array is the spatial plane as numpy reads it, FITS row 1 first).

Every failure is an :class:`ImageReadError` whose one-line message names the file and the reason.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fz")
RASTER_SUFFIXES = (".jpg", ".jpeg", ".png")
SUPPORTED_SUFFIXES = FITS_SUFFIXES + RASTER_SUFFIXES


class ImageReadError(ValueError):
    """A file that cannot be read as a galaxy image; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")


@dataclass
class GalaxyImage:
    """A galaxy cutout as read from disk.

    Attributes
    ----------
    path : Path
        The file it came from.
    bands : ndarray, shape (n_bands, height, width), float32
        Raw pixel values, every pixel finite (non-finite ones replaced by the band median).
        For JPEG/PNG: the colour channels (or the grey channel) scaled to 0-1.
    band_names : tuple of str
        One name per band, e.g. ``("g", "r", "i")``, ``("R", "G", "B")`` or ``("L",)``.
    composite : ndarray, shape (height, width, 3), uint8
        The colour composite: the file's own pixels for JPEG/PNG, a Lupton asinh stretch of the
        bands for FITS (:mod:`napari_clumps.composite`).
    wcs : astropy.wcs.WCS or None
        The celestial (2-D) WCS of the array, if the file has one.
    header : astropy.io.fits.Header or None
        The FITS header the WCS came from.
    n_bad_pixels : int
        How many non-finite pixels were replaced.
    """

    path: Path
    bands: np.ndarray
    band_names: tuple
    composite: np.ndarray
    wcs: object = None
    header: object = None
    n_bad_pixels: int = 0
    hdu_names: tuple = field(default_factory=tuple)

    @classmethod
    def from_rgb(cls, array, path="array", wcs=None, header=None, n_bad_pixels: int = 0) -> GalaxyImage:
        """A display image, as JPEG/PNG files and RGB layers hold: ``(H, W, 3|4)`` colour or
        ``(H, W[, 1])`` grey; uint8, integers 0-255 or floats 0-1 (alpha dropped, NaN as 0).
        Its bands are the channels in 0-1 and its composite the channels themselves."""
        array = np.asarray(array)
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            array = array[..., :3]
        elif array.ndim == 2:
            array = array[..., None]
        else:
            raise ValueError(f"{path}: expected an (H, W, 3) colour or (H, W) grey image, got shape {array.shape}")
        if np.issubdtype(array.dtype, np.integer):
            peak = 255.0 if array.dtype == np.uint8 or array.max(initial=0) > 1 else 1.0
            channels = array.astype(np.float32) / np.float32(peak)
        else:
            channels = np.nan_to_num(array.astype(np.float32))
        bands = np.ascontiguousarray(np.moveaxis(channels, -1, 0))
        composite = array if array.dtype == np.uint8 else np.clip(np.rint(channels * 255), 0, 255).astype(np.uint8)
        names = ("L",) if composite.shape[-1] == 1 else ("R", "G", "B")
        if composite.shape[-1] == 1:
            composite = np.repeat(composite, 3, axis=-1)
        return cls(
            path=Path(path),
            bands=bands,
            band_names=names,
            composite=np.ascontiguousarray(composite),
            wcs=wcs,
            header=header,
            n_bad_pixels=n_bad_pixels,
        )

    @classmethod
    def from_bands(cls, bands, band_names, path, wcs=None, header=None, **extra) -> GalaxyImage:
        """Raw bands ``(n_bands, H, W)`` (FITS data, simulations); the composite is their Lupton
        stretch (:mod:`napari_clumps.composite`)."""
        from .composite import lupton_composite

        bands = np.ascontiguousarray(bands, dtype=np.float32)
        return cls(
            path=Path(path),
            bands=bands,
            band_names=tuple(band_names),
            composite=lupton_composite(bands, band_names),
            wcs=wcs,
            header=header,
            **extra,
        )

    @property
    def height(self) -> int:
        return int(self.bands.shape[1])

    @property
    def width(self) -> int:
        return int(self.bands.shape[2])

    @property
    def is_fits(self) -> bool:
        return is_fits_path(self.path)

    def describe(self) -> str:
        """One line for humans: size, bands, WCS centre."""
        text = f"{self.path.name}: {self.width}x{self.height} px, bands {','.join(self.band_names)}"
        if self.wcs is not None:
            from .pixels import pixel_to_radec

            ra, dec = pixel_to_radec(self.wcs, self.width / 2, self.height / 2)
            from .scale import wcs_pixel_scale_arcsec

            scale = wcs_pixel_scale_arcsec(self.wcs)
            text += f", centre RA {ra[0]:.5f} Dec {dec[0]:+.5f} deg, {scale:.3f} arcsec/px"
        else:
            text += ", no celestial WCS"
        if self.n_bad_pixels:
            text += f", {self.n_bad_pixels} non-finite pixels replaced"
        return text


def is_fits_path(path) -> bool:
    return str(path).lower().endswith(FITS_SUFFIXES)


def is_supported_path(path) -> bool:
    return str(path).lower().endswith(SUPPORTED_SUFFIXES)


def find_images(paths, strict: bool = False) -> list[tuple[Path, str]]:
    """The files given, and the supported images in the folders given (recursively, sorted).

    Returns ``(path, name)`` pairs; ``name`` is the path as given, or for a file found in a
    folder its path relative to that folder (the CSV ``image`` column, docs/contracts.md).
    ``strict``: a path given that does not exist or is not a supported image raises
    :class:`ImageReadError` (a command line checks its arguments before any work); otherwise
    it is returned, to fail when it is read.
    """
    found = []
    for given in [paths] if isinstance(paths, (str, Path)) else paths:
        given = Path(given)
        if given.is_dir():
            for path in sorted(p for p in given.rglob("*") if p.is_file() and is_supported_path(p)):
                found.append((path, path.relative_to(given).as_posix()))
            continue
        if strict and not given.exists():
            raise ImageReadError(given, "no such file or folder")
        if strict and not is_supported_path(given):
            raise ImageReadError(given, f"unsupported file type; expected one of {' '.join(SUPPORTED_SUFFIXES)}")
        found.append((given, str(given)))
    return found


def read_image(path) -> GalaxyImage:
    """Read a FITS, JPEG or PNG galaxy cutout. Raises :class:`ImageReadError`."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if not is_supported_path(path):
        raise ImageReadError(path, f"unsupported file type; expected one of {' '.join(SUPPORTED_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    if is_fits_path(path):
        return _read_fits(path)
    return _read_raster(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _replace_non_finite(path, bands: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN/inf by each band's median so that no NaN reaches a stretch or a model."""
    finite = np.isfinite(bands)
    n_bad = int(bands.size - finite.sum())
    if n_bad == 0:
        return bands, 0
    bands = bands.copy()
    for band, ok in zip(bands, finite):
        if not ok.any():
            raise ImageReadError(path, "no finite pixels (all NaN or inf)")
        band[~ok] = np.median(band[ok])
    return bands, n_bad


# ----------------------------------------------------------------------------- FITS


def _band_name(header, index: int) -> str:
    for key in ("FILTER", "BAND"):
        if header.get(key):
            return str(header[key]).strip()
    return str(header.get("EXTNAME") or f"band{index}").strip()


def _cube_band_names(header, n: int) -> list[str]:
    """Band names of a cube: ``BANDS = 'g,r,i'`` or ``FILTER1..n`` / ``BAND1..n`` keywords."""
    if header.get("BANDS"):
        names = [s.strip() for s in str(header["BANDS"]).split(",")]
        if len(names) == n:
            return names
    for key in ("FILTER", "BAND"):
        names = [header.get(f"{key}{i + 1}") for i in range(n)]
        if all(names):
            return [str(s).strip() for s in names]
    return [f"band{i}" for i in range(n)]


def _celestial_wcs(header):
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header).celestial
        except Exception:  # a broken WCS must not cost the pixels
            return None
    return wcs if wcs.has_celestial else None


def _read_fits(path: Path) -> GalaxyImage:
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                image_hdus = [
                    hdu
                    for hdu in hdul
                    if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
                    and hdu.header.get("NAXIS", 0) > 0
                ]
                if not image_hdus:
                    raise ImageReadError(path, "no image data in any HDU")
                first = image_hdus[0]
                data = np.asarray(first.data, dtype=np.float32)
                header = first.header.copy()
                primary_header = hdul[0].header.copy()
                data = _squeeze_leading(path, data)
                if data.ndim == 2:
                    # One band per extension: the following 2-D HDUs of the same shape.
                    planes, names, hdu_names = [data], [_band_name(header, 0)], [first.name]
                    for hdu in image_hdus[1:]:
                        if hdu.header.get("NAXIS") == 2 and hdu.shape == data.shape:
                            planes.append(np.asarray(hdu.data, dtype=np.float32))
                            names.append(_band_name(hdu.header, len(names)))
                            hdu_names.append(hdu.name)
                    bands = np.stack(planes)
                    if len(set(names)) < len(names):
                        names = [f"band{i}" for i in range(len(names))]
                else:
                    bands, names, hdu_names = data, _cube_band_names(header, data.shape[0]), [first.name]
    except ImageReadError:
        raise
    except Exception as error:  # astropy raises many types for corrupt or truncated files
        raise ImageReadError(path, f"not a readable FITS file ({_first_line(error)})") from error

    bands, n_bad = _replace_non_finite(path, bands)
    wcs = _celestial_wcs(header)
    if wcs is None and header is not primary_header:
        wcs = _celestial_wcs(primary_header)
        header = primary_header if wcs is not None else header
    return GalaxyImage.from_bands(bands, names, path, wcs, header, n_bad_pixels=n_bad, hdu_names=tuple(hdu_names))


def _squeeze_leading(path, data: np.ndarray) -> np.ndarray:
    """Drop length-1 leading axes (e.g. radio-style (1, 1, H, W)); keep 2-D images and 3-D cubes."""
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim < 2:
        raise ImageReadError(path, f"{data.ndim}-D data of shape {data.shape}; need a 2-D image or a 3-D band cube")
    if data.ndim > 3:
        raise ImageReadError(path, f"{data.ndim}-D data of shape {data.shape}; need a 2-D image or a 3-D band cube")
    if min(data.shape[-2:]) < 2:
        raise ImageReadError(path, f"image of shape {data.shape} is too small")
    return data


# ----------------------------------------------------------------------------- JPEG / PNG


def _read_raster(path: Path) -> GalaxyImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("L", "I", "I;16", "F", "1"):
                grey = np.asarray(image.convert("F"), dtype=np.float32)
                peak = 255.0 if image.mode in ("L", "1") else max(float(grey.max()), 1.0)
                grey = grey / peak
                bands = grey[None]
            else:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # alpha dropped
                bands = np.moveaxis(rgb, -1, 0)
    except UnidentifiedImageError as error:
        raise ImageReadError(path, "not a readable JPEG/PNG image (unrecognised content)") from error
    except Exception as error:
        raise ImageReadError(path, f"not a readable JPEG/PNG image ({_first_line(error)})") from error
    bands, n_bad = _replace_non_finite(path, np.ascontiguousarray(bands))
    return GalaxyImage.from_rgb(np.moveaxis(bands, 0, -1), path, n_bad_pixels=n_bad)
