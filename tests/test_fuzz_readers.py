"""Fuzzing the readers (issue 16): hostile FITS, JPEG and PNG files made by hypothesis.

The promise, checked on every generated file, for the core reader, the napari reader and the
command line: either a valid image (finite float32 bands ``(n, H, W)``, an ``(H, W, 3)`` uint8
composite, a WCS the rest of the package can use without an exception) or an
:class:`~napari_clumps.io.ImageReadError` of one line that starts with the file's path; never
another exception, and no warning escaping to the user's terminal.

Each family of hostile files is a strategy that makes ``(suffix, bytes)`` in memory:

* ``fits_from_astropy``: arrays of random shape (0-4 axes, zero-length and 1-pixel axes), every
  FITS-able dtype in both byte orders, NaN/inf anywhere, BSCALE/BZERO/BLANK (sane and not), in
  the primary HDU, an extension behind an empty primary, several extensions, behind tables,
  tile-compressed (every algorithm, odd tiles, quantisation), gzipped;
* ``raw_fits_headers``: headers written card by card: wrong or contradictory BITPIX / NAXIS /
  NAXISn (negative, fractional, text, absurd), missing cards or END, too little or too much data;
* ``wcs_cards``: a good image with random, broken or contradictory WCS keywords (lone axes,
  swapped or mismatched pairs, solar and planetary frames, unknown projections, zero or singular
  CD/CDELT, latitudes beyond the pole, bogus units, SIP orders without coefficients...);
* ``mutated_files``: valid FITS / .fits.gz / .fz / PNG / JPEG files truncated at a random byte,
  with bytes flipped, header values overwritten, or under another format's name;
* ``random_bytes``: bytes (after a FITS / PNG / JPEG / gzip magic, or not) under every name;
* ``rasters_from_pil``: PNG and JPEG in every mode (1, L, LA, P with and without transparency,
  RGB, RGBA, CMYK, YCbCr, 16-bit grey), 1-pixel to 60 pixels wide;
* ``raw_png``: PNGs written chunk by chunk: every bit depth and colour type (16-bit colour,
  1-bit palette), invalid combinations, interlacing, bad filters, bad CRCs, missing palettes;
* ``bombs``: PNG / JPEG / FITS headers that declare more pixels than
  :data:`napari_clumps.io.MAX_IMAGE_PIXELS`; these must be refused as too large, before decoding;
* and the Lupton stretch behind every FITS composite, on any finite float32 bands.

How many cases each test runs comes from the hypothesis profile (tests/conftest.py: "ci" by
default, "long" for benchmarks/fuzz_readers.py); the cases run and what came of them are
counted in ``conftest.FUZZ_COUNTS`` and printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import FUZZ_COUNTS, FUZZ_SLOWEST, make_wcs_header
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import napari_clumps.io as napari_clumps_io
from napari_clumps.io import MAX_IMAGE_PIXELS, SUPPORTED_SUFFIXES, ImageReadError, read_image

pytestmark = pytest.mark.fuzz

#: Suffixes the generated files get; every one is a supported one, so that each file reaches a reader.
FITS_NAMES = (".fits", ".fit", ".fts", ".FITS")
GZ_NAMES = (".fits.gz", ".fit.gz", ".fts.gz")
RASTER_NAMES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG")


def cases(factor: float = 1.0):
    """``settings`` for a test running ``factor`` times the profile's number of cases (the
    cheap families run more, the end-to-end ones fewer)."""
    return settings(max_examples=max(5, round(settings.default.max_examples * factor)))


# ----------------------------------------------------------------------------- the property


def reason_class(reason: str) -> str:
    """An error reason without its details: what the docs count."""
    return re.sub(r"\d+", "N", re.sub(r"\(.*\)", "(...)", reason))


def assert_one_line_error(error: ImageReadError, path) -> None:
    message = str(error)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "\r" not in message, message
    assert error.reason.strip() and "Traceback" not in message, message


def assert_usable_image(image, path) -> None:
    """Everything the rest of the package relies on in a GalaxyImage."""
    from napari_clumps._layers import image_layers
    from napari_clumps.pixels import pixel_to_radec
    from napari_clumps.scale import wcs_pixel_scale_arcsec

    assert image.path == Path(path)
    bands = image.bands
    assert isinstance(bands, np.ndarray) and bands.dtype == np.float32 and bands.ndim == 3, (bands.dtype, bands.shape)
    n, height, width = bands.shape
    assert n >= 1 and height >= 1 and width >= 1
    assert height * width <= MAX_IMAGE_PIXELS
    assert np.isfinite(bands).all()
    assert len(image.band_names) == n and all(isinstance(b, str) and b for b in image.band_names)
    assert image.composite.dtype == np.uint8 and image.composite.shape == (height, width, 3)
    assert 0 <= image.n_bad_pixels <= bands.size
    line = image.describe()
    assert "\n" not in line and line.startswith(Path(path).name)
    if image.wcs is not None:
        # what the detection rows, the catalogues and the napari readout do with it
        assert image.wcs.has_celestial and image.wcs.naxis == 2
        pixel_to_radec(image.wcs, [0, width / 2, width], [0, height / 2, height])
        wcs_pixel_scale_arcsec(image.wcs)
    [(data, kwargs, kind)] = image_layers(image)
    assert kind == "image" and data.shape == (height, width, 3) and kwargs["name"] == Path(path).name


@contextlib.contextmanager
def measured(family: str):
    start = time.perf_counter()
    yield
    FUZZ_SLOWEST[family] = max(FUZZ_SLOWEST.get(family, 0.0), time.perf_counter() - start)


def user_visible(caught) -> list[str]:
    """Warnings a user would see (Python hides deprecation warnings outside __main__)."""
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning)
    return [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, hidden)]


#: A case still reading after this many seconds has hung (the slowest take ~1 s under load).
HANG_SECONDS = 60


@contextlib.contextmanager
def failing_if_it_hangs(path):
    """A hang fails the case (and hypothesis shrinks it) instead of stalling the whole run."""

    def hung(signum, frame):
        raise AssertionError(f"{path}: still reading after {HANG_SECONDS} s: the reader hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_and_check(path, family: str):
    """Read ``path``; the property; count the case. Returns the image, or None for an error."""
    with measured(family), failing_if_it_hangs(path), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = read_image(path)
        except ImageReadError as error:
            assert_one_line_error(error, path)
            image, outcome = None, f"error: {reason_class(error.reason)}"
        else:
            assert_usable_image(image, path)
            outcome = "image with a celestial WCS" if image.wcs is not None else "image"
    assert not user_visible(caught), user_visible(caught)
    FUZZ_COUNTS[family, outcome] += 1
    return image


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def written(scratch: Path, suffix: str, content: bytes, stem: str = "case"):
    """The bytes as a file named ``<stem><suffix>`` in a fresh folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    path = folder / f"{stem}{suffix}"
    path.write_bytes(content)
    try:
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Hypothesis draws st.one_of's branches and st.integers far from uniformly (it favours the last
# branch and the bounds: good for finding edge cases, bad for proportions); st.sampled_from is
# close to uniform, so proportions are set with it. Its shrinking goes to the first element:
# the sane choice, so that a failing case shrinks to the least hostile file that still fails.


