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

#: The most pixels (height x width) an image may declare. A file declaring more is refused from
#: its header, before any pixel is decoded or any memory set aside for them: a few bytes of PNG,
#: JPEG or (gzipped) FITS can declare billions of pixels (a "decompression bomb"). The value is
#: PIL's own threshold (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 million, a 9459 x 9459 image), so
#: that FITS and JPEG/PNG share one limit and no image PIL reads without complaint is refused.
#: A FITS file may hold three times as many values (bands x pixels), as an RGB image at the
#: limit does: 1 GiB as float32 bands. Reading an image at the limit takes several GB of memory;
#: set this attribute to allow more.
MAX_IMAGE_PIXELS = 89_478_485


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
        band[~ok] = np.median(band[ok].astype(np.float64))  # float32's mean of two values near 3e38 overflows
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


def _celestial_wcs(header, height: int, width: int):
    """The header's celestial WCS, if it has one that the package can use: one that astropy can
    turn into ICRS coordinates (a solar or planetary WCS cannot) at the image's corners and
    centre, with a finite pixel scale (CDELT = 1e300 overflows)."""
    from astropy.utils.exceptions import AstropyWarning
    from astropy.wcs import WCS

    from .pixels import pixel_to_radec
    from .scale import wcs_pixel_scale_arcsec

    # astropy's complaints about the header (FITSFixedWarning, VerifyWarning for a damaged
    # card it repairs) are not the user's business when the pixels are read; a numerical
    # overflow in the check means a WCS the package cannot use
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            wcs = WCS(header).celestial
            if not wcs.has_celestial:
                return None
            pixel_to_radec(wcs, [0, width / 2, width], [0, height / 2, height])
            scale = wcs_pixel_scale_arcsec(wcs)
        except Exception:  # a broken WCS must not cost the pixels
            return None
    return wcs if np.isfinite(scale) and scale > 0 else None


def _refuse_if_too_large(path, shape, what: str) -> None:
    """Raise for a declared ``shape`` (bands, height, width) beyond :data:`MAX_IMAGE_PIXELS`."""
    n_bands, height, width = shape
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            path,
            f"too large: {what} declares {width} x {height} = {height * width} pixels, more than "
            f"napari_clumps.io.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}; refused before reading the pixels",
        )
    if n_bands * height * width > 3 * MAX_IMAGE_PIXELS:
        raise ImageReadError(
            path,
            f"too large: {what} declares {n_bands} bands of {width} x {height} pixels, more than 3 x "
            f"napari_clumps.io.MAX_IMAGE_PIXELS = {3 * MAX_IMAGE_PIXELS} values; refused before reading them",
        )


def _image_shape(path, hdu) -> tuple[int, ...]:
    """The shape of an image HDU's data from its header, checked before the data is read:
    length-1 leading axes dropped (radio-style (1, 1, H, W)); a 2-D image or a 3-D band cube."""
    shape = tuple(int(n) for n in hdu.shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) not in (2, 3):
        raise ImageReadError(path, f"{len(shape)}-D data of shape {shape}; need a 2-D image or a 3-D band cube")
    if min(shape[-2:]) < 2:
        raise ImageReadError(path, f"image of shape {shape} is too small")
    if shape[0] < 1:
        raise ImageReadError(path, f"band cube of shape {shape} has no bands")
    _refuse_if_too_large(path, (1, *shape) if len(shape) == 2 else shape, "the header")
    return shape


