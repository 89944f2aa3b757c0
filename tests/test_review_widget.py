"""The review queue widget in a real napari viewer (under Xvfb): keys, edits, undo, resume."""

from pathlib import Path

import numpy as np
import pytest

from napari_clumps._layers import REVIEW_LAYER_KEY
from napari_clumps._review_widget import KEEP_LOADED, ReviewWidget
from napari_clumps.detections import BOX_COLUMNS, HAND_MODEL, read_detections, read_images_list
from napari_clumps.pixels import boxes_to_napari_rectangles
from napari_clumps.simulate import write_dataset

pytestmark = pytest.mark.gui


def press(viewer, key):
    """A key press as napari's canvas dispatches it (active layer's bindings first, then the viewer's)."""
    assert viewer.window._qt_viewer._key_map_handler.press_key(key), f"{key} is not bound"


def saved(csv):
    """(image, label, model, box) rows and {image: review status} of the labels CSV."""
    table = read_detections(csv)
    rows = [
        (r.image, r.label, r.model, tuple(np.round([getattr(r, c) for c in BOX_COLUMNS], 3)))
        for r in table.itertuples()
    ]
    listed = read_images_list(csv)
    return rows, dict(zip(listed.image, listed.review_status))


def visible_images(viewer):
    return {layer.metadata[REVIEW_LAYER_KEY] for layer in viewer.layers if layer.visible}


@pytest.fixture
def galaxies(tmp_path):
    """A folder of 3 simulated galaxies (JPEG only: names are relative to the folder)."""
    folder = tmp_path / "images"
    truth = read_detections(write_dataset(tmp_path / "sim", n=3, seed=3))
    folder.mkdir()
    for path in sorted((tmp_path / "sim").glob("*.jpg")):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder, truth[truth.image.str.endswith(".jpg")], tmp_path / "labels.csv"


def test_review_edit_undo_close_and_resume(make_napari_viewer, galaxies):
    folder, truth, csv = galaxies
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    session = widget.open_queue(folder, csv)
    names = ["sim_00000.jpg", "sim_00001.jpg", "sim_00002.jpg"]
    assert [item.name for item in session.items] == names
    assert visible_images(viewer) == {names[0]}
    assert widget.status.value.startswith("reviewed 0 of 3: sim_00000.jpg (not reviewed")

    # the model's boxes arrive for the first image; the layer shows them
    session.set_boxes(names[0], truth[truth.image == names[0]])
    widget._refill(names[0])
    layer = widget.boxes_layer()
    assert len(layer.data) == 3

    # c toggles the selected box; the CSV has it at once
    layer.selected_data = {0}
    first_label = truth[truth.image == names[0]].label.iloc[0]
    press(viewer, "c")
    rows, status = saved(csv)
    assert rows[0][1] != first_label and list(layer.features.label)[0] == rows[0][1]

    # napari's own delete (select, remove) reaches the CSV through the layer's events
    layer.selected_data = {2}
    layer.remove_selected()
    assert len(saved(csv)[0]) == 2
    press(viewer, "u")  # one undo brings it back, in the CSV and the layer
    assert len(saved(csv)[0]) == 3 and len(widget.boxes_layer().data) == 3
    layer.selected_data = {2}
    layer.remove_selected()
    assert len(saved(csv)[0]) == 2

    # a box drawn with napari's rectangle tool is a hand box
    layer.add_rectangles(boxes_to_napari_rectangles([[10, 20, 22, 32]]))
    rows, _ = saved(csv)
    assert rows[-1] == (names[0], "clump", HAND_MODEL, (10.0, 20.0, 22.0, 32.0))

    # b: a box of the typical size at the cursor
    viewer.cursor.position = (99.5, 49.5)  # napari (row, col) = edge (x 50, y 100)
    press(viewer, "b")
    rows, _ = saved(csv)
    side = rows[-1][3][2] - rows[-1][3][0]
    assert rows[-1][:3] == (names[0], "clump", HAND_MODEL) and len(rows) == 4
    assert np.allclose([(rows[-1][3][0] + rows[-1][3][2]) / 2, (rows[-1][3][1] + rows[-1][3][3]) / 2], [50, 100])
    assert side > 4

    # moving a box (napari's select tool sets the data and reports "changed") moves it in the CSV
    before = saved(csv)[0]
    layer.data = [layer.data[0] + np.array([2.0, 3.0]), *layer.data[1:]]
    moved = saved(csv)[0]
    assert moved[0][3] == tuple(np.round(np.add(before[0][3], [3, 2, 3, 2]), 3)) and moved[1:] == before[1:]

    # a: accepted, on to the next image; only its layers are visible
    press(viewer, "a")
    assert saved(csv)[1] == {names[0]: "reviewed", names[1]: "unreviewed", names[2]: "unreviewed"}
    assert visible_images(viewer) == {names[1]}

    # 0: no clumps; u: undo it
    press(viewer, "0")
    assert saved(csv)[1][names[1]] == "reviewed"
    press(viewer, "u")
    assert saved(csv)[1][names[1]] == "unreviewed" and widget.session.current == 1
    # undo the accept of the first image: back there, not reviewed
    press(viewer, "u")
    assert saved(csv)[1][names[0]] == "unreviewed" and visible_images(viewer) == {names[0]}
    press(viewer, "a")
    expected = saved(csv)
    assert len(expected[0]) == 4 and expected[1][names[0]] == "reviewed"

    # close the viewer, open a new one on the same CSV: resumed at the first unreviewed image
    viewer.close()
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    session = widget.open_queue(folder, csv)
    assert saved(csv) == expected
    assert session.current == 1 and visible_images(viewer) == {names[1]}
    press(viewer, "p")
    assert len(widget.boxes_layer().data) == 4
    assert widget.status.value.startswith("reviewed 1 of 3: sim_00000.jpg (reviewed, 4 boxes)")