def either(*strategies):
    """One of ``strategies``, each about equally often."""
    return st.sampled_from(strategies).flatmap(lambda strategy: strategy)


def weighted(usual, rare, usual_weight: int = 3):
    """``usual`` ``usual_weight`` times as often as ``rare``."""
    return either(*([usual] * usual_weight), rare)


def one_in(n: int):
    """True about once in ``n`` draws."""
    return st.sampled_from([False] * (n - 1) + [True])


# ----------------------------------------------------------------------------- FITS through astropy

FITS_DTYPES = (
    "u1", "i1", ">i2", "<i2", ">u2", "<u2", ">i4", "<i4", ">u4", "<u4", ">i8", "<i8", ">u8", ">f4", "<f4", ">f8", "<f8",
)  # fmt: skip
COMPRESSIBLE_DTYPES = ("u1", ">i2", "<i2", ">i4", ">f4", "<f4", ">f8")

hostile_number = either(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 0.0, 1e-300, 1e300, -1e300, 2**31, 32768, -32768, 1e38]),
)
hostile_value = either(hostile_number, st.text("ABCxyz 0-9.", max_size=12), st.booleans())

small_side = weighted(st.integers(2, 12), st.integers(0, 2))
image_shapes = either(
    st.tuples(small_side, small_side),
    st.tuples(st.integers(1, 4), small_side, small_side),
    st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
)


def pixel_arrays(shape, dtypes=FITS_DTYPES):
    return st.sampled_from(dtypes).flatmap(lambda dtype: hnp.arrays(np.dtype(dtype), shape))


@st.composite
def scaling_cards(draw, data):
    """BSCALE / BZERO / BLANK, sane for the data's type or not at all."""
    cards = {}
    integer = data is not None and data.dtype.kind in "iu"
    if draw(st.booleans()):
        cards["BSCALE"] = draw(weighted(st.sampled_from([1.0, 2.0, 0.5, -1.0, 1e-3]), hostile_number))
    if draw(st.booleans()):
        cards["BZERO"] = draw(weighted(st.sampled_from([0, 32768, -128, 1000.5]), hostile_number))
    if draw(st.booleans()):
        if integer and data.size and draw(st.booleans()):
            cards["BLANK"] = int(data.flat[draw(st.integers(0, data.size - 1))])  # some pixels are blank
        else:
            cards["BLANK"] = draw(hostile_value)
    return cards


def hdul_bytes(hdus) -> bytes:
    from astropy.io import fits

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's complaints about what we mean to write
        fits.HDUList(hdus).writeto(buffer, output_verify="silentfix")
    return buffer.getvalue()


@st.composite
def fits_from_astropy(draw):
    """``(suffix, bytes)`` of a FITS file astropy writes from hostile arrays and keywords."""
    from astropy.io import fits

    layout = draw(st.sampled_from(["primary", "extension", "extensions", "tables", "table_then_image", "compressed"]))
    if layout == "compressed":  # astropy cannot tile-compress an empty image
        side = weighted(st.integers(2, 12), st.just(1))
        shape = draw(either(st.tuples(side, side), st.tuples(st.integers(1, 3), side, side)))
        data = draw(pixel_arrays(shape, COMPRESSIBLE_DTYPES))
        algorithm = draw(st.sampled_from(["RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1", "PLIO_1", "NOCOMPRESS"]))
        if algorithm == "PLIO_1":  # a mask, what PLIO is for: astropy 8.0.2's PLIO compressor
            # corrupts the heap (and kills the process) on noisy data, writing, not reading
            data = (data.view(np.uint8).reshape(-1)[: int(np.prod(shape))].reshape(shape) % 64 == 0).astype(">i4")
        if algorithm == "HCOMPRESS_1" and min(shape[-2:]) < 4:
            algorithm = "RICE_1"  # astropy refuses to write HCOMPRESS tiles narrower than 4
        tile = tuple(draw(st.integers(1, max(1, side))) for side in shape) if draw(st.booleans()) else None
        if algorithm == "HCOMPRESS_1":
            tile = None
        options = dict(
            compression_type=algorithm,
            tile_shape=tile,
            quantize_level=draw(st.sampled_from([16.0, 4.0, 0.0, -0.01, -1e-6, 1e6])),
            quantize_method=draw(st.sampled_from([-1, 1, 2])),
            dither_seed=draw(st.integers(0, 10000)),
        )
        scaling = draw(scaling_cards(data))
        try:
            hdu = fits.CompImageHDU(data, **options)
            for key, value in scaling.items():
                hdu.header[key] = value
            content = hdul_bytes([fits.PrimaryHDU(), hdu])
        except Exception:  # noqa: BLE001 - astropy cannot write every combination: then test the bare tile layout
            content = hdul_bytes([fits.PrimaryHDU(), fits.CompImageHDU(data.astype(">f4"), compression_type="RICE_1")])
        return draw(st.sampled_from([".fits.fz", ".fz", ".fits"])), content

    shape = draw(image_shapes)
    data = draw(pixel_arrays(shape)) if shape else None
    image = fits.PrimaryHDU(data) if layout == "primary" else fits.ImageHDU(data, name="SCI")
    for key, value in draw(scaling_cards(data)).items():
        image.header[key] = value
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="flux", format="E", array=np.arange(draw(st.integers(0, 5)), dtype=np.float32))]
    )
    if layout == "primary":
        hdus = [image]
    elif layout == "extension":
        hdus = [fits.PrimaryHDU(), image]
    elif layout == "extensions":  # one band per extension; the others of the same shape or not
        hdus = [fits.PrimaryHDU(), image]
        for index in range(draw(st.integers(1, 3))):
            other = shape if draw(st.booleans()) else draw(image_shapes)
            hdus.append(fits.ImageHDU(draw(pixel_arrays(other)) if other else None, name=f"B{index}"))
    elif layout == "tables":
        hdus = [fits.PrimaryHDU(), table]
    else:
        hdus = [fits.PrimaryHDU(), table, image]
    content = hdul_bytes(hdus)
    if draw(st.booleans()):
        return draw(st.sampled_from(GZ_NAMES)), gzip.compress(content, compresslevel=1)
    return draw(st.sampled_from(FITS_NAMES)), content