def _check_hdu_headers(path, stream) -> tuple[int, int, int] | None:
    """Refuse headers that make astropy hang or crash, walking the HDUs as astropy will.

    astropy does not check the structural keywords against the FITS standard before it uses
    them: NAXIS or TFIELDS = 2**31 makes it loop for hours building the HDU; a negative NAXISn,
    PCOUNT or GCOUNT makes the next HDU start before this one, so that astropy reads the same
    HDUs for ever; a negative ZTILEn corrupts the memory of its HCOMPRESS decompressor, which
    kills the process. A structural keyword that is not an integer, or missing, astropy
    reports as a bare TypeError or KeyError; here it is named. Only the header cards are read
    (astropy's :class:`~astropy.io.fits.Header` parser; no HDU is built).

    Returns ``(hdu, bytes declared, bytes in the file)`` for the first HDU whose data the file
    cuts short (astropy's error for it does not say so), or None.
    """
    import gzip
    import math

    from astropy.io import fits

    stream.seek(0)
    if stream.read(2) == b"\x1f\x8b":  # astropy reads a gzipped FITS file whatever its name
        stream.seek(0)
        stream = gzip.GzipFile(fileobj=stream)
    offset = 0
    for index in range(1_000_000):  # a million HDUs of 2880 bytes: 2.9 GB
        stream.seek(offset)
        try:
            header = fits.Header.fromfile(stream)
        except Exception:  # noqa: BLE001 - the end of the file, or a header astropy will refuse itself
            return None
        if index == 0 and header.get("SIMPLE") is False:
            # astropy makes the rest of such a file one opaque HDU (no image), and when the file
            # is gzipped it reads that same HDU for ever
            raise ImageReadError(path, "SIMPLE = F: the file says it does not follow the FITS standard")
        values = {}
        for name, low, high, required in _structure_keywords(header):
            value = header.get(name)
            if value is None:
                if required:
                    raise ImageReadError(path, f"HDU {index}: no {name} keyword in the header")
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ImageReadError(path, f"HDU {index}: {name} = {value!r} in the header; FITS needs an integer")
            if value < low or (high is not None and value > high):
                allowed = f"{low} to {high}" if high is not None else f"at least {low}"
                raise ImageReadError(path, f"HDU {index}: {name} = {value} in the header; FITS allows {allowed}")
            values[name] = value
        bitpix = header.get("BITPIX")
        if bitpix is None:
            raise ImageReadError(path, f"HDU {index}: no BITPIX keyword in the header")
        if bitpix not in (8, 16, 32, 64, -32, -64) or isinstance(bitpix, bool):
            raise ImageReadError(
                path, f"HDU {index}: BITPIX = {bitpix!r} in the header; FITS allows 8, 16, 32, 64, -32, -64"
            )
        # the data size as astropy computes it (FITS standard 4.4.1), padded to 2880-byte blocks
        axes = [values[f"NAXIS{i}"] for i in range(1, values["NAXIS"] + 1)]
        size = abs(bitpix) * values.get("GCOUNT", 1) * (values.get("PCOUNT", 0) + math.prod(axes)) // 8 if axes else 0
        start = stream.tell()
        if size:
            stream.seek(start + size - 1)
            if not stream.read(1):  # the data's last byte is not there
                stream.seek(start)
                available = 0
                while chunk := stream.read(1 << 20):
                    available += len(chunk)
                return index, size, available
        offset = start + -(-size // 2880) * 2880
    return None


def _structure_keywords(header):
    """``(keyword, lowest, highest, required)`` that :func:`_check_hdu_headers` checks (FITS
    standard 4.4.1, 7.2.1, 7.3.1 and the tiled image convention)."""
    yield "NAXIS", 0, 999, True
    naxis = header.get("NAXIS")
    for i in range(1, naxis + 1 if isinstance(naxis, int) and 0 < naxis <= 999 else 1):
        yield f"NAXIS{i}", 0, None, True
    yield "PCOUNT", 0, None, False
    yield "GCOUNT", 0, None, False
    # the table and tile-compression keywords only where astropy uses them
    if str(header.get("XTENSION", "")).strip() in ("BINTABLE", "TABLE"):
        yield "TFIELDS", 0, 999, False
    if header.get("ZIMAGE") is True:
        yield "ZNAXIS", 0, 999, False
        znaxis = header.get("ZNAXIS")
        for i in range(1, znaxis + 1 if isinstance(znaxis, int) and 0 < znaxis <= 999 else 1):
            yield f"ZNAXIS{i}", 0, None, False
            yield f"ZTILE{i}", 1, None, False


def _fits_bands(path, hdul) -> tuple:
    """``(bands, band names, HDU names, header, primary header)`` of an open FITS file: the first
    image HDU, a cube's planes or, for a 2-D image, the following 2-D HDUs of the same shape."""
    from astropy.io import fits

    image_hdus = [
        hdu
        for hdu in hdul
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.header.get("NAXIS", 0) > 0
    ]
    if not image_hdus:
        raise ImageReadError(path, "no image data in any HDU")
    first = image_hdus[0]
    shape = _image_shape(path, first)  # from the header, before the data is read
    data = np.asarray(first.data, dtype=np.float32).reshape(shape)
    header = first.header.copy()
    primary_header = hdul[0].header.copy()
    if data.ndim == 3:
        return data, _cube_band_names(header, data.shape[0]), [first.name], header, primary_header
    # One band per extension: the following 2-D HDUs of the same shape.
    planes, names, hdu_names = [data], [_band_name(header, 0)], [first.name]
    for hdu in image_hdus[1:]:
        if hdu.header.get("NAXIS") == 2 and hdu.shape == data.shape:
            _refuse_if_too_large(path, (len(planes) + 1, *shape), "with its extensions, the file")
            planes.append(np.asarray(hdu.data, dtype=np.float32))
            names.append(_band_name(hdu.header, len(names)))
            hdu_names.append(hdu.name)
    if len(set(names)) < len(names):
        names = [f"band{i}" for i in range(len(names))]
    return np.stack(planes), names, hdu_names, header, primary_header


def _read_fits(path: Path) -> GalaxyImage:
    from astropy.io import fits

    truncated = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # opened here so that it is closed at once also when astropy fails within fits.open
            # (which then leaves its own handle to the garbage collector); one handle for the
            # header walk and astropy
            with open(path, "rb") as stream:
                truncated = _check_hdu_headers(path, stream)
                stream.seek(0)
                with fits.open(stream, memmap=False) as hdul:
                    bands, names, hdu_names, header, primary_header = _fits_bands(path, hdul)
    except ImageReadError:
        raise
    except Exception as error:  # astropy raises many types for corrupt or truncated files
        if truncated is not None:
            hdu, declared, available = truncated
            reason = f"truncated: HDU {hdu} declares {declared} bytes of data, the file holds {available}"
        else:
            reason = _first_line(error)
        raise ImageReadError(path, f"not a readable FITS file ({reason})") from error

    bands, n_bad = _replace_non_finite(path, bands)
    height, width = bands.shape[1:]
    wcs = _celestial_wcs(header, height, width)
    if wcs is None and header is not primary_header:
        wcs = _celestial_wcs(primary_header, height, width)
        header = primary_header if wcs is not None else header
    return GalaxyImage.from_bands(bands, names, path, wcs, header, n_bad_pixels=n_bad, hdu_names=tuple(hdu_names))


# ----------------------------------------------------------------------------- JPEG / PNG


def _read_raster(path: Path) -> GalaxyImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL warns between its limit and twice it; the size is checked here instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # JPEG and PNG only: the content of another format under a .png or .jpg name (GIF,
            # TIFF, even FITS, which PIL also opens) is refused, not read as what it is not
            image = Image.open(path, formats=("JPEG", "PNG"))
        with image:
            width, height = image.size
            _refuse_if_too_large(path, (1, height, width), f"the {image.format} header")
            image.load()
            if image.mode in ("L", "I", "I;16", "F", "1"):
                grey = np.asarray(image.convert("F"), dtype=np.float32)
                peak = 255.0 if image.mode in ("L", "1") else max(float(grey.max()), 1.0)
                grey = grey / peak
                bands = grey[None]
            else:
                if "transparency" in image.info:  # as PIL asks: a palette's transparency goes via RGBA
                    image = image.convert("RGBA")
                rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # alpha dropped
                bands = np.moveaxis(rgb, -1, 0)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as error:  # beyond twice PIL's own limit, PIL refuses it itself
        raise ImageReadError(path, f"too large: refused before reading the pixels (PIL: {error})") from error
    except UnidentifiedImageError as error:
        raise ImageReadError(path, "not a readable JPEG/PNG image (unrecognised content)") from error
    except Exception as error:
        raise ImageReadError(path, f"not a readable JPEG/PNG image ({_first_line(error)})") from error
    bands, n_bad = _replace_non_finite(path, np.ascontiguousarray(bands))
    return GalaxyImage.from_rgb(np.moveaxis(bands, 0, -1), path, n_bad_pixels=n_bad)
