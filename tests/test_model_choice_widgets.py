"""Broken model files chosen in the widgets: a clear error, the previous model still selected, the
file not remembered; found only when the model loads (in the worker), the same, and the widget
usable. Model files are a small untrained resnet10t saved here (no trained_model: not slow)."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from napari_clumps._detect_widget import DEFAULT_CHOICE, DetectionWidget, register_model_file
from napari_clumps._train_widget import FineTuneWidget
from napari_clumps.model import new_detector, save_model
from napari_clumps.settings import load_settings

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """name -> path: a good model, another good one, one with NaN weights (its header is fine),
    a truncated one, a hostile pickle and its marker (which must never appear)."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    detector = new_detector("resnet10t", backbone_weights=None)
    detector.provenance = {"model_id": "good", "score_threshold": 0.42}
    files = {"good": save_model(detector, d / "good.safetensors")}
    files["other"] = save_model(detector, d / "other.safetensors")
    with safe_open(str(files["good"]), framework="pt") as handle:
        state = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    key = next(k for k in state if k.startswith("roi_heads") and state[k].is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    files["nan"] = d / "nan.safetensors"
    save_file(state, str(files["nan"]), metadata=metadata)
    raw = files["good"].read_bytes()
    files["truncated"] = d / "truncated.safetensors"
    files["truncated"].write_bytes(raw[: len(raw) // 3])
    files["marker"] = d / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(files["marker"]), "w"))

    files["hostile"] = d / "hostile.pt"
    torch.save({"state_dict": {"x": Payload()}}, files["hostile"])
    return files


@pytest.fixture
def messages():
    from napari.utils.notifications import notification_manager

    received = []
    notification_manager.notification_ready.connect(lambda n: received.append(str(n.message)))
    return received


def _remembered():
    return load_settings().model_files


def test_detect_widget_refuses_a_broken_file_when_chosen(make_napari_viewer, model_files, messages):
    viewer = make_napari_viewer()
    widget = DetectionWidget(viewer)
    widget.model_file.value = model_files["good"]
    good = str(model_files["good"].resolve())
    assert widget.model.value == good and widget.score.value == pytest.approx(0.42)
    for name, says in (("truncated", "truncated: "), ("hostile", "refused: its pickle calls io.open")):
        widget.model_file.value = model_files[name]
        assert any(m.startswith(f"napari-clumps: {model_files[name]}: ") and says in m for m in messages), messages
        assert widget.model.value == good
        assert str(model_files[name].resolve()) not in _remembered()
        assert str(model_files[name].resolve()) not in widget.model.choices
    assert not model_files["marker"].exists()
    assert widget.score.value == pytest.approx(0.42)


def test_detect_widget_goes_back_from_a_remembered_file_that_broke(make_napari_viewer, model_files, messages, tmp_path):
    viewer = make_napari_viewer()
    widget = DetectionWidget(viewer)
    widget.model_file.value = model_files["good"]
    broke = tmp_path / "broke.safetensors"
    broke.write_bytes(model_files["good"].read_bytes())
    register_model_file(broke)  # remembered while it was fine ...
    broke.write_bytes(b"\x00" * 100)  # ... then overwritten
    widget.model.value = str(broke.resolve())
    assert any(f"{broke.resolve()}: not a napari-clumps model file" in m for m in messages), messages
    assert widget.model.value == str(model_files["good"].resolve())
    assert str(broke.resolve()) not in _remembered() and str(broke.resolve()) not in widget.model.choices


def test_detect_widget_run_with_a_model_that_does_not_load(make_napari_viewer, model_files, messages, qtbot):
    """NaN weights pass the header check: the run fails when the model loads, with the error,
    the Detect button back, the previous model selected again and the file forgotten."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="sky")
    widget = DetectionWidget(viewer)
    widget.model_file.value = model_files["good"]
    widget.model_file.value = model_files["nan"]
    nan = str(model_files["nan"].resolve())
    assert widget.model.value == nan  # its header is fine
    widget.images.value = [viewer.layers["sky"]]
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert any("NaN or infinite values" in m and nan in m for m in messages), messages
    assert widget.model.value == str(model_files["good"].resolve())
    assert nan not in _remembered() and nan not in widget.model.choices
    assert widget.status.value.endswith(f"the model is back to {widget.model.current_choice}")
    assert not widget.cancel_button.enabled and "sky clumps" not in viewer.layers


def _with_boxes(viewer):
    viewer.add_image(np.zeros((96, 96, 3), np.uint8), rgb=True, name="galaxy")
    rectangle = np.array([[10.0, 10.0], [10.0, 20.0], [20.0, 20.0], [20.0, 10.0]])
    viewer.add_shapes(
        [rectangle],
        shape_type="rectangle",
        name="galaxy clumps",
        metadata={"napari_clumps_boxes": True, "image_name": "galaxy"},
    )


def test_fine_tune_widget_refuses_a_broken_base_and_leaves_the_output(
    make_napari_viewer, model_files, messages, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    _with_boxes(viewer)
    for name in ("good", "truncated", "nan"):
        register_model_file(model_files[name])  # as if remembered earlier
    widget = FineTuneWidget(viewer)
    good, nan = str(model_files["good"].resolve()), str(model_files["nan"].resolve())
    widget.base.value = good
    widget.base.value = str(model_files["truncated"].resolve())  # refused when chosen
    assert any(f"{model_files['truncated'].resolve()}: truncated: " in m for m in messages), messages
    assert widget.base.value == good and str(model_files["truncated"].resolve()) not in _remembered()
    # NaN weights: refused when the worker loads it; the output file is left as it was
    out = tmp_path / "previous.safetensors"
    out.write_bytes(model_files["other"].read_bytes())
    before = out.read_bytes()
    widget.base.value = nan
    widget.images.value = [viewer.layers["galaxy"]]
    widget.output.value = out
    widget.start()
    qtbot.waitUntil(lambda: widget.train_button.enabled, timeout=120_000)
    assert any(m.startswith("napari-clumps: training failed: ") and "NaN or infinite" in m for m in messages)
    assert widget.base.value == good and nan not in _remembered()
    assert widget.status.value.endswith(f"the base model is back to {widget.base.current_choice}")
    assert out.read_bytes() == before and not widget.cancel_button.enabled
    assert widget.base.value != DEFAULT_CHOICE


def test_review_queue_refuses_a_broken_file_when_chosen_and_when_it_loads(
    make_napari_viewer, model_files, messages, qtbot, tmp_path
):
    from PIL import Image

    from napari_clumps._review_widget import ReviewWidget

    folder = tmp_path / "images"
    folder.mkdir()
    for name in "ab":
        Image.fromarray(np.full((64, 64, 3), 40, np.uint8)).save(folder / f"{name}.png")
    for name in ("good", "truncated", "nan"):
        register_model_file(model_files[name])  # as if remembered earlier
    widget = ReviewWidget(make_napari_viewer())
    widget.open_queue(folder, tmp_path / "labels.csv")
    good, nan = str(model_files["good"].resolve()), str(model_files["nan"].resolve())
    widget.model.value = good
    widget.model.value = str(model_files["truncated"].resolve())  # refused when chosen
    assert any(f"{model_files['truncated'].resolve()}: truncated: " in m for m in messages), messages
    assert widget.model.value == good and str(model_files["truncated"].resolve()) not in _remembered()
    widget.model.value = nan  # its header is fine: refused when the worker loads it
    widget.detect_unreviewed()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert any(m.startswith("napari-clumps: detection failed: ") and "NaN or infinite" in m for m in messages)
    assert widget.model.value == good and nan not in _remembered() and nan not in widget.model.choices
    assert f"the model is back to {widget.model.current_choice}" in widget.status.value
    assert [item.n_boxes for item in widget.session.items] == [0, 0] and widget.detect_button.enabled


def test_fine_tune_widget_shows_a_trainer_note(make_napari_viewer, messages):
    """What the trainer had to do (out of GPU memory: fewer images at a time) is a notification
    and the status line, not an epoch of the plot."""
    from napari_clumps.training import TrainingProgress

    widget = FineTuneWidget(make_napari_viewer())
    note = "out of memory on cuda with 4 images at a time: going on with 2 at a time"
    widget._on_progress(TrainingProgress("note", 1, 3, 0, 5, float("nan"), 1.0, note=note))
    assert widget.status.value == note and f"napari-clumps: {note}" in messages
    assert widget._history_f1 == [] and widget._history_steps == []


def test_a_model_file_with_a_long_name_keeps_every_widget_within_its_dock(make_napari_viewer, model_files, tmp_path):
    """Qt sized the model menus to their longest entry: a remembered file in a long-named folder
    made the docks' content wider than the docks, cutting off their right edge (the file
    buttons, the score). The menus now elide long entries; the file name still shows."""
    from napari_clumps._review_widget import ReviewWidget

    folder = tmp_path / ("a_folder_named_by_a_pipeline_" + "x" * 60)
    folder.mkdir()
    long_file = folder / ("finetuned_on_my_corrections_of_the_whole_stripe82_sample_" + "y" * 40 + ".safetensors")
    long_file.write_bytes(model_files["good"].read_bytes())
    register_model_file(long_file)
    viewer = make_napari_viewer()
    for widget in (DetectionWidget(viewer), FineTuneWidget(viewer), ReviewWidget(viewer)):
        menu = widget.base if isinstance(widget, FineTuneWidget) else widget.model
        texts = [menu.native.itemText(i) for i in range(menu.native.count())]
        assert any(text.startswith(long_file.name) for text in texts)  # offered, by its file name
        assert widget.minimumSizeHint().width() <= widget.maximumWidth(), type(widget).__name__