def test_forty_images_one_visible_at_a_time(make_napari_viewer, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"g{i:02d}.png")
    (tmp_path / "g03.png").write_bytes(b"not a PNG")  # a bad file shows nothing and does not stop the queue
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    session = widget.open_queue(tmp_path, tmp_path / "labels.csv")
    assert len(session) == 40
    for step in range(12):
        assert visible_images(viewer) == (set() if step == 3 else {f"g{step:02d}.png"})
        assert ("cannot read" in widget.status.value) == (step == 3)
        assert len({layer.metadata[REVIEW_LAYER_KEY] for layer in viewer.layers}) <= KEEP_LOADED
        press(viewer, "0" if step % 2 else "n")
    assert session.progress == (6, 40)
    assert saved(tmp_path / "labels.csv")[1]["g01.png"] == "reviewed"
    # the user removes the current boxes layer by hand: the image is loaded again when needed
    viewer.layers.remove(widget.boxes_layer())
    assert widget.boxes_layer() is None and visible_images(viewer) == set()
    press(viewer, "p")
    press(viewer, "n")
    assert visible_images(viewer) == {"g12.png"} and widget.boxes_layer() in viewer.layers


def test_keys_work_through_qt_key_events(make_napari_viewer, qtbot, tmp_path):
    """The keys as a user presses them over the canvas, with the boxes layer active (napari's
    own Shapes keys p, a, b would win otherwise)."""
    from PIL import Image
    from qtpy.QtCore import Qt

    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(tmp_path / f"g{i}.png")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    widget.open_queue(tmp_path, tmp_path / "labels.csv")
    canvas = viewer.window._qt_viewer.canvas.native
    assert viewer.layers.selection.active is widget.boxes_layer()
    qtbot.keyClick(canvas, Qt.Key_A)
    assert widget.session.current == 1 and saved(tmp_path / "labels.csv")[1]["g0.png"] == "reviewed"
    qtbot.keyClick(canvas, Qt.Key_P)
    assert widget.session.current == 0 and widget.boxes_layer().mode == "select"
    qtbot.keyClick(canvas, Qt.Key_U)
    assert saved(tmp_path / "labels.csv")[1]["g0.png"] == "unreviewed"
    qtbot.keyClick(canvas, Qt.Key_0)
    assert saved(tmp_path / "labels.csv")[1]["g0.png"] == "reviewed"
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert saved(tmp_path / "labels.csv")[1]["g0.png"] == "unreviewed"


