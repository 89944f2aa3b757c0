"""Issue 13 in the widgets: remembered settings, one layer per FITS with its bands on demand, the
images chosen for you, and progress shown in the widget from the first second (under Xvfb)."""

import threading

import numpy as np
import pytest

from napari_clumps import _detect_widget, _train_widget
from napari_clumps._detect_widget import DEFAULT_CHOICE, DetectionWidget, register_model_file
from napari_clumps._layers import detections_layer_over
from napari_clumps._review_widget import ReviewWidget
from napari_clumps._train_widget import FineTuneWidget
from napari_clumps.detections import detections_frame
from napari_clumps.settings import load_settings, settings_path

pytestmark = pytest.mark.gui


@pytest.fixture
def model_file(tmp_path):
    """A model file's header without weights: the widgets only list it (the header is what they
    check when it is chosen; its threshold falls back to the paper's)."""
    from safetensors.numpy import save_file

    from napari_clumps.model import MODEL_FORMAT, MODEL_FORMAT_VERSION, config_for

    path = tmp_path / "models" / "tuned.safetensors"
    path.parent.mkdir()
    metadata = {"format": MODEL_FORMAT, "format_version": str(MODEL_FORMAT_VERSION)}
    save_file({}, str(path), metadata={**metadata, "config": config_for("resnet10t").to_json(), "provenance": "{}"})
    return path


def _add_boxes(viewer, image_layer, n_boxes):
    """A clumps layer of ``n_boxes`` hand boxes over ``image_layer``, as Detect or a CSV load makes."""
    from napari.layers import Shapes

    boxes = [[10 + 12 * i, 10, 20 + 12 * i, 20] for i in range(n_boxes)]
    table = detections_frame(image_layer.name, np.reshape(boxes, (-1, 4)), ["clump"] * n_boxes, 1.0)
    data, kwargs, _ = detections_layer_over(table, image_layer)
    return viewer.add_layer(Shapes(data, **kwargs))


def _shown(control) -> bool:
    """Shown in its widget (``visible`` also needs the viewer's window on screen, which it is not here)."""
    return not control.native.isHidden()


def test_detect_widget_settings_survive_a_restart(make_napari_viewer, model_file, tmp_path):
    viewer = make_napari_viewer()
    widget = DetectionWidget(viewer)
    register_model_file(model_file)
    widget.model.value = str(model_file)
    widget.device.value = "cpu"
    widget.score.value = 0.55
    widget.csv_path.value = tmp_path / "out" / "boxes.csv"
    stored = load_settings()
    assert (stored.model, stored.device, stored.score_threshold) == (str(model_file), "cpu", 0.55)
    # a new session: a new viewer and widget read them back
    viewer.close()
    widget = DetectionWidget(make_napari_viewer())
    assert widget.model.value == str(model_file) and str(model_file) in widget.model.choices
    assert (widget.device.value, widget.score.value) == ("cpu", pytest.approx(0.55))
    assert widget.csv_path.value == tmp_path / "out" / "boxes.csv"
    # the packaged default again: remembered as its name, not the menu's label
    widget.model.value = DEFAULT_CHOICE
    assert load_settings().model == "default"


def test_a_corrupt_settings_file_leaves_the_widgets_working(make_napari_viewer):
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"device": "cpu", ')
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning) as caught:
        widgets = [cls(viewer) for cls in (DetectionWidget, FineTuneWidget, ReviewWidget)]
    (message,) = [str(w.message) for w in caught if "settings" in str(w.message)]  # once for all widgets
    assert message.startswith(f"{path}: not valid JSON") and "\n" not in message
    detect = widgets[0]
    assert detect.device.value == "auto" and detect.model.value == DEFAULT_CHOICE
    detect.device.value = "cpu"  # the next change writes a good file
    assert load_settings().device == "cpu"


def test_settings_that_cannot_be_saved_cost_the_memory_not_the_action(make_napari_viewer, tmp_path, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_clumps.settings import CONFIG_DIR_VARIABLE

    blocker = tmp_path / "not a directory"
    blocker.write_text("")
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(blocker))
    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    with pytest.warns(UserWarning, match="cannot read the napari-clumps settings"):
        widget = DetectionWidget(make_napari_viewer())
        widget.device.value = "cpu"
    assert widget.device.value == "cpu"
    assert any("cannot save the settings" in m for m in messages)


def test_a_finetuned_model_and_the_output_folder_are_remembered(make_napari_viewer, model_file, tmp_path):
    viewer = make_napari_viewer()
    widget = FineTuneWidget(viewer)
    widget.output.value = model_file
    widget._done(("ok", f"saved {model_file}", str(model_file)))  # what a finished training reports
    viewer.close()
    viewer = make_napari_viewer()
    detect, tune, review = (cls(viewer) for cls in (DetectionWidget, FineTuneWidget, ReviewWidget))
    for menu in (detect.model, tune.base, review.model):
        assert str(model_file) in menu.choices
    # the remembered folder, with a name that does not overwrite the model there
    assert tune.output.value == model_file.parent / "finetuned.safetensors"
    (model_file.parent / "finetuned.safetensors").write_bytes(b"")
    assert FineTuneWidget(viewer).output.value == model_file.parent / "finetuned-2.safetensors"


