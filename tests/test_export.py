"""Catalogue formats (CSV, ECSV, FITS, Parquet) and DS9 region files: what a user reads back with
astropy, pandas and regions, and `napari-clumps detect --out x.ecsv --regions DIR` end to end."""

import hashlib
import os
import signal
from datetime import UTC, datetime

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from regions import RectanglePixelRegion, RectangleSkyRegion, Regions

import napari_clumps
from napari_clumps.cli import main
from napari_clumps.detections import (
    CLASS_COLOURS,
    DetectionsWriter,
    OutputPathError,
    detections_frame,
    images_list_path,
    images_row,
    read_detections,
    read_images_list,
    write_detections,
)
from napari_clumps.export import (
    CatalogueFormatError,
    check_regions_folder,
    provenance,
    region_path,
    write_catalogue,
    write_regions,
)
from napari_clumps.model import packaged_model_path

FORMATS = [".ecsv", ".fits", ".parquet"]


def sky_wcs(rotation_deg: float = 0.0) -> WCS:
    """A TAN WCS, 0.4"/px, north up or rotated."""
    scale = 0.4 / 3600
    angle = np.deg2rad(rotation_deg)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [31, 21]
    wcs.wcs.cd = scale * np.array([[-np.cos(angle), np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return wcs


BOXES = [[8.0, 18.0, 12.0, 24.0], [30.25, 30.5, 41.75, 40.0]]


def two_images():
    """Rows of two images as the detector makes them: RA/Dec and a host, or neither."""
    a = detections_frame("deep/a.fits", BOXES, ["clump", "odd_clump"], [0.912345678, 0.5], wcs=sky_wcs(), model="m")
    a["host_distance"], a["on_host"] = [0.25, 1.5], [True, False]
    b = detections_frame("b, with comma.png", BOXES[:1], ["clump"], 0.7, model="m")
    b["host_distance"], b["on_host"] = np.nan, None  # no host found
    images = pd.DataFrame([images_row("deep/a.fits", 2, 80, 60), images_row("b, with comma.png", 1, 64, 64)])
    return pd.concat([a, b], ignore_index=True), images


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not really weights, but hashed all the same")
    return path


def run_provenance(model_file):
    return provenance(
        model_id="m", model_file=model_file, score_threshold=0.3, nms_iou=0.2, command="napari-clumps detect x"
    )


# ---------------------------------------------------------------------------- catalogues


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_reads_back_as_the_same_table_as_its_csv(tmp_path, suffix, model_file):
    table, images = two_images()
    csv = write_detections(table, tmp_path / "run.csv", images)
    out = write_catalogue(table, tmp_path / f"run{suffix}", run_provenance(model_file), images)
    pd.testing.assert_frame_equal(read_detections(out), read_detections(csv), check_dtype=False)
    assert images_list_path(out) == tmp_path / "run.images.csv"  # one images list for both
    assert list(read_images_list(out).image) == ["deep/a.fits", "b, with comma.png"]


def test_ecsv_has_units_on_its_columns_and_the_provenance_in_its_meta(tmp_path, model_file):
    table, _ = two_images()
    read = Table.read(write_catalogue(table, tmp_path / "run.ecsv", run_provenance(model_file)), format="ascii.ecsv")
    assert read["x_min"].unit == u.pix and read["y_center"].unit == u.pix
    assert read["ra"].unit == u.deg and read["dec"].unit == u.deg
    assert read["score"].unit == u.dimensionless_unscaled and read["image"].unit is None
    assert read.meta["model_id"] == "m"
    assert read.meta["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert read.meta["model_file"] == str(model_file.resolve())
    assert (read.meta["score_threshold"], read.meta["nms_iou"]) == (0.3, 0.2)
    assert read.meta["software_version"] == f"napari-clumps {napari_clumps.__version__}"
    assert read.meta["command"] == "napari-clumps detect x"
    written = datetime.fromisoformat(read.meta["date_utc"])
    assert written.utcoffset().total_seconds() == 0 and abs((datetime.now(UTC) - written).total_seconds()) < 60
    # quantities a user computes with
    np.testing.assert_allclose((read["x_max"] - read["x_min"]).quantity.to_value(u.pix), [4, 11.5, 4])


def test_fits_has_units_and_the_provenance_in_its_header(tmp_path, model_file):
    table, _ = two_images()
    out = write_catalogue(table, tmp_path / "run.fits", run_provenance(model_file))
    header = fits.getheader(out, "DETECTIONS")
    assert header["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert header["score_threshold"] == 0.3 and header["nms_iou"] == 0.2
    assert header["software_version"] == f"napari-clumps {napari_clumps.__version__}"
    assert header["command"] == "napari-clumps detect x"
    read = Table.read(out)
    assert read["x_min"].unit == u.pix and read["ra"].unit == u.deg and read["dec"].unit == u.deg
    assert read.meta["model_id"] == "m"
    # on_host: on, off, and no host found (null), not a made-up False
    assert list(read["on_host"].filled(-1)) == [1, 0, -1]


def test_parquet_reads_back_with_pandas_and_has_units_and_provenance(tmp_path, model_file):
    import json

    import pyarrow.parquet as pq

    table, _ = two_images()
    out = write_catalogue(table, tmp_path / "run.parquet", run_provenance(model_file))
    read = pd.read_parquet(out)
    assert list(read.columns) == list(table.columns) and list(read.image) == list(table.image)
    np.testing.assert_allclose(read[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), BOXES + BOXES[:1])
    assert list(read.on_host.astype(object).where(read.on_host.notna(), None)) == [True, False, None]
    schema = pq.read_schema(out)
    assert json.loads(schema.metadata[b"napari_clumps"])["nms_iou"] == 0.2
    assert schema.field("x_min").metadata[b"unit"] == b"pix" and schema.field("ra").metadata[b"unit"] == b"deg"


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_table_without_rows_is_a_catalogue_without_rows(tmp_path, suffix):
    table, _ = two_images()
    out = write_catalogue(table.iloc[:0], tmp_path / f"none{suffix}")
    read = read_detections(out)
    assert len(read) == 0 and list(read.columns) == list(table.columns)


def test_an_unknown_format_is_one_line_naming_the_formats(tmp_path):
    table, _ = two_images()
    with pytest.raises(CatalogueFormatError, match=r"x\.xlsx: unknown catalogue format \.xlsx; .*\.csv, \.ecsv"):
        write_catalogue(table, tmp_path / "x.xlsx")
    assert not (tmp_path / "x.xlsx").exists()


# ---------------------------------------------------------------------------- regions


def test_pixel_regions_are_the_boxes_in_ds9_image_coordinates(tmp_path):
    table, _ = two_images()
    b = table[table.image == "b, with comma.png"]
    a = table[table.image == "deep/a.fits"]
    path = write_regions(a, tmp_path / "a.reg")  # no WCS: image coordinates
    # DS9 puts the centre of the first pixel at (1, 1): the box [8, 12] x [18, 24] is centred on 10.5, 21.5
    text = path.read_text()
    assert "image\n" in text and "box(10.50000000,21.50000000,4.00000000,6.00000000,0.00000000)" in text
    shapes = Regions.read(path, format="ds9")
    assert [type(s) for s in shapes] == [RectanglePixelRegion] * 2
    for shape, (x_min, y_min, x_max, y_max), label, score in zip(shapes, BOXES, a.label, a.score):
        # regions' own pixel coordinates put the first pixel's centre at 0
        assert (shape.center.x, shape.center.y) == pytest.approx(((x_min + x_max) / 2 - 0.5, (y_min + y_max) / 2 - 0.5))
        assert (shape.width, shape.height) == pytest.approx((x_max - x_min, y_max - y_min))
        assert shape.meta["text"] == f"{label} {score:.2f}" and shape.visual["edgecolor"] == CLASS_COLOURS[label]
    assert [s.meta["text"] for s in shapes] == ["clump 0.91", "odd_clump 0.50"]
    assert len(Regions.read(write_regions(b, tmp_path / "b.reg"), format="ds9")) == 1


@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_sky_regions_convert_back_to_the_boxes(tmp_path, rotation):
    from napari_clumps.detections import box_array

    wcs = sky_wcs(rotation)
    table = detections_frame("a.fits", BOXES, ["clump", "odd_clump"], [0.9, 0.5], wcs=wcs, model="m")
    shapes = Regions.read(write_regions(table, tmp_path / "a.reg", wcs), format="ds9")
    assert [type(s) for s in shapes] == [RectangleSkyRegion] * 2
    for shape, (x_min, y_min, x_max, y_max), (ra, dec) in zip(shapes, box_array(table), table[["ra", "dec"]].values):
        assert shape.center.icrs.ra.deg == pytest.approx(ra, abs=1e-7)
        assert shape.center.icrs.dec.deg == pytest.approx(dec, abs=1e-7)
        pixel = shape.to_pixel(wcs)
        assert pixel.center.x + 0.5 == pytest.approx((x_min + x_max) / 2, abs=1e-3)
        assert pixel.center.y + 0.5 == pytest.approx((y_min + y_max) / 2, abs=1e-3)
        assert (pixel.width, pixel.height) == pytest.approx((x_max - x_min, y_max - y_min), abs=1e-3)
        assert abs((pixel.angle.to_value(u.deg) + 180) % 360 - 180) < 1e-3  # axis-aligned in the image


def test_sky_regions_of_a_fits_file_convert_back_to_its_boxes(tmp_path, image_files):
    from napari_clumps.io import read_image

    image = read_image(image_files["single"])
    assert image.wcs is not None
    table = detections_frame("g.fits", BOXES, ["clump", "clump"], [0.9, 0.8], wcs=image.wcs, model="m")
    for shape, (x_min, y_min, x_max, y_max) in zip(
        Regions.read(write_regions(table, tmp_path / "g.reg", image.wcs), format="ds9"), BOXES
    ):
        pixel = shape.to_pixel(image.wcs)
        assert (pixel.center.x + 0.5, pixel.center.y + 0.5) == pytest.approx(
            ((x_min + x_max) / 2, (y_min + y_max) / 2), abs=1e-3
        )
        assert (pixel.width, pixel.height) == pytest.approx((x_max - x_min, y_max - y_min), abs=1e-3)


def test_an_image_without_clumps_gets_a_region_file_without_shapes(tmp_path):
    table, _ = two_images()
    path = write_regions(table.iloc[:0], tmp_path / "none.reg", sky_wcs())
    assert path.read_text().startswith("# Region file format: DS9")
    assert len(Regions.read(path, format="ds9")) == 0


def test_a_region_file_is_one_images_rows(tmp_path):
    table, _ = two_images()
    with pytest.raises(ValueError, match="the rows of 2 images"):
        write_regions(table, tmp_path / "two.reg")


def test_region_files_mirror_sub_folders_and_stay_in_their_folder(tmp_path):
    assert region_path(tmp_path, "deep/a.fits") == tmp_path / "deep" / "a.fits.reg"
    assert region_path(tmp_path, "a.jpg") == tmp_path / "a.jpg.reg"  # not a.fits.reg's name
    assert region_path(tmp_path, "/data/x.fits") == tmp_path / "data" / "x.fits.reg"
    assert region_path(tmp_path, "../up/x.fits") == tmp_path / "up" / "x.fits.reg"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="file: is a file; region files need a folder"):
        check_regions_folder(tmp_path / "file")


# ---------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def simulated_pair(tmp_path_factory):
    """Two simulated galaxies, FITS (with WCS) and JPEG each."""
    from napari_clumps.simulate import write_dataset

    folder = tmp_path_factory.mktemp("sim")
    write_dataset(folder, 2, seed=3)
    return folder


def test_detect_writes_an_ecsv_and_region_files(tmp_path, simulated_pair, capsys):
    out, regions = tmp_path / "run.ecsv", tmp_path / "regions"
    assert main(["detect", str(simulated_pair), "--out", str(out), "--regions", str(regions)]) == 0
    assert f"-> {out} (streamed to {tmp_path / 'run.csv'})" in capsys.readouterr().out
    read = Table.read(out, format="ascii.ecsv")
    assert read["x_min"].unit == u.pix and read["ra"].unit == u.deg
    assert read.meta["model_sha256"] == hashlib.sha256(packaged_model_path().read_bytes()).hexdigest()
    assert read.meta["command"].startswith("napari-clumps detect ") and read.meta["command"].endswith(str(regions))
    table = read_detections(out)
    pd.testing.assert_frame_equal(table, read_detections(tmp_path / "run.csv"), check_dtype=False)
    assert len(table) > 0
    listed = read_images_list(out)
    assert len(listed) == 4 and (listed.status == "ok").all()
    for name in listed.image:  # one region file per image, its boxes those of the table
        shapes = Regions.read(regions / f"{name}.reg", format="ds9")
        rows = table[table.image == name]
        assert len(shapes) == len(rows)
        kind = RectangleSkyRegion if name.endswith(".fits") else RectanglePixelRegion
        assert all(isinstance(shape, kind) for shape in shapes)
        for shape, x_center in zip(shapes, rows.x_center):
            if kind is RectanglePixelRegion:
                assert shape.center.x + 0.5 == pytest.approx(x_center, abs=1e-3)


def test_a_stopped_ecsv_run_resumes_to_the_table_of_an_uninterrupted_one(tmp_path, simulated_pair, monkeypatch, capsys):
    append = DetectionsWriter.append

    def append_then_interrupt(writer, row, table=None):
        append(writer, row, table)
        if writer.n_images == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does

    monkeypatch.setattr(DetectionsWriter, "append", append_then_interrupt)
    out = tmp_path / "stopped.ecsv"
    args = ["detect", str(simulated_pair), "--batch-size", "1"]
    assert main([*args, "--out", str(out)]) == 128 + signal.SIGINT
    # the finished images, written on the way out
    assert len(read_images_list(out)) == 2
    pd.testing.assert_frame_equal(read_detections(out), read_detections(tmp_path / "stopped.csv"), check_dtype=False)
    monkeypatch.setattr(DetectionsWriter, "append", append)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    whole = tmp_path / "whole.ecsv"
    assert main([*args, "--out", str(whole)]) == 0
    resumed, uninterrupted = Table.read(out), Table.read(whole)
    assert resumed.colnames == uninterrupted.colnames and len(resumed) == len(uninterrupted) > 0
    for name in resumed.colnames:
        assert list(resumed[name]) == list(uninterrupted[name]), name
    # a run killed before it wrote the catalogue: --resume writes it, though no image is left to do
    out.unlink()
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert "nothing to do" not in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_detections(out), read_detections(whole))


def test_a_bad_out_suffix_or_regions_folder_fails_before_the_model_loads(tmp_path, image_files, monkeypatch, capsys):
    import napari_clumps.model

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(napari_clumps.model, "get_detector", no_model)
    png = str(image_files["png"])
    (tmp_path / "file").write_text("x")
    for args, message in [
        (["--out", str(tmp_path / "d.xlsx")], f"{tmp_path / 'd.xlsx'}: unknown catalogue format .xlsx; the name must "),
        (["--out", str(tmp_path / "d")], f"{tmp_path / 'd'}: unknown catalogue format (no suffix)"),
        (["--regions", str(tmp_path / "file")], f"{tmp_path / 'file'}: is a file; region files need a folder"),
    ]:
        assert main(["detect", png, *args]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
