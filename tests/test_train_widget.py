"""The fine-tuning widget in a real viewer: corrected boxes in, a new model out, usable at once."""

import time

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
    assert len(widget.plot.loss_line.get_xdata()) >= 1  # live plot drawn
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


def test_the_live_plot_redraws_everything_only_when_its_axes_change(qtbot):
    """Each step's update draws the lines over the saved axes (under 1 ms); the axes, ticks and
    labels (Agg text: 0.1-0.5 s while PyTorch trains on 2 cores) are drawn when a run starts,
    before its worker does (in epochs, the loss relative to the first: known then), and again only
    when a value leaves the limits."""
    from napari_clumps._loss_plot import TrainingPlot

    plot = TrainingPlot()
    qtbot.addWidget(plot.canvas)

    def loss_colour_pixels() -> int:  # the loss line's colour (tab:blue) in the picture drawn
        picture = np.asarray(plot.canvas.buffer_rgba())[..., :3].astype(int)
        return int((np.abs(picture - (31, 119, 180)).sum(axis=-1) < 30).sum())

    def settle():
        qtbot.wait(20)  # matplotlib's draw_idle draws at the event loop's next pass

    assert plot.whole_draws == 1
    plot.start(epochs=2)
    assert plot.whole_draws == 2 and plot.loss_axes.get_xlim() == (0, 2)  # at once, not at the next pass
    losses = [2.0]
    plot.show(losses, [], steps_per_epoch=5)
    settle()
    label_only = loss_colour_pixels()  # the axis label; the line has one point, nothing to draw
    for loss in (1.8, 1.5, 1.2, 1.0):
        losses.append(loss)
        plot.show(losses, [(1, 0.4)], steps_per_epoch=5)
        settle()
    assert plot.whole_draws == 2  # only the lines, over the saved picture
    assert loss_colour_pixels() > label_only + 20  # ... which are drawn
    assert np.allclose(plot.loss_line.get_xdata(), [0.2, 0.4, 0.6, 0.8, 1.0])  # in epochs
    assert np.allclose(plot.loss_line.get_ydata(), [1.0, 0.9, 0.75, 0.6, 0.5])  # relative to the first
    assert list(plot.f1_line.get_xdata()) == [1] and list(plot.f1_line.get_ydata()) == [0.4]
    plot.show([*losses, float("nan")], [(1, 0.4), (2, None)], steps_per_epoch=5)
    settle()
    assert plot.whole_draws == 2  # a NaN loss or an epoch without validation moves no limit
    plot.show(losses * 3, [(1, 0.4)], steps_per_epoch=5)  # three epochs: longer than planned
    settle()
    assert plot.whole_draws == 3 and plot.loss_axes.get_xlim() == (0, 3)
    plot.show([*losses, 3.0], [(1, 0.4)], steps_per_epoch=5)  # 1.5 times the first loss
    settle()
    assert plot.whole_draws == 4 and plot.loss_axes.get_ylim()[1] > 1.5
    plot.start(epochs=2)  # the next run: its own axes again, drawn at once
    assert plot.whole_draws == 5 and plot.loss_axes.get_xlim() == (0, 2) and plot.loss_axes.get_ylim()[1] < 1.5
    plot.start(epochs=2)  # the same axes: the lines go, nothing else is drawn again
    settle()
    assert plot.whole_draws == 5 and len(plot.loss_line.get_xdata()) == 0
    assert loss_colour_pixels() == label_only


def test_a_run_starting_or_ending_does_not_redraw_the_whole_plot(make_napari_viewer, qtbot):
    """Docked beside the Detect widget, the docks are laid out again when a run starts or ends (a
    progress bar shown, a longer status line): the plot keeps its size, so it is not drawn whole
    again (0.2-0.3 s in the GUI thread beside training, docs/benchmarks/gui_responsiveness.md)."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.window.add_dock_widget(DetectionWidget(viewer))
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.wait(300)
    size, draws = widget.plot.canvas.size(), widget.plot.whole_draws
    widget.progress.busy("loading the model\nfor four images")
    qtbot.wait(200)
    widget.progress.done("saved tuned.safetensors")
    qtbot.wait(200)
    assert widget.plot.canvas.size() == size
    assert widget.plot.whole_draws == draws


def test_a_dock_added_under_another_gets_its_share_of_the_column(make_napari_viewer, qtbot):
    """Qt gave a dock added under another only its minimum height: Fine-tune under Detect on a
    900 px screen was an 89 px strip (its Train button out of sight) while Detect kept spare room.
    The column is now shared by what each dock's content asks for, once, when the dock is shown."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    detect, train = DetectionWidget(viewer), FineTuneWidget(viewer)
    viewer.window.add_dock_widget(detect)
    qtbot.wait(100)
    viewer.window.add_dock_widget(train)
    qtbot.wait(300)
    docks = [widget.parentWidget() for widget in (detect, train)]
    heights = [dock.height() for dock in docks]
    wanted = [dock.sizeHint().height() for dock in docks]
    assert docks[0].x() == docks[1].x() and docks[0].y() < docks[1].y()  # stacked, Detect on top
    share = [height / sum(heights) for height in heights]
    fair = [hint / sum(wanted) for hint in wanted]
    assert share == pytest.approx(fair, abs=0.05), (heights, wanted)


@pytest.mark.slow
def test_a_second_fine_tuning_says_it_waits_for_the_first(simulated, tmp_path):
    """The Fine-tune widget and the review queue share the session's fine-tuning process: the
    second to start says that it waits (instead of "loading..." for as long as the first lasts),
    and runs once the first has ended."""
    import threading

    from napari_clumps._train_widget import DEFAULT_CHOICE, WAITING_FOR_THE_OTHER_FINE_TUNING, _train_in_thread
    from napari_clumps.training import TrainingOptions, load_labelled_images

    folder, truth = simulated
    paths = sorted(folder.glob("*.fits"))[:2]
    csv = write_detections(truth[truth.image.isin([p.name for p in paths])], tmp_path / "truth.csv")
    items = load_labelled_images(paths, csv)[0]
    first_reports, second_reports, outcomes = [], [], {}
    stop_first = threading.Event()

    def train(name, reports, epochs, should_stop):
        options = TrainingOptions(epochs=epochs, val_fraction=0.0)
        out = tmp_path / f"{name}.safetensors"
        outcomes[name] = _train_in_thread(items, DEFAULT_CHOICE, options, out, reports.append, should_stop)

    def wait_for(condition, thread):
        deadline = time.monotonic() + 300
        while not condition():
            assert thread.is_alive() and time.monotonic() < deadline, (first_reports, second_reports, outcomes)
            time.sleep(0.05)

    def trains(reports):
        return any(getattr(report, "kind", None) == "step" for report in reports)

    first = threading.Thread(target=train, args=("first", first_reports, 50, stop_first.is_set))
    second = threading.Thread(target=train, args=("second", second_reports, 1, lambda: False))
    first.start()
    try:
        wait_for(lambda: trains(first_reports), first)
        second.start()
        wait_for(lambda: second_reports, second)
        assert second_reports[0] == WAITING_FOR_THE_OTHER_FINE_TUNING
    finally:
        stop_first.set()
        first.join(300)
        if second.is_alive():
            second.join(300)
    assert outcomes["first"][0] == "cancelled", outcomes
    assert outcomes["second"][0] == "ok", outcomes
    assert trains(second_reports), "then it trains"