def test_the_review_widget_remembers_its_folder_and_csv(make_napari_viewer, image_files, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "colour.jpg").write_bytes(image_files["jpeg"].read_bytes())
    viewer = make_napari_viewer()
    ReviewWidget(viewer).open_queue(folder, tmp_path / "labels.csv")
    viewer.close()
    widget = ReviewWidget(make_napari_viewer())
    assert (widget.folder.value, widget.labels_csv.value) == (folder, tmp_path / "labels.csv")


def test_a_fits_opens_as_one_layer_and_its_bands_are_one_click_away(make_napari_viewer, image_files):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    (jpeg,) = viewer.open(image_files["jpeg"], plugin="napari-clumps")
    (fits,) = viewer.open(image_files["cube"], plugin="napari-clumps")
    widget = DetectionWidget(viewer)
    viewer.layers.selection = {jpeg}
    widget.bands_button.native.click()  # a JPEG has no raw bands: nothing added
    assert len(viewer.layers) == 2
    viewer.layers.selection = {fits}
    widget.bands_button.native.click()
    assert [layer.name for layer in viewer.layers][2:] == ["cube.fits [g]", "cube.fits [r]", "cube.fits [i]"]
    # band layers are not images to detect in
    assert set(widget.images.choices) == {jpeg, fits}
    # the same command is in napari's Layers > Data menu
    menu = get_app_model().menus.get_menu("napari/layers/data")
    assert "napari-clumps.show_raw_bands" in {getattr(item, "command", None) and item.command.id for item in menu}


def test_detect_chooses_every_image_and_keeps_a_deselection(make_napari_viewer, image_files):
    viewer = make_napari_viewer()
    (jpeg,) = viewer.open(image_files["jpeg"], plugin="napari-clumps")
    (fits,) = viewer.open(image_files["cube"], plugin="napari-clumps")
    widget = DetectionWidget(viewer)
    assert set(widget.images.value) == {jpeg, fits}
    widget.images.value = [fits]  # the user leaves the JPEG out ...
    (png,) = viewer.open(image_files["png"], plugin="napari-clumps")
    assert set(widget.images.value) == {fits, png}  # ... a new image comes in chosen, the JPEG stays out
    _add_boxes(viewer, fits, 2)
    assert set(widget.images.value) == {fits, png}


def test_finetune_chooses_the_images_with_boxes(make_napari_viewer, image_files):
    viewer = make_napari_viewer()
    layers = [viewer.open(image_files[kind], plugin="napari-clumps")[0] for kind in ("jpeg", "png", "cube")]
    _add_boxes(viewer, layers[0], 2)
    _add_boxes(viewer, layers[1], 0)  # an emptied clumps layer: nothing to learn from yet
    widget = FineTuneWidget(viewer)
    assert widget.images.value == [layers[0]]
    _add_boxes(viewer, layers[2], 1)  # boxes that arrive later (Detect, a CSV load)
    assert widget.images.value == [layers[0], layers[2]]


def test_detect_says_at_once_that_the_model_is_loading(make_napari_viewer, image_files, qtbot, monkeypatch):
    release = threading.Event()

    def loading_slowly(*args, **kwargs):  # the worker, stuck in torch's import and the model load
        release.wait(30)
        yield "ready", "some-model on cpu"

    monkeypatch.setattr(_detect_widget, "_detect_in_thread", loading_slowly)
    viewer = make_napari_viewer()
    viewer.open(image_files["jpeg"], plugin="napari-clumps")
    widget = DetectionWidget(viewer)
    try:
        widget.run_button.native.click()
        assert widget.status.value.startswith("loading the model (default (packaged model)) for 1 image(s)")
        assert _shown(widget.progress.bar) and widget.progress.bar.native.maximum() == 0  # Qt's busy bar
    finally:
        release.set()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30_000)
    assert widget.status.value == "some-model on cpu: detecting in 1 image(s)..."
    assert not _shown(widget.progress.bar)


def test_finetune_says_at_once_that_the_base_model_is_loading(make_napari_viewer, image_files, qtbot, monkeypatch):
    release = threading.Event()

    def loading_slowly(items, base, options, out, report, should_stop):
        release.wait(30)
        return "cancelled", "cancelled before the first step", None

    monkeypatch.setattr(_train_widget, "_train_in_thread", loading_slowly)
    viewer = make_napari_viewer()
    (jpeg,) = viewer.open(image_files["jpeg"], plugin="napari-clumps")
    _add_boxes(viewer, jpeg, 2)
    widget = FineTuneWidget(viewer)
    try:
        widget.train_button.native.click()
        assert "loading the base model" in widget.status.value and _shown(widget.progress.bar)
    finally:
        release.set()
    qtbot.waitUntil(lambda: widget.train_button.enabled, timeout=30_000)
    assert widget.status.value == "cancelled before the first step" and not _shown(widget.progress.bar)