def expected_bands(path):
    """What the reader should give for a file with a single image HDU, by astropy alone (None:
    refused). The same float32 conversion and median fill as the docs promise."""
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with fits.open(path) as hdul:
                data = next((h.data for h in hdul if h.is_image and h.header.get("NAXIS", 0) > 0), None)
                if data is None:
                    return None
                data = np.asarray(data, dtype=np.float32)
        except Exception:  # noqa: BLE001 - what astropy cannot read, the reader refuses
            return None
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim not in (2, 3) or min(data.shape[-2:]) < 2 or 0 in data.shape:
        return None
    bands = data[None] if data.ndim == 2 else data.copy()
    for band in bands:
        finite = np.isfinite(band)
        if not finite.any():
            return None
        band[~finite] = np.median(band[finite])
    return bands


@given(fits_from_astropy())
@cases(2.0)
def test_fits_written_by_astropy(scratch, case):
    suffix, content = case
    with written(scratch, suffix, content) as path:
        image = read_and_check(path, "FITS written by astropy")
        single = image is None or len(image.hdu_names) == 1
        if single and not suffix.endswith("fz"):
            # a correct image, not just a valid one: astropy's own reading, scaled and filled
            expected = expected_bands(path)
            if expected is None:
                assert image is None
            else:
                assert image is not None
                np.testing.assert_array_equal(image.bands, expected)


# ----------------------------------------------------------------------------- the FITS composite

finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
band_shapes = st.tuples(st.integers(1, 4), st.integers(2, 16), st.integers(2, 16))


@given(hnp.arrays(np.float32, band_shapes, elements=finite_float32), st.sampled_from(["gri", "rg", "x", "ugrizy"]))
# found by the long profile: overflows in the sums, then in the stretch (a band of zeros and one faint pixel)
@example(np.array([[[-0.5, 2.870679e-39], [0.0, 0.0]]], np.float32), "gri")
@example(np.pad(np.array([[[-1.0, 2.162121e-39]]], np.float32), ((0, 0), (0, 7), (0, 11))), "gri")
@cases(2.0)
def test_composite_of_any_finite_bands(bands, names):
    """The Lupton stretch behind every FITS composite takes any finite float32 data (values from
    1e-45 to 3e38, constant bands, a single bright pixel) without an exception or a warning."""
    from napari_clumps.composite import lupton_composite

    names = list(names)[: len(bands)] + [f"b{i}" for i in range(len(bands) - len(names))]
    with measured("composite of any finite bands"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        composite = lupton_composite(bands, names)
    assert composite.dtype == np.uint8 and composite.shape == (*bands.shape[1:], 3)
    assert not user_visible(caught), user_visible(caught)
    FUZZ_COUNTS["composite of any finite bands", "composite"] += 1


@given(
    hnp.arrays(np.float32, band_shapes, elements=st.integers(-1000, 1000).map(float)),
    st.integers(-100, 100),
)
# found by the long profile: a band 99 % at or below its sky was left in the file's units
@example(np.array([[[0.0, -1.0], [0.0, 0.0]], [[0.0, 0.0], [-1.0, -1.0]]], np.float32), -1)
@cases(1.0)
def test_composite_does_not_depend_on_the_units(bands, exponent):
    """The same image in other units (times a power of two, exact in floating point) has the same
    composite, whether its values are near 1e-30 or 1e30."""
    from napari_clumps.composite import lupton_composite

    with measured("composite in other units"):
        np.testing.assert_array_equal(
            lupton_composite(np.ldexp(bands, exponent), "griz"[: len(bands)]),
            lupton_composite(bands, "griz"[: len(bands)]),
        )
    FUZZ_COUNTS["composite in other units", "same composite"] += 1


# ----------------------------------------------------------------------------- FITS written card by card


def fits_header_bytes(cards, end: bool = True) -> bytes:
    from astropy.io import fits

    text = "".join(fits.Card(key, value).image for key, value in cards) + ("END" if end else "")
    text = text.ljust(-(-len(text) // 2880) * 2880 or 2880)
    return text.encode("ascii")


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 2880)


sane_bitpix = st.sampled_from([8, 16, 32, 64, -32, -64])
hostile_bitpix = st.sampled_from([0, 7, -16, 24, 128, -8, "x", 8.5, True])
sane_naxis = st.integers(0, 4)
hostile_naxis = st.sampled_from([-1, 5, 999, 1000, 2.5, "two", True, 10**6])
sane_side = st.integers(1, 12)
hostile_side = st.sampled_from([0, -1, -7, 2.5, "ten", 2**31 - 1, 2**31, 2**32 + 3, 10**5, 10**9, 2**62])


@st.composite
def hdu_cards(draw, first: bool):
    """The mandatory cards of an HDU, each possibly wrong, missing or contradicting the data."""
    bitpix = draw(weighted(sane_bitpix, hostile_bitpix))
    naxis = draw(weighted(sane_naxis, hostile_naxis))
    n_sides = (
        naxis if isinstance(naxis, int) and not isinstance(naxis, bool) and 0 <= naxis <= 4 else draw(st.integers(0, 4))
    )
    sides = [draw(weighted(sane_side, hostile_side, 6)) for _ in range(n_sides)]
    cards = [("SIMPLE", draw(weighted(st.just(True), st.sampled_from([False, "T", 1]))))] if first else []
    if not first:
        cards = [("XTENSION", draw(weighted(st.just("IMAGE"), st.sampled_from(["BINTABLE", "TABLE", "FOO", ""]))))]
    cards += [("BITPIX", bitpix), ("NAXIS", naxis)]
    cards += [(f"NAXIS{i + 1}", side) for i, side in enumerate(sides)]
    if not first:
        cards += [("PCOUNT", draw(weighted(st.just(0), st.sampled_from([-1, 5, 10**9])))), ("GCOUNT", 1)]
    for key in ("BSCALE", "BZERO", "BLANK", "BUNIT", "EXTNAME", "FILTER", "BANDS"):
        if draw(one_in(5)):
            cards.append((key, draw(hostile_value)))
    if cards and draw(one_in(10)):  # a mandatory card missing, or a duplicate
        index = draw(st.integers(0, len(cards) - 1))
        cards = cards[:index] + cards[index + 1 :] if draw(st.booleans()) else cards + [cards[index]]
    n_values = 1
    for side in sides:
        n_values *= side if isinstance(side, int) and not isinstance(side, bool) and side > 0 else 0
    declared = abs(bitpix) // 8 * n_values if isinstance(bitpix, int) and not isinstance(bitpix, bool) else 0
    return cards, declared


@st.composite
def raw_fits_headers(draw):
    """``(suffix, bytes)`` of a FITS file of one or two HDUs written card by card."""
    content = b""
    for index in range(draw(st.integers(1, 2))):
        cards, declared = draw(hdu_cards(first=index == 0))
        end = draw(weighted(st.just(True), st.just(False), 12))
        # data: as declared, short, long or none; random bytes, so any float may come up
        size = draw(
            either(
                st.just(min(declared, 20000)),
                st.integers(0, min(declared, 20000)),
                st.integers(declared, declared + 3000),
            )
        )
        size = min(size, 20000)
        data = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(size)
        content += fits_header_bytes(cards, end) + (padded(data) if draw(st.booleans()) else data)
    if draw(one_in(4)):
        return draw(st.sampled_from(GZ_NAMES)), gzip.compress(content, compresslevel=1)
    return draw(st.sampled_from(FITS_NAMES)), content


def scaled_bytes(shape, bscale: float) -> bytes:
    """A FITS file of 8-bit pixels 0..4 times ``bscale``."""
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) % 5)
    hdu.header["BSCALE"] = bscale
    return hdul_bytes([hdu])


