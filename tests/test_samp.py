"""Sending detections over SAMP (napari_clumps.samp) to stand-ins for TOPCAT and DS9 on a hub
started here, and the DS9 region file (napari_clumps.export.write_regions)."""

import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from napari_clumps import samp
from napari_clumps.detections import BOX_COLUMNS, detections_frame
from napari_clumps.export import write_regions
from napari_clumps.pixels import edge_to_astropy

BOXES = [[10.0, 20.0, 14.0, 26.0], [30.5, 1.0, 33.0, 4.5], [60.0, 40.0, 70.0, 52.0]]


def file_of(url: str) -> Path:
    return Path(url2pathname(urlparse(url).path))


@pytest.fixture
def fits_file(image_files):
    return Path(image_files["single"])


@pytest.fixture
def wcs(fits_file):
    return WCS(fits.getheader(fits_file))


@pytest.fixture
def table(fits_file, wcs):
    """Detections of the FITS test image, with the host columns (one image without a host)."""
    rows = detections_frame(fits_file.name, BOXES, ["clump", "odd_clump", "clump"], [0.91, 0.5, 0.33], wcs=wcs)
    rows["host_distance"] = [0.2, np.nan, 1.4]
    rows["on_host"] = [True, None, False]
    return rows


def test_the_table_reaches_topcat_and_reads_back_the_same(samp_tools, table):
    from astropy.table import Table

    topcat = samp_tools("TOPCAT", ["table.load.votable"])
    assert samp.send_table(table, name="my clumps") == ["TOPCAT"]
    [(mtype, params)] = topcat.wait_for(1)
    assert mtype == "table.load.votable"
    assert params["name"] == "my clumps" and params["table-id"]
    votable = Table.read(file_of(params["url"]), format="votable")
    back = votable.to_pandas()
    assert list(back.columns) == list(table.columns)
    assert list(back.image) == list(table.image) and list(back.label) == list(table.label)
    for column in ["score", *BOX_COLUMNS, "x_center", "y_center", "ra", "dec", "host_distance"]:
        np.testing.assert_allclose(back[column], table[column], rtol=1e-12, equal_nan=True, err_msg=column)
    assert list(votable["on_host"].mask) == [False, True, False]  # "no host" stays unknown, not False
    assert votable["ra"].unit == "deg"  # TOPCAT and Aladin find the positions by themselves


def test_ds9_gets_the_image_then_its_boxes_as_regions_on_the_sky(samp_tools, table, fits_file, wcs):
    from regions import Regions

    ds9 = samp_tools("SAOImageDS9", ["image.load.fits", "ds9.set"])
    assert samp.send_image_with_regions(fits_file, table, wcs) == ["SAOImageDS9"]
    (image_mtype, image_params), (set_mtype, set_params) = ds9.wait_for(2)
    # in this order: DS9 drops a frame's regions when an image is loaded into it
    assert (image_mtype, set_mtype) == ("image.load.fits", "ds9.set")
    assert file_of(image_params["url"]) == fits_file.resolve()
    command, path = set_params["cmd"].rsplit(" ", 1)
    assert command == "regions load"
    regions = Regions.read(path, format="ds9")
    assert len(regions) == len(table)
    for region, box in zip(regions, BOXES):
        pixel = region.to_pixel(wcs)  # where DS9 draws it on this image (to 1e-8 degrees as written)
        centre = edge_to_astropy((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        np.testing.assert_allclose([pixel.center.x, pixel.center.y], centre, atol=1e-3)
        np.testing.assert_allclose([pixel.width, pixel.height], [box[2] - box[0], box[3] - box[1]], atol=1e-3)
        assert region.meta["text"].split()[0] in ("clump", "odd_clump")


def test_without_boxes_only_the_image_goes(samp_tools, fits_file):
    ds9 = samp_tools("SAOImageDS9", ["image.load.fits", "ds9.set"])
    samp.send_image_with_regions(fits_file, detections_frame(fits_file.name, [], [], []))
    assert [mtype for mtype, _ in ds9.wait_for(1)] == ["image.load.fits"]
    time.sleep(0.3)
    assert len(ds9.received) == 1


def test_no_hub_is_one_clear_line_at_once(no_samp_hub, table, fits_file):
    for send in (lambda: samp.send_table(table), lambda: samp.send_image_with_regions(fits_file, table)):
        start = time.monotonic()
        with pytest.raises(samp.SampHubNotFoundError) as error:
            send()
        assert time.monotonic() - start < 2
        assert str(error.value) == samp.HUB_NOT_RUNNING
        assert "\n" not in str(error.value)


def test_a_hub_that_has_stopped_is_no_hub(samp_hub, table):
    samp_hub.stop()  # its lockfile may be left behind, as after a crash
    with pytest.raises(samp.SampHubNotFoundError, match="No SAMP hub is running"):
        samp.send_table(table)


def test_a_hub_without_the_tool_says_which_tool_to_start(samp_tools, table, fits_file):
    samp_tools("SAOImageDS9", ["image.load.fits", "ds9.set"])
    with pytest.raises(samp.SampNoRecipientError, match="start TOPCAT"):
        samp.send_table(table)
    with pytest.raises(samp.SampError, match="not one"):
        samp.send_image_with_regions(fits_file.with_suffix(".jpg"), table)


def test_region_file_in_pixels_without_a_wcs(tmp_path):
    """DS9 counts pixels from 1 at the first pixel's centre: the edge box 10..14 is centred at 12.5."""
    rows = detections_frame("a.png", [[10, 20, 14, 26]], ["odd_clump"], [0.5])
    text = write_regions(rows, tmp_path / "a.reg").read_text()
    assert "\nimage\n" in text
    assert "box(12.50000000,23.50000000,4.00000000,6.00000000,0.00000000)" in text
    assert "odd_clump 0.50" in text


def test_votable_of_an_empty_table(tmp_path):
    from astropy.table import Table

    path = samp.write_votable(pd.DataFrame(detections_frame("a.fits", [], [], [])), tmp_path / "empty.xml")
    assert len(Table.read(path, format="votable")) == 0