@pytest.mark.slow
def test_detect_unreviewed_leaves_reviewed_and_hand_edited_images_alone(
    make_napari_viewer, trained_model, qtbot, tmp_path
):
    from napari_clumps._detect_widget import register_model_file

    model, folder, _ = trained_model
    for name in ("sim_00003.fits", "sim_00004.fits", "sim_00005.fits"):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / name).write_bytes((folder / name).read_bytes())
    csv = tmp_path / "labels.csv"
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    register_model_file(model)  # after the widget exists: it hears of the new file
    widget.model.value = str(model.resolve())
    session = widget.open_queue(tmp_path / "images", csv)
    session.mark_no_clumps()  # sim_00003: reviewed, no clumps
    session.next()
    session.add_box(50, 50, 12)  # sim_00004: a hand box, not yet reviewed
    widget.detect_unreviewed()
    qtbot.waitUntil(lambda: widget.detect_button.enabled, timeout=300_000)
    rows, status = saved(csv)
    assert status == {"sim_00003.fits": "reviewed", "sim_00004.fits": "unreviewed", "sim_00005.fits": "unreviewed"}
    assert [r for r in rows if r[0] == "sim_00003.fits"] == []
    assert [r[2] for r in rows if r[0] == "sim_00004.fits"] == [HAND_MODEL]
    detected = [r for r in rows if r[0] == "sim_00005.fits"]
    assert detected and {r[2] for r in detected} == {session.items[2].models[0]} != {HAND_MODEL}