@given(raw_fits_headers())
# found by the long profile: pixels near float32's limit (BSCALE = 1e38) made the median that
# replaces the infinite ones infinite too
@example((".fits", scaled_bytes((2, 11, 7), 1e38)))
@example((".fits", scaled_bytes((11, 7), 1e38)))
@cases(2.0)
def test_fits_headers_written_card_by_card(scratch, case):
    with written(scratch, *case) as path:
        read_and_check(path, "FITS headers card by card")


# ----------------------------------------------------------------------------- WCS keywords

#: Celestial axis pairs (longitude, latitude): equatorial, galactic, ecliptic, supergalactic,
#: helioprojective (solar), planetary and made-up ones.
AXIS_PAIRS = (("RA--", "DEC-"), ("GLON", "GLAT"), ("ELON", "ELAT"), ("SLON", "SLAT"), ("HPLN", "HPLT"),
              ("HGLN", "HGLT"), ("CRLN", "CRLT"), ("PLON", "PLAT"), ("XXLN", "XXLT"), ("RA--", "RA--"))  # fmt: skip
PROJECTIONS = ("TAN", "SIN", "ZPN", "CAR", "AIT", "MOL", "HPX", "TPV", "ARC", "XYZ", "TAN-SIP", "TAN-TAN", "")
OTHER_CTYPES = ("RA", "DEC", "", "LINEAR", "FREQ", "UTC", "DEC--TAN-XXX", "RA---TAN")


@st.composite
def ctype_pair(draw):
    """CTYPE1, CTYPE2: mostly a matching pair (in either order), sometimes anything."""
    if draw(one_in(5)):
        return draw(st.sampled_from(OTHER_CTYPES)), draw(st.sampled_from(OTHER_CTYPES))
    lon, lat = draw(st.sampled_from(AXIS_PAIRS))
    projection = draw(st.sampled_from(PROJECTIONS))
    pair = [
        f"{lon}-{projection}" if projection else lon.rstrip("-"),
        f"{lat}-{projection}" if projection else lat.rstrip("-"),
    ]
    return tuple(reversed(pair)) if draw(one_in(4)) else tuple(pair)


WCS_FLOAT_KEYS = ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2", "CROTA2", "LONPOLE", "LATPOLE")
WCS_MATRIX_KEYS = ("CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1", "PC2_2")
WCS_OTHER = {
    "CUNIT1": st.sampled_from(["deg", "arcsec", "rad", "furlong", "", "m", "Hz"]),
    "CUNIT2": st.sampled_from(["deg", "arcsec", "rad", "furlong", "", "m"]),
    "RADESYS": st.sampled_from(["ICRS", "FK5", "FK4", "FK4-NO-E", "GAPPT", "GALACTIC", "BOGUS", ""]),
    "EQUINOX": either(st.sampled_from([2000.0, 1950.0, 0.0, -1e10, 1e10]), st.just("J2000")),
    "WCSAXES": st.sampled_from([1, 2, 3, 5, 0, -1]),
    "PV2_1": hostile_number,
    "PV2_2": hostile_number,
    "PV1_1": hostile_number,
    "A_ORDER": st.sampled_from([0, 1, 2, 3, 9, -1]),
    "B_ORDER": st.sampled_from([0, 2, 3]),
    "A_2_0": hostile_number,
    "B_0_2": hostile_number,
    "CTYPE3": st.sampled_from(["FREQ", "RA---TAN", "STOKES", "WAVE"]),
    "MJD-OBS": hostile_value,
    "DATE-OBS": st.sampled_from(["2020-01-01", "2020-13-45", "yesterday", "", "1858-11-17T00:00:00"]),
    "DATEREF": st.sampled_from(["2020-01-01", "not a date"]),
    "SPECSYS": st.sampled_from(["TOPOCENT", "BOGUS"]),
    "RESTFRQ": hostile_number,
}


@st.composite
def wcs_cards(draw):
    """A WCS header drawn from sane values (the test fixture's), then broken by hostile cards."""
    cards = dict(make_wcs_header()) if draw(st.booleans()) else {}
    cards.pop("DATEREF", None)
    cards["CTYPE1"], cards["CTYPE2"] = draw(ctype_pair())
    for key in draw(st.lists(st.sampled_from(WCS_FLOAT_KEYS + WCS_MATRIX_KEYS), max_size=6)):
        cards[key] = draw(
            weighted(st.sampled_from([0.0, 1e-4, -1e-4, 90.0, 95.0, -91.0, 360.0, 720.0, 1.0]), hostile_number)
        )
    for key in draw(st.lists(st.sampled_from(sorted(WCS_OTHER)), max_size=4)):
        cards[key] = draw(WCS_OTHER[key])
    for key in draw(st.lists(st.sampled_from(sorted(cards)), max_size=2)):
        cards.pop(key, None)  # a keyword missing
    return cards


