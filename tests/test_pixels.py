"""The pixel-convention conversions (design.md contract)."""

import numpy as np
import pytest

from napari_clumps.pixels import (
    astropy_to_edge,
    boxes_to_napari_rectangles,
    edge_to_astropy,
    flip_boxes_horizontally,
    flip_boxes_vertically,
    napari_rectangles_to_boxes,
    pixel_to_radec,
    radec_to_pixel,
)


def test_pixel_zero_centre_in_each_convention():
    # pixel (row 0, col 0) covers [0, 1) x [0, 1): its centre is edge (0.5, 0.5)
    assert edge_to_astropy(0.5, 0.5) == (0.0, 0.0)  # astropy: first pixel centre at 0
    assert astropy_to_edge(0.0, 0.0) == (0.5, 0.5)
    # napari: pixel centres at integers, (row, col) order
    (rectangle,) = boxes_to_napari_rectangles([[0, 0, 1, 1]])
    np.testing.assert_array_equal(rectangle.min(axis=0), [-0.5, -0.5])
    np.testing.assert_array_equal(rectangle.mean(axis=0), [0.0, 0.0])


def test_box_to_napari_uses_row_col_order():
    (rectangle,) = boxes_to_napari_rectangles([[10, 20, 14, 30]])  # x 10-14, y 20-30
    np.testing.assert_allclose(rectangle.min(axis=0), [19.5, 9.5])
    np.testing.assert_allclose(rectangle.max(axis=0), [29.5, 13.5])


def test_round_trip_is_exact():
    boxes = np.random.default_rng(0).uniform(0, 200, (50, 4))
    boxes = np.column_stack(
        [
            np.minimum(boxes[:, 0], boxes[:, 2]),
            np.minimum(boxes[:, 1], boxes[:, 3]),
            np.maximum(boxes[:, 0], boxes[:, 2]),
            np.maximum(boxes[:, 1], boxes[:, 3]),
        ]
    )
    back = napari_rectangles_to_boxes(boxes_to_napari_rectangles(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-9)


def test_flip_vertically_maps_rows_to_height_minus_row():
    flipped = flip_boxes_vertically([[1, 2, 3, 7]], height=10)
    np.testing.assert_array_equal(flipped, [[1, 3, 3, 8]])
    np.testing.assert_array_equal(flip_boxes_vertically(flipped, 10), [[1, 2, 3, 7]])
    with pytest.raises(ValueError):
        flip_boxes_vertically([[1, 2, 3]], 10)


def test_flip_horizontally_follows_the_pixels_of_a_mirrored_array():
    # a box around column 2 of a 10-wide image: the mirrored array has that pixel in column 7
    image = np.zeros((4, 10))
    image[1, 2] = 1
    mirrored = image[:, ::-1]
    (x_min, y_min, x_max, y_max) = flip_boxes_horizontally([[2, 1, 3, 2]], width=10)[0]
    row, column = np.argwhere(mirrored)[0]
    assert (x_min, x_max, y_min, y_max) == (column, column + 1, row, row + 1)
    np.testing.assert_array_equal(flip_boxes_horizontally([[7, 1, 8, 2]], 10), [[2, 1, 3, 2]])
    with pytest.raises(ValueError):
        flip_boxes_horizontally([[1, 2, 3]], 10)


def test_radec_to_pixel_inverts_pixel_to_radec_on_a_simulated_wcs():
    from napari_clumps.simulate import simulate_galaxy

    galaxy = simulate_galaxy(seed=3, index=1)
    wcs, size = galaxy.wcs(), galaxy.bands.shape[-1]
    # the galaxy's (ra, dec) is CRVAL at the image centre: FITS pixel (size + 1) / 2 is edge size / 2
    x, y = radec_to_pixel(wcs, galaxy.ra, galaxy.dec)
    np.testing.assert_allclose([x[0], y[0]], [size / 2, size / 2], atol=1e-6)
    # edge points across the image (corners, pixel edges, clump centres) go to the sky and back
    rng = np.random.default_rng(1)
    x = np.concatenate([[0, size, 0, size, 0.5], rng.uniform(0, size, 40)])
    y = np.concatenate([[0, 0, size, size, 0.5], rng.uniform(0, size, 40)])
    ra, dec = pixel_to_radec(wcs, x, y)
    x_back, y_back = radec_to_pixel(wcs, ra, dec)
    np.testing.assert_allclose(x_back, x, atol=1e-6)
    np.testing.assert_allclose(y_back, y, atol=1e-6)
    # east is left (x grows westwards: RA falls), north is up (y grows northwards)
    x_east, _ = radec_to_pixel(wcs, galaxy.ra + 1 / 3600, galaxy.dec)
    _, y_north = radec_to_pixel(wcs, galaxy.ra, galaxy.dec + 1 / 3600)
    assert x_east[0] < size / 2 < y_north[0]


def test_radec_to_pixel_takes_icrs_on_a_galactic_wcs():
    from astropy.coordinates import SkyCoord
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    wcs.wcs.crval = [120.0, 30.0]
    wcs.wcs.crpix = [50.5, 50.5]
    wcs.wcs.cdelt = [-0.4 / 3600, 0.4 / 3600]
    ra, dec = pixel_to_radec(wcs, [50.0, 10.25], [50.0, 80.75])
    icrs = SkyCoord(120.0, 30.0, unit="deg", frame="galactic").icrs
    assert ra[0] == pytest.approx(icrs.ra.deg, abs=1e-9) and dec[0] == pytest.approx(icrs.dec.deg, abs=1e-9)
    x, y = radec_to_pixel(wcs, ra, dec)
    np.testing.assert_allclose(x, [50.0, 10.25], atol=1e-6)
    np.testing.assert_allclose(y, [50.0, 80.75], atol=1e-6)