@pytest.mark.slow
def test_fine_tune_on_reviewed_then_redetect_keeps_every_correction(
    make_napari_viewer, trained_model, qtbot, tmp_path, monkeypatch
):
    """The whole loop from the queue: review three galaxies, fine-tune on them (cross-validated),
    the new model re-detects the unreviewed ones; reviewed and hand-edited images stay as they were."""
    from napari_clumps._detect_widget import register_model_file
    from napari_clumps.model import load_model
    from napari_clumps.training import TrainingOptions

    model, folder, truth = trained_model
    names = [f"sim_{i:05d}.fits" for i in range(6)]
    (tmp_path / "images").mkdir()
    for name in names:
        (tmp_path / "images" / name).write_bytes((folder / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    csv = Path("labels.csv")  # relative, as typed: the new model must still be a valid menu choice
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    register_model_file(model)
    widget.model.value = str(model.resolve())
    widget.training_options = TrainingOptions(epochs=2)
    session = widget.open_queue(tmp_path / "images", csv)
    for name in names[:3]:  # three galaxies corrected to the truth and accepted
        session.go_to(session.index_of(name))
        session.set_boxes(name, truth[truth.image == name])
        session.accept()
    session.go_to(session.index_of(names[3]))
    session.add_box(40, 40, 10)  # an unreviewed galaxy someone drew on
    before = [row for row in saved(csv)[0] if row[0] in names[:4]]
    widget.fine_tune_button.changed()  # as a click
    assert "loading the model" in widget.status.value and not widget.fine_tune_button.enabled
    assert widget.stop_button.enabled
    qtbot.waitUntil(lambda: widget.fine_tuned_path is not None and widget.worker is None, timeout=600_000)
    out = Path("labels-model.safetensors")
    assert widget.fine_tuned_path == out and widget.model.value == str(out.resolve())
    tuned = load_model(out)
    assert tuned.provenance["cross_validation"]["n_images"] == 3
    assert f"model: saved {out}" in widget.status.value and "cross-validated F1" in widget.status.value
    rows, status = saved(csv)
    assert [row for row in rows if row[0] in names[:4]] == before  # corrections untouched
    assert [status[n] for n in names] == ["reviewed"] * 3 + ["unreviewed"] * 3
    redetected = {row[2] for row in rows if row[0] in names[4:]}
    assert redetected == {tuned.model_id}  # the unreviewed galaxies now carry the new model's boxes
    assert widget.fine_tune_button.enabled and not widget.stop_button.enabled


def test_fine_tuning_with_no_reviewed_box_is_refused(make_napari_viewer, galaxies):
    folder, _, csv = galaxies
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    session = widget.open_queue(folder, csv)
    session.mark_no_clumps()
    assert widget.fine_tune_on_reviewed() is None and widget.worker is None
    assert "nothing to learn from yet: 1 reviewed image(s), no boxes" in widget.status.value
    assert not list(csv.parent.glob("*.safetensors"))


def test_a_rectangle_drawn_with_the_mouse_is_a_hand_clump(make_napari_viewer, galaxies):
    """napari gives a drawn shape the features of the last selected one (here a model's odd
    clump); the queue makes it a hand box."""
    from types import SimpleNamespace

    from napari.layers.shapes._shapes_mouse_bindings import add_rectangle

    folder, truth, csv = galaxies
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    session = widget.open_queue(folder, csv)
    model_rows = truth[truth.image == "sim_00000.jpg"].assign(model="some-model", score=0.4, label="odd_clump")
    session.set_boxes("sim_00000.jpg", model_rows)
    widget._refill("sim_00000.jpg")
    layer = widget.boxes_layer()
    layer.selected_data = {0}  # napari now draws with this box's features
    layer.selected_data = set()
    layer.mode = "add_rectangle"
    event = SimpleNamespace(type="mouse_press", position=(40.0, 30.0), modifiers=[])
    drawing = add_rectangle(layer, event)
    next(drawing)
    event.type, event.position = "mouse_move", (52.0, 44.0)
    next(drawing)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(drawing)
    rows, _ = saved(csv)
    assert len(rows) == len(model_rows) + 1
    assert rows[-1][:3] == ("sim_00000.jpg", "clump", HAND_MODEL)
    np.testing.assert_allclose(rows[-1][3], (30.5, 40.5, 44.5, 52.5), atol=0.01)
    assert read_detections(csv).score.iloc[-1] == 1.0
    assert all(r[2] == "some-model" for r in rows[:-1])


@pytest.mark.usefixtures("model_in_this_process")
def test_order_by_what_teaches_most_reorders_the_queue_and_says_why(make_napari_viewer, galaxies, qtbot, monkeypatch):
    """The ranking (stubbed here: napari_clumps.active has its own tests) reaches the queue: it
    starts at rank 1, shows the reason, accept goes on by rank, and reopening keeps the order."""
    import napari_clumps.active as active

    folder, _, csv = galaxies
    priorities = {"sim_00000.jpg": 0.5, "sim_00001.jpg": 0.1, "sim_00002.jpg": 2.0}

    def fake_priorities(paths, model, names, device, should_stop):
        for name in names:
            yield {"image": name, "priority": priorities[name], "reason": f"{priorities[name]} boxes near", "error": ""}

    monkeypatch.setattr(active, "iter_priorities", fake_priorities)
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    widget.open_queue(folder, csv)
    assert widget.order_button.enabled
    widget.order_by_priority()
    assert not widget.order_button.enabled and "loading the model to rank 3" in widget.status.value
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.session.item.name == "sim_00002.jpg" and visible_images(viewer) == {"sim_00002.jpg"}
    assert "rank 1: 2.0 boxes near" in widget.status.value
    press(viewer, "a")
    assert widget.session.item.name == "sim_00000.jpg" and "rank 2: 0.5 boxes near" in widget.status.value
    _, status = saved(csv)
    assert status["sim_00002.jpg"] == "reviewed"
    ranked = read_images_list(csv).sort_values("review_rank").image
    assert list(ranked) == ["sim_00002.jpg", "sim_00000.jpg", "sim_00001.jpg"]
    viewer.close()
    again = ReviewWidget(make_napari_viewer())
    again.open_queue(folder, csv)
    assert again.session.item.name == "sim_00000.jpg"  # the first unreviewed in the ranked order


@pytest.mark.usefixtures("model_in_this_process")
def test_a_stopped_ranking_leaves_the_order_as_it_was(make_napari_viewer, galaxies, qtbot, monkeypatch):
    import threading

    import napari_clumps.active as active

    folder, _, csv = galaxies
    release = threading.Event()

    def slow_priorities(paths, model, names, device, should_stop):
        for i, name in enumerate(names):
            yield {"image": name, "priority": float(i), "reason": "some", "error": ""}
            release.wait(10)  # the user presses Stop after the first image

    monkeypatch.setattr(active, "iter_priorities", slow_priorities)
    widget = ReviewWidget(make_napari_viewer())
    session = widget.open_queue(folder, csv)
    session.mark_no_clumps()  # something saved, so that the CSV exists
    widget.order_by_priority()
    qtbot.waitUntil(lambda: len(widget._priorities) == 1, timeout=10_000)
    widget.stop()
    release.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=20_000)
    assert not session.ranked and session.item.name == "sim_00000.jpg"
    assert "review_rank" not in read_images_list(csv).columns
    assert widget.order_button.enabled and not widget.stop_button.enabled