@given(wcs_cards(), st.sampled_from([(9, 11), (3, 9, 11), (1, 1, 9, 11)]), st.sampled_from(["primary", "extension"]))
# found by the long profile: a pixel scale that overflows
@example({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 0.0, "CDELT1": 1e300}, (9, 11), "primary")
@cases(2.0)
def test_fits_with_broken_wcs_keywords(scratch, cards, shape, layout):
    from astropy.io import fits

    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    image = fits.PrimaryHDU(data) if layout == "primary" else fits.ImageHDU(data)
    for key, value in cards.items():
        image.header[key] = value
    primary = fits.PrimaryHDU()
    if layout == "extension":  # a WCS in the primary header too, which may contradict
        primary.header.update(make_wcs_header())
    content = hdul_bytes([image] if layout == "primary" else [primary, image])
    with written(scratch, ".fits", content) as path:
        image = read_and_check(path, "FITS with broken WCS")
        assert image is not None  # a broken WCS never costs the pixels
        np.testing.assert_array_equal(image.bands.reshape(-1), data.reshape(-1))


# ----------------------------------------------------------------------------- PNG / JPEG through PIL

RASTER_MODES = ("1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B")


@st.composite
def rasters_from_pil(draw):
    """``(suffix, bytes, mode)`` of a PNG or JPEG that PIL writes, in any mode it can."""
    from PIL import Image

    mode = draw(st.sampled_from(RASTER_MODES))
    height, width = draw(weighted(st.integers(1, 24), st.integers(25, 60))), draw(st.integers(1, 40))
    wide = mode.startswith("I;16")
    pixels = draw(hnp.arrays(np.uint16 if wide else np.uint8, (height, width, 4)))
    if wide:  # a uint16 array is an I;16 image
        image = Image.fromarray(np.ascontiguousarray(pixels[..., 0]))
        image = image if mode == "I;16" else image.convert(mode)
    else:
        image = Image.fromarray(pixels, "RGBA")
        base = "P" if mode.startswith("P") else mode
        image = image.convert(base) if base not in ("RGBA",) else image
    jpeg_modes = ("L", "RGB", "CMYK", "YCbCr")
    fmt = draw(st.sampled_from(["JPEG", "PNG"])) if mode in jpeg_modes else "PNG"
    if mode == "CMYK" or mode == "YCbCr":
        fmt = "JPEG"
    options = {}
    if fmt == "JPEG":
        options = dict(quality=draw(st.integers(1, 100)), progressive=draw(st.booleans()))
        options["subsampling"] = draw(st.sampled_from([0, 1, 2]))
    elif mode == "P+transparency":
        options["transparency"] = draw(st.integers(0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    suffix = draw(st.sampled_from([".jpg", ".jpeg", ".JPG"] if fmt == "JPEG" else [".png", ".PNG"]))
    return suffix, buffer.getvalue(), mode


@given(rasters_from_pil())
@cases(2.0)
def test_png_and_jpeg_in_every_mode(scratch, case):
    from PIL import Image

    suffix, content, mode = case
    with written(scratch, suffix, content) as path:
        image = read_and_check(path, "PNG/JPEG in every mode")
        assert image is not None  # every one of these is a good file
        with Image.open(path) as original:
            if mode in ("1", "L"):
                expected = np.asarray(original.convert("L"))
                np.testing.assert_array_equal(image.composite[..., 0], expected)
                assert image.band_names == ("L",)
            elif mode.startswith("I;16"):
                grey = np.asarray(original.convert("F"), dtype=np.float32)
                expected = np.rint(grey / max(float(grey.max()), 1.0) * 255)
                assert np.abs(image.composite[..., 0].astype(float) - expected).max() <= 1
            else:
                np.testing.assert_array_equal(image.composite, np.asarray(original.convert("RGB")))


def png_chunk(kind: bytes, data: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + data) ^ (0 if crc_ok else 0xFFFF)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PNG_COLOUR_DEPTHS = ((0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4), (3, 8),
                     (4, 8), (4, 16), (6, 8), (6, 16))  # fmt: skip


@st.composite
def raw_png(draw):
    """``(suffix, bytes)`` of a PNG written chunk by chunk, with any header PNG can hold."""
    width = draw(weighted(st.integers(1, 24), st.sampled_from([0, 2**31 - 1, 2**31, 2**32 - 1, 70000])))
    height = draw(weighted(st.integers(1, 24), st.sampled_from([0, 2**31 - 1, 70000])))
    colour, bit_depth = draw(
        weighted(
            st.sampled_from(PNG_COLOUR_DEPTHS),  # every valid combination: 16-bit colour, 1-bit palette...
            st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]), st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32])),
            usual_weight=4,
        )
    )
    interlace = draw(weighted(st.sampled_from([0, 1]), st.just(2), usual_weight=6))
    header = struct.pack(
        ">IIBBBBB", width, height, bit_depth, colour, 0, draw(weighted(st.just(0), st.just(1))), interlace
    )
    chunks = [png_chunk(b"IHDR", header, draw(weighted(st.just(True), st.just(False), 12)))]
    if colour == 3 or draw(one_in(6)):
        entries = draw(weighted(st.integers(1, 256), st.sampled_from([0, 257, 300])))
        chunks.append(png_chunk(b"PLTE", np.random.default_rng(entries).bytes(3 * entries)))
    if draw(one_in(5)):
        chunks.append(png_chunk(b"tRNS", draw(st.binary(max_size=300))))
    seed = draw(st.integers(0, 2**32 - 1))
    if (
        0 < width <= 4096
        and 0 < height <= 4096
        and width * height <= 4096
        and draw(weighted(st.just(True), st.just(False)))
    ):
        # image data of the declared size: rows (of each Adam7 pass when interlaced), each after
        # a filter byte (0-4 valid)
        rng = np.random.default_rng(seed)
        max_filter = 5 if draw(weighted(st.just(True), st.just(False))) else 256
        raw = b""
        for x0, y0, dx, dy in ADAM7 if interlace == 1 else ((0, 0, 1, 1),):
            pass_width, pass_height = -(-(width - x0) // dx), -(-(height - y0) // dy)
            if pass_width > 0 and pass_height > 0:
                row = -(-pass_width * PNG_CHANNELS.get(colour, 1) * max(bit_depth, 1) // 8)
                raw += b"".join(bytes([rng.integers(0, max_filter)]) + rng.bytes(row) for _ in range(pass_height))
        stream = zlib.compress(raw)
    else:
        stream = zlib.compress(np.random.default_rng(seed).bytes(draw(st.integers(0, 2000))))
    if draw(one_in(6)):
        stream = stream[: draw(st.integers(0, len(stream)))]
    split = draw(st.integers(0, len(stream)))  # image data in one or two IDAT chunks
    chunks += [png_chunk(b"IDAT", stream[:split]), png_chunk(b"IDAT", stream[split:])]
    if draw(weighted(st.just(True), st.just(False))):
        chunks.append(png_chunk(b"IEND", b""))
    return draw(st.sampled_from([".png", ".PNG"])), PNG_SIGNATURE + b"".join(chunks)


@given(raw_png())
@cases(2.0)
def test_png_written_chunk_by_chunk(scratch, case):
    with written(scratch, *case) as path:
        read_and_check(path, "PNG chunk by chunk")


# ----------------------------------------------------------------------------- damaged good files


def _good_files() -> dict:
    """name -> (suffix, bytes) of valid files of every kind, to be damaged."""
    from astropy.io import fits
    from PIL import Image

    rng = np.random.default_rng(3)
    planes = (rng.normal(100, 10, (3, 24, 32))).astype(np.float32)
    header = make_wcs_header()
    files = {}
    files["single"] = ".fits", hdul_bytes([fits.PrimaryHDU(planes[0], header=header)])
    scaled = fits.PrimaryHDU((planes[0] * 10).astype(np.int16), header=header)
    scaled.header.update(BSCALE=0.1, BZERO=5.0, BLANK=-32768)
    files["scaled"] = ".fits", hdul_bytes([scaled])
    files["cube"] = ".fits", hdul_bytes([fits.PrimaryHDU(planes, header=header)])
    files["mef"] = ".fits", hdul_bytes([fits.PrimaryHDU()] + [fits.ImageHDU(p, header=header) for p in planes])
    files["gz"] = ".fits.gz", gzip.compress(files["cube"][1])
    for algorithm, tile in (("RICE_1", None), ("HCOMPRESS_1", None), ("GZIP_2", (5, 7)), ("PLIO_1", (1, 32))):
        data = (planes[0] > 110).astype(np.int32) if algorithm == "PLIO_1" else planes[0]  # a mask (see above)
        hdu = fits.CompImageHDU(data, header=header, compression_type=algorithm, tile_shape=tile)
        files[f"fz_{algorithm}"] = ".fits.fz", hdul_bytes([fits.PrimaryHDU(), hdu])
    rgb = np.clip(planes.transpose(1, 2, 0) * 2 - 100, 0, 255).astype(np.uint8)
    for name, image, fmt, options in (
        ("png", Image.fromarray(rgb), "PNG", {}),
        ("png_rgba", Image.fromarray(np.dstack([rgb, rgb[..., :1]])), "PNG", {}),
        ("png_16bit", Image.fromarray((planes[0] * 300).astype(np.uint16)), "PNG", {}),
        ("png_palette", Image.fromarray(rgb).convert("P"), "PNG", {"transparency": 0}),
        ("jpeg", Image.fromarray(rgb), "JPEG", {"quality": 90}),
        ("jpeg_progressive", Image.fromarray(rgb), "JPEG", {"progressive": True}),
        ("jpeg_cmyk", Image.fromarray(rgb).convert("CMYK"), "JPEG", {}),
    ):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        files[name] = (".png" if fmt == "PNG" else ".jpg"), buffer.getvalue()
    return files


GOOD_FILES = _good_files()
#: Header keywords whose values the damage overwrites (the first card of each name).
FITS_KEYS = ("NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BITPIX", "BSCALE", "BZERO", "BLANK", "PCOUNT", "GCOUNT", "THEAP",
             "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZBITPIX", "ZTILE1", "ZTILE2", "ZCMPTYPE", "ZQUANTIZ", "ZSCALE", "ZZERO",
             "ZBLANK", "ZNAME1", "ZVAL1", "TFIELDS", "TFORM1", "XTENSION", "SIMPLE", "EXTEND", "ZIMAGE", "CTYPE1",
             "CD1_1", "CRPIX1")  # fmt: skip


def overwrite_card(content: bytes, key: str, value) -> bytes:
    """``content`` with the first card ``key`` given a new value, in place (the same length)."""
    from astropy.io import fits

    at = content.find(f"{key:<8}=".encode())
    if at < 0 or at % 80:
        return content
    card = fits.Card(key, value).image[:80].encode("ascii")
    return content[:at] + card + content[at + 80 :]


@st.composite
def mutated_files(draw):
    """``(suffix, bytes)`` of a valid file truncated, with bytes flipped, a header value
    overwritten or under another kind's name."""
    name = draw(st.sampled_from(sorted(GOOD_FILES)))
    suffix, content = GOOD_FILES[name]
    is_gz = suffix.endswith(".gz")
    if is_gz and draw(st.booleans()):  # damage the FITS inside the gzip, not the gzip
        content = gzip.decompress(content)
    else:
        is_gz = False
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "card"]))
        if how == "truncate":  # (empty files are the random bytes' business)
            content = content[: draw(st.integers(1, max(1, len(content))))]
        elif how == "flip" and content:
            for at in draw(st.lists(st.integers(0, len(content) - 1), min_size=1, max_size=8)):
                content = content[:at] + bytes([content[at] ^ draw(st.integers(1, 255))]) + content[at + 1 :]
        elif how == "insert":
            at = draw(st.integers(0, len(content)))
            content = content[:at] + draw(st.binary(min_size=1, max_size=100)) + content[at:]
        elif how == "delete" and content:
            at = draw(st.integers(0, len(content) - 1))
            content = content[:at] + content[at + draw(st.integers(1, 200)) :]
        elif how == "card":
            content = overwrite_card(content, draw(st.sampled_from(FITS_KEYS)), draw(hostile_value))
    if is_gz:
        content = gzip.compress(content, compresslevel=1)
    if draw(one_in(5)):  # another kind's name: a PNG called .fits, a FITS called .jpg
        suffix = draw(st.sampled_from(SUPPORTED_SUFFIXES))
    return suffix, content


