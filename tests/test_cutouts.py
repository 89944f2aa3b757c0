"""Sky coordinates for JPEG/PNG cutouts from a cutout catalogue (napari_clumps.cutouts): the WCS
built for a simulated galaxy's north-up JPEG agrees with its FITS file's own WCS, the catalogue's
columns, matching and orientation, and the command line's --catalog."""

import pickle

import numpy as np
import pandas as pd
import pytest

from napari_clumps.cutouts import CutoutCatalogError, cutout_wcs, read_cutout_catalog, with_catalog_wcs
from napari_clumps.pixels import pixel_to_radec

RA, DEC, SCALE = 150.0, 2.0, 0.262  # a Legacy Surveys cutout's centre and pixel scale


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    """Two simulated galaxies (FITS with a WCS + north-up JPEG) and a cutout catalogue for their
    JPEGs made from the FITS headers, as a user would make it: centre RA/Dec and pixel scale."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    from napari_clumps.io import read_image
    from napari_clumps.simulate import write_dataset

    folder = tmp_path_factory.mktemp("sky")
    truth = write_dataset(folder, n=2, seed=3)
    rows = []
    for fits_path in sorted(folder.glob("*.fits")):
        image = read_image(fits_path)
        ra, dec = pixel_to_radec(image.wcs, image.width / 2, image.height / 2)
        scale = float(np.mean(proj_plane_pixel_scales(image.wcs))) * 3600
        rows.append({"image": fits_path.with_suffix(".jpg").name, "ra": ra[0], "dec": dec[0], "pixscale": scale})
    catalog = folder / "cutouts.csv"
    pd.DataFrame(rows).to_csv(catalog, index=False)
    return folder, truth, catalog


def separation_px(ra_a, dec_a, ra_b, dec_b, scale_arcsec):
    from astropy.coordinates import SkyCoord

    a, b = SkyCoord(ra_a, dec_a, unit="deg"), SkyCoord(ra_b, dec_b, unit="deg")
    return a.separation(b).arcsec / scale_arcsec


def test_a_jpeg_gets_the_sky_of_its_fits_file_to_a_tenth_of_a_pixel(galaxies):
    from napari_clumps.io import read_image

    folder, _, catalog_path = galaxies
    catalog = read_cutout_catalog(catalog_path)
    rng = np.random.default_rng(0)
    for centre in catalog.centres:
        fits = read_image(folder / centre.name.replace(".jpg", ".fits"))
        jpeg = with_catalog_wcs(read_image(folder / centre.name), centre.name, catalog)
        assert jpeg.wcs is not None and (jpeg.width, jpeg.height) == (fits.width, fits.height)
        x, y = rng.uniform(0, fits.width, 200), rng.uniform(0, fits.height, 200)  # FITS array edges
        # The JPEG is the FITS array north up: the same sky point is in row height - y.
        off = separation_px(*pixel_to_radec(fits.wcs, x, y), *pixel_to_radec(jpeg.wcs, x, fits.height - y), SCALE)
        assert off.max() < 0.1 * centre.pixel_scale / SCALE


def test_truth_boxes_of_the_jpeg_get_the_ra_dec_of_the_same_boxes_in_the_fits_file(galaxies):
    """The simulator writes each clump for both files (the JPEG's boxes flipped); with the
    catalogue the JPEG rows' RA/Dec are those of the FITS rows."""
    from napari_clumps.detections import BOX_COLUMNS, detections_frame, read_detections
    from napari_clumps.io import read_image

    folder, truth_path, catalog_path = galaxies
    truth, catalog = read_detections(truth_path), read_cutout_catalog(catalog_path)
    for centre in catalog.centres:
        fits_rows = truth[truth.image == centre.name.replace(".jpg", ".fits")].reset_index(drop=True)
        jpeg_rows = truth[truth.image == centre.name].reset_index(drop=True)
        assert len(jpeg_rows) == len(fits_rows) > 0 and jpeg_rows.ra.isna().all()  # no sky without the catalogue
        jpeg = read_image(folder / centre.name)
        wcs = catalog.wcs_for(centre.name, jpeg.width, jpeg.height)
        with_sky = detections_frame(centre.name, jpeg_rows[BOX_COLUMNS].to_numpy(), jpeg_rows.label, 1.0, wcs=wcs)
        off = separation_px(with_sky.ra, with_sky.dec, fits_rows.ra, fits_rows.dec, centre.pixel_scale)
        assert off.max() < 0.1


def test_detect_on_the_command_line_fills_ra_dec_of_jpegs_and_fits_files_keep_their_own(galaxies, tmp_path, capsys):
    """End to end with the packaged model: the JPEG's rows get RA/Dec from the catalogue, where the
    FITS WCS puts the same pixel; a catalogue row for the FITS file (here a wrong one) is ignored."""
    from napari_clumps.cli import main
    from napari_clumps.detections import read_detections
    from napari_clumps.io import read_image

    folder, _, catalog_path = galaxies
    catalog = pd.read_csv(catalog_path).iloc[:1]
    wrong = catalog.assign(image=catalog.image.str.replace(".jpg", ".fits"), ra=catalog.ra + 1)
    both = tmp_path / "both.csv"
    pd.concat([catalog, wrong]).to_csv(both, index=False)
    jpeg, fits = folder / catalog.image[0], folder / wrong.image.iloc[0]
    out = tmp_path / "found.csv"
    status = main(
        ["detect", str(jpeg), str(fits), "--catalog", str(both), "--out", str(out)]
        + ["--score-threshold", "0.05", "--keep-off-host", "--device", "cpu"]
    )
    assert status == 0
    assert "sky positions for 1 of 1 JPEG/PNG images" in capsys.readouterr().err
    found = read_detections(out)
    on_jpeg, on_fits = found[found.image == str(jpeg)], found[found.image == str(fits)]
    assert len(on_jpeg) > 0 and len(on_fits) > 0 and found[["ra", "dec"]].notna().all().all()
    fits_wcs, height = read_image(fits).wcs, read_image(fits).height
    expected = pixel_to_radec(fits_wcs, on_jpeg.x_center, height - on_jpeg.y_center)
    assert separation_px(on_jpeg.ra, on_jpeg.dec, *expected, catalog.pixscale[0]).max() < 0.1
    own = pixel_to_radec(fits_wcs, on_fits.x_center, on_fits.y_center)
    assert separation_px(on_fits.ra, on_fits.dec, *own, catalog.pixscale[0]).max() < 0.1


def test_reading_workers_apply_the_catalogue(galaxies):
    """Files may be read in DataLoader worker processes: the reader goes there pickled."""
    from napari_clumps.inference import _ImageReader

    folder, _, catalog_path = galaxies
    name = pd.read_csv(catalog_path).image[0]
    reader = _ImageReader([folder / name], [name], None, None, None, catalog=read_cutout_catalog(catalog_path))
    read = pickle.loads(pickle.dumps(reader))[0]
    assert not read.error and read.image.wcs is not None
    assert np.allclose(read.image.wcs.wcs.crval, pd.read_csv(catalog_path).loc[0, ["ra", "dec"]].astype(float))


# ---------------------------------------------------------------------- orientation


def test_north_up_east_left_by_default():
    wcs = cutout_wcs(RA, DEC, SCALE, 100, 80)
    ra, dec = pixel_to_radec(wcs, [50, 40, 50, 50], [40, 40, 40, 30])
    assert ra[1] > ra[0]  # a step left (smaller x) is east: RA grows
    assert dec[3] > dec[2]  # a step up (row 0 is the top) is north
    centre = pixel_to_radec(wcs, 50, 40)  # the centre of a 100 x 80 image, in edges
    assert np.allclose([centre[0][0], centre[1][0]], [RA, DEC])
    step = separation_px(ra[0], dec[0], ra[1], dec[1], SCALE)
    assert step == pytest.approx(10, rel=1e-4)


def test_the_angle_turns_north_counter_clockwise_from_up():
    wcs = cutout_wcs(RA, DEC, SCALE, 100, 100, angle=90)
    ra, dec = pixel_to_radec(wcs, [50, 40, 50, 50], [50, 50, 50, 60])
    assert dec[1] > dec[0] and ra[1] == pytest.approx(ra[0], abs=1e-9)  # north is left
    assert ra[3] > ra[2] and dec[3] == pytest.approx(dec[2], abs=1e-5)  # east is down
    upside_down = cutout_wcs(RA, DEC, SCALE, 100, 100, angle=180)
    ra, dec = pixel_to_radec(upside_down, [50, 50], [50, 60])
    assert dec[1] > dec[0]  # north is down


# ---------------------------------------------------------------------- columns and errors


def write_csv(path, text):
    path.write_text(text)
    return path


def test_column_names_are_matched_in_any_case_and_by_alias(tmp_path):
    catalog = read_cutout_catalog(
        write_csv(tmp_path / "gz.csv", "FileName,RA_deg,DEC,PixScale_Arcsec,PA\na.jpg,10.5,-3.25,0.396,30\n")
    )
    (centre,) = catalog.centres
    assert (centre.name, centre.ra, centre.dec, centre.pixel_scale, centre.angle) == ("a.jpg", 10.5, -3.25, 0.396, 30)


def test_without_an_angle_column_cutouts_are_north_up(tmp_path):
    catalog = read_cutout_catalog(write_csv(tmp_path / "c.csv", "name,ra,dec,scale\na,1,2,0.262\n"))
    assert catalog.centres[0].angle == 0


def test_ecsv_and_fits_tables_with_units_are_read(tmp_path):
    from astropy import units as u
    from astropy.table import Table

    table = Table(
        {"file": ["a.png"], "ra": [10.0] * u.deg, "dec": [600.0] * u.arcmin, "pixel_scale": [0.00011] * u.deg}
    )
    for suffix in (".ecsv", ".fits"):
        table.write(tmp_path / f"cat{suffix}")
        (centre,) = read_cutout_catalog(tmp_path / f"cat{suffix}").centres
        assert centre.name == "a.png" and centre.dec == pytest.approx(10) and centre.pixel_scale == pytest.approx(0.396)


@pytest.mark.parametrize(
    "text, message",
    [
        ("image,dec,pixscale\na.jpg,2,0.2\n", "no RA column: expected one of ra, ra_deg (any case); the table has"),
        ("image,ra,dec\na.jpg,1,2\n", "no pixel scale column: expected one of pixscale, pixel_scale"),
        ("id,ra,dec,pixscale\n1,1,2,0.2\n", "no image name column: expected one of image, file, filename"),
        ("image,ra,dec,pixscale\na.jpg,12:30:00,2,0.2\n", "column 'ra', row 1: '12:30:00' is not a number of deg"),
        ("image,ra,dec,pixscale\na.jpg,1,2,0.2\nb.jpg,1,95,0.2\n", "column 'dec', row 2: 95 is not a declination"),
        ("image,ra,dec,pixscale\na.jpg,1,2,0\n", "column 'pixscale', row 1: 0 is not a pixel scale above 0"),
        ("image,ra,dec,pixscale\na.jpg,1,2,0.2\na.jpg,3,4,0.2\n", "rows 1 and 2 both name 'a.jpg'"),
        ("image,ra,dec,pixscale\n", "the table has no rows"),
    ],
)
def test_a_bad_catalogue_is_one_line_naming_the_file_and_the_reason(tmp_path, text, message):
    path = write_csv(tmp_path / "cutouts.csv", text)
    with pytest.raises(CutoutCatalogError) as error:
        read_cutout_catalog(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CutoutCatalogError, match="nope.csv: no such file"):
        read_cutout_catalog(tmp_path / "nope.csv")


# ---------------------------------------------------------------------- matching


@pytest.fixture
def catalog(tmp_path):
    return read_cutout_catalog(
        write_csv(
            tmp_path / "cutouts.csv",
            "image,ra,dec,pixscale\nsub/a.jpg,1,0,0.2\na.jpg,2,0,0.2\nsub/b.jpg,3,0,0.2\nJ1234.5+0102,4,0,0.2\n"
            "x/c.png,5,0,0.2\ny/c.png,6,0,0.2\n",
        )
    )


@pytest.mark.parametrize(
    "name, ra",
    [
        ("sub/a.jpg", 1),  # the name as detect reports it wins over the same file name
        ("a.jpg", 2),
        ("/data/cutouts/sub/b.jpg", 3),  # a path ending in the row's name
        ("b.jpg", 3),  # a file name whose row gives a folder
        ("other/b.jpg", None),  # folders that disagree: another file
        ("gz/J1234.5+0102.jpg", 4),  # by stem: the file name without its image suffix
        ("J1234.jpg", None),
    ],
)
def test_rows_are_found_by_name_then_file_name_then_stem(catalog, name, ra):
    found = catalog.match(name)
    assert (found.ra if found else None) == ra


def test_a_name_that_two_rows_fit_is_an_error_naming_both(catalog):
    with pytest.raises(CutoutCatalogError, match=r"image 'c.png' fits rows 5 \('x/c.png'\) and 6 \('y/c.png'\)"):
        catalog.match("c.png")


def test_an_image_with_its_own_wcs_keeps_it(image_files, catalog):
    from napari_clumps.io import read_image

    fits = read_image(image_files["single"])
    assert with_catalog_wcs(fits, "a.jpg", catalog) is fits


# ---------------------------------------------------------------------- command line


def test_detect_refuses_a_bad_catalogue_before_any_work(tmp_path, capsys, image_files):
    from napari_clumps.cli import main

    bad = write_csv(tmp_path / "cutouts.csv", "image,ra,dec\na.jpg,1,2\n")
    with pytest.raises(SystemExit) as exit_:
        main(["detect", str(image_files["jpeg"]), "--catalog", str(bad), "--model", "nowhere.safetensors"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: argument --catalog: {bad}: no pixel scale column"), err


def test_detect_refuses_two_rows_for_one_image_before_the_model_loads(tmp_path, capsys, image_files):
    from napari_clumps.cli import main

    both = write_csv(tmp_path / "cutouts.csv", "image,ra,dec,pixscale\ncolour,1,2,0.2\ncolour.png,3,4,0.2\n")
    status = main(["detect", str(image_files["jpeg"]), "--catalog", str(both), "--model", "nowhere.safetensors"])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: {both}: image '{image_files['jpeg']}' fits rows 1 ('colour') and 2 ('colour.png'); "
        "give the names with their folders, as detect reports them"
    )  # not the missing model's error: the catalogue is checked first


def test_info_shows_the_centre_from_the_catalogue(tmp_path, capsys, image_files):
    from napari_clumps.cli import main

    path = write_csv(tmp_path / "cutouts.csv", "image,ra,dec,pixscale\ncolour.jpg,150.25,-2.5,0.262\n")
    assert main(["info", str(image_files["jpeg"]), str(image_files["png_grey"]), "--catalog", str(path)]) == 0
    jpeg, grey = capsys.readouterr().out.strip().splitlines()
    assert "centre RA 150.25000 Dec -2.50000 deg, 0.262 arcsec/px" in jpeg and str(path) in jpeg
    assert "no celestial WCS" in grey  # grey.png: no row of the catalogue fits


# ---------------------------------------------------------------------- the detection widget


@pytest.mark.gui
def test_the_detect_widget_gives_cutouts_the_catalogue_sky_and_remembers_the_file(
    make_napari_viewer, image_files, tmp_path, qtbot, monkeypatch
):
    """A run with a catalogue chosen sends the model the image with the catalogue's WCS, and the
    exported CSV has RA/Dec; the file is remembered. The model is replaced by one fixed box."""
    from napari_clumps import _detect_widget
    from napari_clumps._detect_widget import DetectionWidget
    from napari_clumps.detections import detections_frame, read_detections
    from napari_clumps.inference import ImageDetections

    def one_box_each(images, names, *args, **kwargs):  # what iter_detections makes of a box at (15, 15)
        yield "ready", "fake on cpu"
        for name, image in zip(names, images):
            table = detections_frame(image.path.name, [[10, 10, 20, 20]], ["clump"], 0.9, wcs=image.wcs)
            yield "result", name, ImageDetections(image.path.name, table, width=image.width, height=image.height), ""

    monkeypatch.setattr(_detect_widget, "_detect_in_thread", one_box_each)
    catalog = write_csv(tmp_path / "cutouts.csv", f"image,ra,dec,pixscale\ncolour.jpg,{RA},{DEC},{SCALE}\n")
    viewer = make_napari_viewer()
    (jpeg,) = viewer.open(image_files["jpeg"], plugin="napari-clumps")
    widget = DetectionWidget(viewer)
    widget.catalog.value = catalog
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30_000)
    found = read_detections(widget.export_csv(tmp_path / "boxes.csv"))
    expected = pixel_to_radec(cutout_wcs(RA, DEC, SCALE, jpeg.data.shape[1], jpeg.data.shape[0]), 15, 15)
    assert separation_px(found.ra, found.dec, *expected, SCALE).max() < 0.01
    # a new session starts with the same catalogue; a bad one stops the run with its reason
    viewer.close()
    widget = DetectionWidget(make_napari_viewer())
    assert widget.catalog.value == catalog
    write_csv(catalog, "image,ra,dec\ncolour.jpg,1,2\n")
    widget.viewer.open(image_files["jpeg"], plugin="napari-clumps")
    widget.run_button.native.click()
    assert widget.worker is None and widget.run_button.enabled
