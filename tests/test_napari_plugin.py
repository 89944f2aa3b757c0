"""The napari side: discovery of the manifest, reading through viewer.open, sample data, widget.

Needs an OpenGL context: run under xvfb-run (see the README / Makefile).
"""

import numpy as np
import pytest
from conftest import CRPIX, CRVAL, SIZE

from napari_clumps.io import ImageReadError
from napari_clumps.pixels import pixel_to_radec


def test_npe2_discovers_readers_widgets_and_sample_data():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-clumps")
    patterns = {p for reader in manifest.contributions.readers for p in reader.filename_patterns}
    assert {"*.fits", "*.fits.gz", "*.fz", "*.jpg", "*.png"} <= patterns
    assert {w.display_name for w in manifest.contributions.widgets} >= {"Simulate galaxy"}
    assert {s.key for s in manifest.contributions.sample_data} >= {"simulated_galaxy", "hubble_xdf"}
    # the one manifest is a real file inside the package (no symlink, no copy at the root)
    from importlib.resources import files
    from pathlib import Path

    from npe2 import PluginManifest

    packaged = Path(str(files("napari_clumps") / "napari.yaml"))
    assert packaged.is_file() and not packaged.is_symlink()
    assert PluginManifest.from_file(packaged).contributions == manifest.contributions
    assert not (Path(__file__).resolve().parents[1] / "napari.yaml").exists()


@pytest.mark.gui
@pytest.mark.parametrize("kind, n_bands", [("cube", 3), ("mef", 3), ("cube_gz", 3), ("single", 1), ("compressed", 1)])
def test_viewer_opens_fits_north_up_with_wcs(make_napari_viewer, image_files, kind, n_bands):
    from napari_clumps._commands import show_raw_bands

    viewer = make_napari_viewer()
    (composite,) = viewer.open(image_files[kind], plugin="napari-clumps")  # one layer per file
    assert composite.rgb and composite.data.shape == (*SIZE, 3) and composite.data.dtype == np.uint8
    # its raw bands, one action away, just above it
    viewer.layers.selection = {composite}
    bands = show_raw_bands(viewer)
    assert list(viewer.layers) == [composite, *bands] and len(bands) == n_bands and all(b.visible for b in bands)
    assert [b.name for b in bands] == [f"{composite.name} [{name}]" for name in composite.metadata["band_names"]]
    assert bands[0].data.shape == SIZE and bands[0].data.dtype == np.float32
    np.testing.assert_array_equal(bands[0].scale, composite.scale)
    assert show_raw_bands(viewer) == bands and len(viewer.layers) == n_bands + 1  # never twice
    # data row 0 is FITS row 1 (values encode the row) ...
    assert bands[0].data[0, 5] < 1000 <= bands[0].data[1, 5]
    # ... and is displayed at the bottom: world row grows upwards from data row 0
    assert composite.data_to_world((0, 0))[0] == pytest.approx(SIZE[0] - 1)
    assert composite.data_to_world((SIZE[0] - 1, 0))[0] == pytest.approx(0)
    assert composite.data_to_world((0, 7))[1] == pytest.approx(7)
    wcs = composite.metadata["wcs"]
    ra, dec = pixel_to_radec(wcs, CRPIX[0] - 0.5, CRPIX[1] - 0.5)
    assert (ra[0], dec[0]) == (pytest.approx(CRVAL[0], abs=1e-9), pytest.approx(CRVAL[1], abs=1e-9))
    assert composite.metadata["header"]["CRVAL1"] == pytest.approx(CRVAL[0])
    assert composite.metadata["bands"].shape == (n_bands, *SIZE)


@pytest.mark.gui
@pytest.mark.parametrize("kind", ["jpeg", "png", "png_rgba", "png_grey"])
def test_viewer_opens_jpeg_png_as_is(make_napari_viewer, image_files, kind):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(image_files[kind], plugin="napari-clumps")
    assert layer.rgb and layer.data.shape == (*SIZE, 3) and layer.data.dtype == np.uint8
    assert layer.data_to_world((0, 0)) == pytest.approx((0, 0))  # top row at the top
    assert int(layer.data[50, 10, 0]) > int(layer.data[0, 10, 0]) + 150  # red grows down the rows
    assert layer.metadata["wcs"] is None


@pytest.mark.gui
def test_bad_file_reports_the_file_and_napari_stays_usable(make_napari_viewer, image_files, bad_files):
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:
        viewer.open(bad_files["truncated_fits"], plugin="napari-clumps")
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    ours = [e for e in chain if isinstance(e, ImageReadError)]
    assert ours and str(bad_files["truncated_fits"]) in str(ours[0])
    assert len(viewer.layers) == 0
    viewer.open(image_files["jpeg"], plugin="napari-clumps")  # still usable
    assert len(viewer.layers) == 1