def with_byte(content: bytes, after: bytes, value: int) -> bytes:
    """``content`` with the byte after the first ``after`` replaced by ``value``."""
    at = content.index(after) + len(after)
    return content[:at] + bytes([value]) + content[at + 1 :]


@given(mutated_files())
# found by the long profile: a NUL in a card's comment made astropy print its VerifyWarnings
@example((".fits", with_byte(GOOD_FILES["cube"][1], b"conforms to", 0)))
@cases(3.0)
def test_damaged_good_files(scratch, case):
    with written(scratch, *case) as path:
        read_and_check(path, "damaged good files")


MAGICS = (b"", b"SIMPLE  =                    T", PNG_SIGNATURE, b"\xff\xd8\xff", b"\xff\xd8\xff\xe0", b"\x1f\x8b")


@st.composite
def random_bytes(draw):
    """``(suffix, bytes)``: random bytes after a magic number or not, under any supported name;
    gzip that is not gzip (a gzip magic before garbage, gzip of garbage, gzip of gzip)."""
    body = draw(st.binary(max_size=4000))
    kind = draw(st.sampled_from(["magic", "gzip_of_garbage", "gzip_of_gzip", "plain_fits_named_gz"]))
    if kind == "magic":
        content = draw(st.sampled_from(MAGICS)) + body
    elif kind == "gzip_of_garbage":
        content = gzip.compress(body)
    elif kind == "gzip_of_gzip":
        content = gzip.compress(gzip.compress(GOOD_FILES["single"][1] + body))
    else:
        content = GOOD_FILES["single"][1][: draw(st.integers(0, len(GOOD_FILES["single"][1])))] + body
    return draw(st.sampled_from(SUPPORTED_SUFFIXES + GZ_NAMES)), content


