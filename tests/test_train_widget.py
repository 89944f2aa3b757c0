"""The fine-tuning widget in a real viewer: corrected boxes in, a new model out, usable at once."""

import numpy as np
import pytest

from napari_clumps._detect_widget import DetectionWidget, register_model_file
from napari_clumps._train_widget import FineTuneWidget
from napari_clumps.detections import write_detections

pytestmark = pytest.mark.gui  # a viewer; the tests that train are slow too


def _open_with_truth_boxes(viewer, folder, truth, names, tmp_path):
    """Open galaxies and put their truth boxes on them as clump layers (the 'corrected' boxes)."""
    detect_widget = DetectionWidget(viewer)
    for name in names:
        viewer.open(folder / name, plugin="napari-clumps")
    path = write_detections(truth[truth.image.isin(names)], tmp_path / "labels.csv")
    detect_widget.import_csv(path)
    return detect_widget


def _wait(widget, qtbot):
    qtbot.waitUntil(lambda: widget.worker is None and widget.train_button.enabled, timeout=300_000)


@pytest.mark.slow
def test_train_one_epoch_on_edited_boxes_then_detect_with_it(make_napari_viewer, trained_model, qtbot, tmp_path):
    model, folder, truth = trained_model
    viewer = make_napari_viewer()
    names = [f"sim_{i:05d}.fits" for i in range(4)] + ["sim_00004.jpg"]
    detect_widget = _open_with_truth_boxes(viewer, folder, truth, names, tmp_path)
    # the user edits: moves a box, deletes one, draws a new one; a reviewed galaxy with no boxes
    clumps = viewer.layers["sim_00000.fits clumps"]
    clumps.data = [clumps.data[0] + np.array([1.0, -1.0])] + list(clumps.data[1:])
    other = viewer.layers["sim_00001.fits clumps"]
    if len(other.data) > 1:
        other.selected_data = {0}
        other.remove_selected()
    other.add_rectangles([np.array([[5.0, 5.0], [5.0, 14.0], [14.0, 14.0], [14.0, 5.0]])])
    empty = viewer.add_image(np.zeros((120, 130, 3), np.uint8), rgb=True, name="blank sky")

    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    register_model_file(model)
    widget.images.value = [viewer.layers[n] for n in names] + [empty]
    items, notes = widget.training_items()
    assert len(items) == 6 and len(items[-1].boxes) == 0  # the blank image is a negative
    assert list(items[0].boxes[0]) == pytest_approx_box(clumps)
    widget.base.value = str(model.resolve())
    widget.epochs.value = 1
    widget.val_fraction.value = 0.0
    widget.output.value = tmp_path / "tuned.safetensors"
    widget.start()
    _wait(widget, qtbot)
    assert widget.result_path == tmp_path / "tuned.safetensors" and widget.result_path.exists()
    assert "saved" in widget.status.value
    assert len(widget.loss_axes.lines) == 1 and len(widget.loss_axes.lines[0].get_xdata()) >= 1  # live plot drawn
    # the new model is offered by the detection widget and runs
    choices = [value for value in detect_widget.model.choices]
    assert str((tmp_path / "tuned.safetensors").resolve()) in choices
    detect_widget.model.value = str((tmp_path / "tuned.safetensors").resolve())
    viewer.open(folder / "sim_00006.fits", plugin="napari-clumps")
    detect_widget.images.value = [viewer.layers["sim_00006.fits"]]
    detect_widget.run()
    qtbot.waitUntil(lambda: detect_widget.run_button.enabled, timeout=120_000)
    from napari_clumps.model import load_model

    tuned_id = load_model(tmp_path / "tuned.safetensors").model_id
    assert tuned_id.startswith("resnet10t-ft")
    assert "sim_00006.fits clumps" in viewer.layers and tuned_id in detect_widget.status.value


def pytest_approx_box(layer):
    """The edge box of the first (moved) shape of a clump layer."""
    import pytest

    from napari_clumps.pixels import napari_rectangles_to_boxes

    return pytest.approx(napari_rectangles_to_boxes(layer.data[:1])[0])


@pytest.mark.slow
def test_cancel_keeps_the_previous_file_and_the_widget_usable(make_napari_viewer, trained_model, qtbot, tmp_path):
    model, folder, truth = trained_model
    viewer = make_napari_viewer()
    # 24 images: 5 training steps in the first epoch, so that the cancel lands inside it
    names = [f"sim_{i:05d}.{suffix}" for i in range(12) for suffix in ("fits", "jpg")]
    _open_with_truth_boxes(viewer, folder, truth, names, tmp_path)
    out = tmp_path / "previous.safetensors"
    out.write_bytes(model.read_bytes())
    before = out.read_bytes()
    widget = FineTuneWidget(viewer)
    register_model_file(model)
    widget.images.value = [viewer.layers[n] for n in names]
    widget.base.value = str(model.resolve())
    widget.epochs.value = 5
    widget.output.value = out
    widget.start()
    qtbot.waitUntil(lambda: len(widget._history_steps) >= 1, timeout=120_000)
    widget.cancel()
    _wait(widget, qtbot)
    assert "cancelled in epoch 1" in widget.status.value
    assert out.read_bytes() == before
    assert widget.train_button.enabled and not widget.cancel_button.enabled


@pytest.mark.parametrize("with_layer", [False, True])
def test_training_without_any_box_is_refused(make_napari_viewer, qtbot, tmp_path, with_layer):
    """Fine-tuning on images that have no boxes at all (Detect never ran, or every box deleted)
    teaches nothing but "no clump": refused with a message, nothing trained or written."""
    from napari_clumps.samples import hubble_image

    viewer = make_napari_viewer()
    for i in range(3):
        viewer.add_image(hubble_image().composite, name=f"galaxy{i}", rgb=True)
    if with_layer:  # an emptied clumps layer
        viewer.add_shapes([], name="galaxy0 clumps", metadata={"napari_clumps_boxes": True, "image_name": "galaxy0"})
    widget = FineTuneWidget(viewer)
    widget.images.value = [viewer.layers[f"galaxy{i}"] for i in range(3)]
    widget.output.value = tmp_path / "never.safetensors"
    widget.start()
    assert "no boxes in the 3 chosen image(s)" in widget.status.value
    assert widget.worker is None and widget.train_button.enabled
    assert not (tmp_path / "never.safetensors").exists()