def test_a_list_of_files_keeps_the_readable_ones(image_files, bad_files):
    from napari_clumps._reader import napari_get_reader

    paths = [str(image_files["png"]), str(bad_files["corrupt_fits"]), str(image_files["jpeg"])]
    with pytest.warns(UserWarning, match="corrupt.fits"):  # napari shows it as a notification
        layers = napari_get_reader(paths)(paths)
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["colour.png", "colour.jpg"]


@pytest.mark.gui
def test_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-clumps", "simulated_galaxy")
    names = [layer.name for layer in viewer.layers]
    composite = viewer.layers[names[0]]
    truth = viewer.layers[[n for n in names if n.endswith("truth")][0]]
    assert composite.rgb and composite.metadata["wcs"] is not None
    assert truth.nshapes >= 1 and set(truth.features["label"]) <= {"clump", "odd_clump"}
    np.testing.assert_array_equal(truth.scale, composite.scale)  # boxes follow the north-up flip
    viewer.open_sample("napari-clumps", "hubble_xdf")
    hubble = viewer.layers[-1]
    assert hubble.data.shape == (200, 200, 3) and hubble.data.dtype == np.uint8
    assert hubble.data.mean() > 5  # a real image, not blank


@pytest.mark.gui
def test_simulate_widget_adds_a_galaxy(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clumps", "Simulate galaxy")
    widget.seed.value, widget.galaxy.value = 7, 2
    widget()
    names = [layer.name for layer in viewer.layers]
    assert names == ["simulated_seed7_2.fits", "simulated_seed7_2.fits truth"]  # the bands on demand


def test_npe2_validate_passes():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    npe2 = shutil.which("npe2") or str(Path(sys.executable).parent / "npe2")
    result = subprocess.run([npe2, "validate", "napari-clumps"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


@pytest.mark.gui
def test_every_control_of_the_widgets_has_a_tooltip(make_napari_viewer):
    """A user hovering any control learns what it does (issue 13)."""
    from magicgui.widgets import Container

    from napari_clumps._detect_widget import DetectionWidget
    from napari_clumps._review_widget import ReviewWidget
    from napari_clumps._train_widget import FineTuneWidget

    viewer = make_napari_viewer()

    def controls(container):
        for widget in container:
            if isinstance(widget, Container):
                yield from controls(widget)
            elif widget.widget_type != "Label":
                yield widget

    for widget_class in (DetectionWidget, FineTuneWidget, ReviewWidget):
        widget = widget_class(viewer)
        forms = [value for value in vars(widget).values() if isinstance(value, Container)]
        assert forms, widget_class
        checked = [c for form in forms for c in controls(form)]
        assert len(checked) >= 6, widget_class  # buttons, fields and choices, not only labels
        missing = [c.label or c.text or c.name for c in checked if not c.tooltip]
        assert missing == [], f"{widget_class.__name__}: {missing}"


@pytest.mark.gui
def test_docks_fit_a_small_screen_together(make_napari_viewer):
    """Each dock scrolls instead of demanding its full height (the two used to need 1,091 px), and
    asks for its full height when there is room."""
    from napari_clumps._detect_widget import DetectionWidget
    from napari_clumps._review_widget import ReviewWidget
    from napari_clumps._train_widget import FineTuneWidget

    viewer = make_napari_viewer()
    widgets = [cls(viewer) for cls in (DetectionWidget, FineTuneWidget, ReviewWidget)]
    assert sum(w.minimumSizeHint().height() for w in widgets) < 900 - 200  # room for the title bars
    assert all(w.sizeHint().height() > 400 for w in widgets)


def test_boxes_show_the_models_score_and_nothing_on_hand_drawn_boxes():
    from napari_clumps._layers import detections_layer, hand_box_features
    from napari_clumps.detections import HAND_MODEL, detections_frame

    table = detections_frame(
        "g.png", [[10, 10, 20, 20], [30, 30, 40, 40]], ["clump", "odd_clump"], [0.873, 1.0], model=["m", HAND_MODEL]
    )
    _, kwargs, _ = detections_layer(table, image_name="g.png", transform={})
    assert kwargs["text"]["string"] == "{score_text}"
    assert kwargs["features"]["score_text"].tolist() == ["0.87", ""]
    assert kwargs["feature_defaults"]["score_text"] == "" == hand_box_features()["score_text"]