@given(random_bytes())
@cases(2.0)
def test_random_bytes_under_every_name(scratch, case):
    with written(scratch, *case) as path:
        read_and_check(path, "random bytes")


# ----------------------------------------------------------------------------- decompression bombs


def bomb_png(width: int, height: int, colour: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    stream = zlib.compress(b"\0" * 1000)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def bomb_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares ``width`` x ``height``."""
    content = GOOD_FILES["jpeg"][1]
    at = content.find(b"\xff\xc0")
    return content[: at + 5] + struct.pack(">HH", height, width) + content[at + 9 :]


def bomb_fits(shape, bitpix: int, extension: bool) -> bytes:
    cards = [("SIMPLE", True), ("BITPIX", bitpix), ("NAXIS", len(shape))]
    cards += [(f"NAXIS{i + 1}", side) for i, side in enumerate(reversed(shape))]
    if extension:
        first = fits_header_bytes([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)])
        cards = [("XTENSION", "IMAGE")] + cards[1:] + [("PCOUNT", 0), ("GCOUNT", 1)]
        return first + fits_header_bytes(cards) + padded(b"\0" * 5000)
    return fits_header_bytes(cards) + padded(b"\0" * 5000)


too_many_pixels = st.tuples(st.integers(1, 2**16 - 1), st.integers(1, 2**16 - 1)).filter(
    lambda size: size[0] * size[1] > MAX_IMAGE_PIXELS
)


@st.composite
def bombs(draw):
    """``(suffix, bytes)`` of a small file whose header declares more than MAX_IMAGE_PIXELS."""
    kind = draw(st.sampled_from(["png", "jpeg", "fits", "fits.gz", "fits cube"]))
    if kind == "png":
        width = draw(st.integers(MAX_IMAGE_PIXELS // 2**31 + 1, 2**31 - 1))
        height = draw(st.integers(MAX_IMAGE_PIXELS // width + 1, 2**31 - 1))
        return ".png", bomb_png(width, height, draw(st.sampled_from([0, 2, 6])))
    if kind == "jpeg":
        return ".jpg", bomb_jpeg(*draw(too_many_pixels))
    height, width = (
        draw(too_many_pixels) if kind != "fits cube" else draw(st.tuples(st.integers(2, 9000), st.integers(2, 9000)))
    )
    shape = (height, width)
    if kind == "fits cube":  # a plane under the limit, more bands than the limit allows
        shape = (3 * MAX_IMAGE_PIXELS // (height * width) + 1, height, width)
    content = bomb_fits(shape, draw(sane_bitpix), draw(st.booleans()))
    return (".fits.gz", gzip.compress(content)) if kind == "fits.gz" else (".fits", content)


@given(bombs())
@cases(1.0)
def test_decompression_bombs_are_refused_before_decoding(scratch, case):
    with written(scratch, *case) as path:
        with pytest.raises(ImageReadError, match="too large"):
            read_image(path)
        assert read_and_check(path, "declared too large (bombs)") is None


@pytest.mark.parametrize("kind", ["png", "jpeg", "fits", "fits.fz"])
def test_the_pixel_limit_is_the_one_in_io(scratch, monkeypatch, kind):
    """A file of exactly MAX_IMAGE_PIXELS pixels is read, one more row is refused: the limit is
    the constant users can change, checked on the declared size."""
    from astropy.io import fits
    from PIL import Image

    monkeypatch.setattr(napari_clumps_io, "MAX_IMAGE_PIXELS", 12 * 10)
    for rows, ok in ((12, True), (13, False)):
        data = np.random.default_rng(0).normal(100, 10, (rows, 10)).astype(np.float32)
        buffer = io.BytesIO()
        if kind in ("png", "jpeg"):
            Image.fromarray(data.astype(np.uint8)).save(buffer, format=kind.upper())
            content = buffer.getvalue()
        elif kind == "fits":
            content = hdul_bytes([fits.PrimaryHDU(data)])
        else:
            content = hdul_bytes([fits.PrimaryHDU(), fits.CompImageHDU(data)])
        with written(scratch, f".{kind.replace('jpeg', 'jpg')}", content) as path:
            if ok:
                assert read_image(path).bands.shape[1:] == (rows, 10)
            else:
                with pytest.raises(ImageReadError, match="too large"):
                    read_image(path)


# ----------------------------------------------------------------------------- the napari reader and the CLI

any_hostile_file = either(
    fits_from_astropy(),
    raw_fits_headers(),
    mutated_files(),
    random_bytes(),
    raw_png(),
    rasters_from_pil().map(lambda case: case[:2]),
    bombs(),
)


@given(any_hostile_file, st.booleans())
@cases(1.0)
def test_napari_reader_on_hostile_files(scratch, case, with_a_good_file):
    """The npe2 reader: layer tuples, or one error naming the file (napari shows it); with a
    good file opened at the same time, the good one loads and the bad one is a warning
    (a notification in napari) naming it."""
    from napari_clumps._reader import napari_get_reader, read_galaxy_images

    suffix, content = case
    good_suffix, good_content = GOOD_FILES["png"]
    with written(scratch, suffix, content) as path, written(scratch, good_suffix, good_content, "good") as good:
        paths = [str(path), str(good)] if with_a_good_file else str(path)
        reader = napari_get_reader(paths)
        assert reader is read_galaxy_images  # every generated name is a supported one
        with measured("napari reader"), failing_if_it_hangs(path), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                layers = reader(paths)
            except ImageReadError as error:
                assert not with_a_good_file
                assert_one_line_error(error, path)
                outcome, layers = "error", []
        shown = user_visible(caught)
        if layers:
            outcome = "layers"
            assert len(layers) in (1, 2) and all(kind == "image" for _, _, kind in layers)
            for data, kwargs, _ in layers:
                assert data.dtype == np.uint8 and data.ndim == 3 and data.shape[-1] == 3 and kwargs["rgb"]
            names = [kwargs["name"] for _, kwargs, _ in layers]
            if len(layers) == 1 and with_a_good_file:  # the bad file failed: one notification naming it
                assert names == [good.name]
                assert len(shown) == 1 and f"{path}: " in shown[0] and "\n" not in shown[0], shown
                shown = []
        assert not shown, shown
        FUZZ_COUNTS["napari reader", outcome] += 1


def run_info(paths) -> tuple[int, list[str], list[str]]:
    """``napari-clumps info PATHS`` in this process: status, stdout lines, stderr lines."""
    from napari_clumps.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["info", *map(str, paths)])
    return status, out.getvalue().splitlines(), err.getvalue().splitlines()


@given(st.lists(any_hostile_file, min_size=1, max_size=3))
@cases(0.5)
def test_cli_info_on_hostile_files(scratch, files):
    """`napari-clumps info`: one line per file, on stdout for an image, on stderr for an error
    naming it; a bad file never costs the files after it; exit status 1 when any failed."""
    good_suffix, good_content = GOOD_FILES["cube"]
    with contextlib.ExitStack() as stack:
        paths = [
            stack.enter_context(written(scratch, suffix, content, f"f{i}")) for i, (suffix, content) in enumerate(files)
        ]
        paths.append(stack.enter_context(written(scratch, good_suffix, good_content, "good")))
        with measured("CLI info"), failing_if_it_hangs(paths), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status, out, err = run_info(paths)
        assert not user_visible(caught), user_visible(caught)
        assert len(out) + len(err) == len(paths), (out, err)
        for line in err:
            assert line.startswith("error: ") and any(line.startswith(f"error: {p}: ") for p in paths), line
        described = [line.split(":")[0] for line in out]
        assert described[-1] == "good.fits"  # the good file, after the bad ones, is still read
        assert status == (1 if err else 0)
        FUZZ_COUNTS["CLI info", f"{len(err)} of {len(paths)} files failed"] += 1


def hostile_folder(folder: Path) -> dict:
    """A folder of one file of each kind of fault the fuzzing covers, and two good files; name -> path."""
    from astropy.io import fits

    tiny = hdul_bytes([fits.PrimaryHDU((np.random.default_rng(1).normal(5, 1, (20, 20)) * 1e-30).astype(np.float32))])
    sun = fits.PrimaryHDU(np.ones((20, 20), np.float32))
    sun.header.update(CTYPE1="HPLN-TAN", CTYPE2="HPLT-TAN", CDELT1=1.0, CDELT2=1.0)
    contents = {
        "good.fits": GOOD_FILES["cube"][1],
        "good.png": GOOD_FILES["png"][1],
        "truncated.fits": GOOD_FILES["cube"][1][:4000],
        "bomb.png": bomb_png(100000, 100000, 2),
        "bomb.fits": bomb_fits((100000, 100000), -32, False),
        "wrong_naxis.fits": overwrite_card(GOOD_FILES["single"][1], "NAXIS", "two"),
        "not_gzip.fits.gz": b"\x1f\x8b" + b"not gzip at all" * 20,
        "random.fz": bytes(range(256)) * 8,
        "gif_named.png": _other_format("GIF"),
        "fits_named.png": GOOD_FILES["single"][1],
        "cut.jpg": GOOD_FILES["jpeg"][1][:300],
        "empty.jpeg": b"",
        "tiny_values.fits": tiny,
        "solar_wcs.fits": hdul_bytes([sun]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (folder / name).write_bytes(content)
    return {name: folder / name for name in contents}


def _other_format(fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_cli_info_on_a_folder_of_hostile_files_has_no_traceback(tmp_path):
    """The installed command, as a user runs it: one line per bad file on stderr, the good files
    described, no traceback, exit status 1."""
    files = hostile_folder(tmp_path / "cutouts")
    run = subprocess.run(
        [sys.executable, "-m", "napari_clumps", "info", str(tmp_path / "cutouts")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "Warning" not in run.stderr, run.stderr
    errors = run.stderr.splitlines()
    readable = {"good.fits", "good.png", "tiny_values.fits", "solar_wcs.fits"}
    assert len(errors) == len(files) - len(readable), errors
    for name in set(files) - readable:
        assert sum(line.startswith(f"error: {files[name]}: ") for line in errors) == 1, (name, errors)
    described = {line.split(":")[0] for line in run.stdout.splitlines()}
    assert described == readable


def test_cli_detect_on_a_folder_of_hostile_files(tmp_path, capsys):
    """`napari-clumps detect` (with a small untrained model: the reading is what is tested):
    one error line per bad file, the good ones detected, all listed in the images list."""
    import torch

    from napari_clumps.cli import main
    from napari_clumps.detections import read_images_list
    from napari_clumps.model import new_detector, save_model

    files = hostile_folder(tmp_path / "cutouts")
    torch.manual_seed(0)
    model = tmp_path / "untrained.safetensors"
    detector = new_detector("resnet10t", backbone_weights=None)
    detector.provenance = {"model_id": "random-resnet10t", "score_threshold": 0.3}  # as benchmarks/batch_run.py
    save_model(detector, model)
    out = tmp_path / "found.csv"
    status = main(["detect", str(tmp_path / "cutouts"), "--model", str(model), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.err
    readable = {"good.fits", "good.png", "tiny_values.fits", "solar_wcs.fits"}
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    for name in set(files) - readable:
        assert sum(line.startswith(f"error: {files[name]}: ") for line in errors) == 1, (name, errors)
    assert len(errors) == len(files) - len(readable)
    listed = read_images_list(out).set_index("image")
    assert set(listed.index) == set(files)
    assert set(listed.index[listed.status == "ok"]) == readable
