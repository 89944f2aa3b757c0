"""Reading FITS / JPEG / PNG through the core library (no napari)."""

import numpy as np
import pytest
from conftest import CRPIX, CRVAL, SIZE, band_planes

from napari_clumps.io import ImageReadError, read_image
from napari_clumps.pixels import pixel_to_radec

FITS_KINDS = ["single", "cube", "cube_gz", "mef", "compressed", "degenerate_4d"]


@pytest.mark.parametrize("kind", FITS_KINDS)
def test_fits_kinds_read_in_numpy_orientation_with_wcs(image_files, kind):
    image = read_image(image_files[kind])
    expected = band_planes()
    n_bands = 1 if kind in ("single", "compressed") else 3
    assert image.bands.shape == (n_bands, *SIZE)
    assert image.bands.dtype == np.float32
    if n_bands == 3:
        np.testing.assert_allclose(image.bands, expected, rtol=1e-6)
        assert image.band_names == (("band0", "band1", "band2") if kind == "degenerate_4d" else ("g", "r", "i"))
    else:
        np.testing.assert_allclose(image.bands[0], expected[1], rtol=1e-6)
    # array row 0 is FITS row 1: its values encode row 0
    assert image.bands[0, 0, 5] < 1000 <= image.bands[0, 1, 5]
    assert image.composite.shape == (*SIZE, 3) and image.composite.dtype == np.uint8
    # the WCS maps the reference pixel (FITS 1-based CRPIX = edge CRPIX - 0.5) to CRVAL
    ra, dec = pixel_to_radec(image.wcs, CRPIX[0] - 0.5, CRPIX[1] - 0.5)
    assert ra[0] == pytest.approx(CRVAL[0], abs=1e-9) and dec[0] == pytest.approx(CRVAL[1], abs=1e-9)


def test_multi_extension_keeps_band_names_and_extension_names(image_files):
    image = read_image(image_files["mef"])
    assert image.band_names == ("g", "r", "i")
    assert image.hdu_names == ("IMG_G", "IMG_R", "IMG_I")


def test_non_finite_pixels_are_replaced(image_files):
    image = read_image(image_files["nan"])
    assert np.isfinite(image.bands).all()
    assert image.n_bad_pixels == 3
    band_median = np.median(np.delete(band_planes()[0].ravel(), 5 * SIZE[1] + 7))
    assert image.bands[0, 5, 7] == pytest.approx(band_median)


@pytest.mark.parametrize(
    "kind, names",
    [("jpeg", ("R", "G", "B")), ("png", ("R", "G", "B")), ("png_rgba", ("R", "G", "B")), ("png_grey", ("L",))],
)
def test_raster_kinds(image_files, kind, names):
    image = read_image(image_files[kind])
    assert image.band_names == names
    assert image.bands.shape == (len(names), *SIZE)
    assert image.composite.shape == (*SIZE, 3) and image.composite.dtype == np.uint8
    assert image.wcs is None
    # row 0 is the top row of the file: red (or grey) grows down the rows
    tolerance = 6 if kind == "jpeg" else 0
    assert abs(int(image.composite[0, 10, 0]) - 0) <= tolerance
    assert abs(int(image.composite[50, 10, 0]) - 200) <= tolerance
    if kind != "png_grey":
        assert abs(int(image.composite[10, 70, 1]) - 210) <= tolerance


BAD_REASONS = {
    "corrupt_fits": "not a readable FITS file",
    "corrupt_jpeg": "not a readable JPEG/PNG image",
    "empty_fits": "empty file",
    "empty_png": "empty file",
    "no_data_fits": "no image data",
    "one_d": "1-D data",
    "four_d": "4-D data",
    "all_nan": "no finite pixels",
    "truncated_fits": "not a readable FITS file",
    "truncated_jpeg": "not a readable JPEG/PNG image",
    "nonstandard_gzipped_fits": "SIMPLE = F",
}


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
def test_bad_files_get_one_line_error_naming_the_file(bad_files, kind):
    path = bad_files[kind]
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert BAD_REASONS[kind] in message
    assert "\n" not in message


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.fits")
    other = tmp_path / "table.csv"
    other.write_text("a,b\n")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(other)
