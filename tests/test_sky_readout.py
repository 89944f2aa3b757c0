"""RA/Dec under the cursor in the status bar (napari_clumps._sky_readout), checked against
astropy's WCS of the file at the pixel under the cursor, through the FITS north-up display flip.
A headless viewer model: the status is computed by the layers, not by Qt."""

import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from napari_clumps._layers import detections_layer_over
from napari_clumps._reader import read_galaxy_images
from napari_clumps._sky_readout import radec_text, show_sky_position
from napari_clumps.detections import detections_frame

READOUT = re.compile(r"RA (\S+) Dec (\S+) \((\S+) (\S+)\)")


@pytest.fixture
def viewer():
    from napari.components import ViewerModel

    viewer = ViewerModel()
    show_sky_position(viewer)
    return viewer


def open_in(viewer, path):
    from napari.layers import Layer

    [(data, kwargs, kind)] = read_galaxy_images(str(path))
    return viewer.add_layer(Layer.create(data, kwargs, kind))


def status_at(viewer, layer, row, col) -> str:
    """The status bar text with the cursor over napari data point (row, col) of ``layer``."""
    viewer.cursor.position = tuple(layer.data_to_world((row, col)))
    return layer.get_status(viewer.cursor.position, world=True)["coordinates"]


def readout(text):
    match = READOUT.search(text)
    assert match, f"no RA/Dec in {text!r}"
    return float(match[1]), float(match[2])


@pytest.mark.parametrize("row, col", [(10.25, 50.75), (0.0, 0.0), (59.4, 79.4), (31.0, 7.5)])
def test_ra_dec_under_the_cursor_is_astropys_at_that_pixel(viewer, image_files, row, col):
    layer = open_in(viewer, image_files["single"])
    assert layer.scale[0] < 0  # shown north up by a display flip
    expected = WCS(fits.getheader(image_files["single"])).pixel_to_world(col, row)  # astropy: x = column
    ra, dec = readout(status_at(viewer, layer, row, col))
    assert ra == pytest.approx(expected.icrs.ra.deg, abs=1e-5)
    assert dec == pytest.approx(expected.icrs.dec.deg, abs=1e-5)


def test_north_is_up_and_east_left_on_screen(viewer, image_files):
    layer = open_in(viewer, image_files["single"])
    centre = np.array(layer.data_to_world((30, 40)))

    def sky_at_screen_offset(d_row, d_col):
        viewer.cursor.position = tuple(centre + [d_row, d_col])  # world rows grow down the screen
        return readout(layer.get_status(viewer.cursor.position, world=True)["coordinates"])

    ra0, dec0 = sky_at_screen_offset(0, 0)
    assert sky_at_screen_offset(-5, 0)[1] > dec0  # up: north
    assert sky_at_screen_offset(0, -5)[0] > ra0  # left: east


def test_the_clumps_layer_over_the_image_reads_the_same(viewer, image_files):
    from napari.layers import Layer

    image = open_in(viewer, image_files["single"])
    table = detections_frame("single.fits", [[10, 10, 14, 14]], ["clump"], [0.9], wcs=image.metadata["wcs"])
    clumps = viewer.add_layer(Layer.create(*detections_layer_over(table, image)))
    assert readout(status_at(viewer, clumps, 12.5, 33.25)) == readout(status_at(viewer, image, 12.5, 33.25))


def test_no_readout_off_the_image_or_without_a_wcs(viewer, image_files):
    layer = open_in(viewer, image_files["single"])
    assert "RA" not in status_at(viewer, layer, -3.0, 20.0)
    assert "RA" not in status_at(viewer, layer, 20.0, 80.2)
    jpeg = open_in(viewer, image_files["jpeg"])
    assert "RA" not in status_at(viewer, jpeg, 10.0, 10.0)


def test_napari_own_position_and_value_follow_the_readout(viewer, image_files):
    layer = open_in(viewer, image_files["single"])
    text = status_at(viewer, layer, 10.0, 20.0)
    assert re.fullmatch(r"RA .*\)   \[49\.00, 20\.00\]: \[.+\]", text), text  # world row 59 - 10 (north up)


def test_readout_text_like_ds9():
    assert radec_text(150.123456, 2.345678) == "RA 150.12346 Dec +2.34568 (10:00:29.63 +02:20:44.4)"
    assert radec_text(0.5, -0.25) == "RA 0.50000 Dec -0.25000 (00:02:00.00 -00:15:00.0)"
