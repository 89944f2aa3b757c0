"""The fine-tuning dock widget: train on the boxes the user corrected, off the GUI thread.

Glue and layout only: the data come from :mod:`napari_clumps._layers`, the training is
:func:`napari_clumps.training.train`.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FileEdit, FloatSpinBox, Label, PushButton, Select, SpinBox
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QWidget

from ._background import (
    Inbox,
    collect_removed_layers,
    crash_line,
    model_process_for,
    qt_deleted,
    say_refused,
    stop_when_closed,
    while_workers_run,
)
from ._detect_widget import (
    DEFAULT_CHOICE,
    ModelChoiceGuard,
    WorkProgress,
    _forget,
    _listeners,
    avoid_triton_llvm_clash,
    image_layer_choices,
    model_file_choices,
    model_menu,
    preselect,
    register_model_file,
    remember_paths,
    scrolling_layout,
)
from ._layers import boxes_table, clumps_layer_of, image_name, is_boxes_layer, layer_to_galaxy_image
from ._loss_plot import TrainingPlot
from .settings import load_settings, unused_file_name
from .training import CROSS_VALIDATION_BELOW, CROSS_VALIDATION_FOLDS, TrainingOptions

#: The name offered for a new model file (made unique in the remembered folder).
DEFAULT_OUTPUT_NAME = "finetuned.safetensors"
#: The live plot is updated at most this often (ms).
PLOT_INTERVAL_MS = 500


class _Relay(QObject):
    """Carries training progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(object)


class FineTuneWidget(QWidget):
    """Fine-tune a detector on the chosen images and their clump layers."""

    def __init__(self, napari_viewer):
        super().__init__()
        avoid_triton_llvm_clash()
        self.viewer = napari_viewer
        collect_removed_layers(self.viewer)  # what the workers froze: collectable again
        self.worker = None
        self.result_path = None
        self._stop = threading.Event()
        self._bar = None
        self._part = ""  # which training of a cross-validation the progress is about
        self._offered = weakref.WeakSet()  # image layers preselected once (see preselect)
        self._inbox = Inbox(self)  # what the worker sends, handled in order (see Inbox)
        self._relay = _Relay()
        self._relay.progress.connect(self._inbox.later(self._on_progress))
        self._watched = weakref.WeakSet()  # clumps layers whose boxes changing can choose their image
        self.images = Select(
            label="reviewed images",
            choices=self._image_choices,
            allow_multiple=True,
            tooltip="images whose boxes you checked; one without boxes is a negative. Images "
            "get chosen when their clumps layer has boxes",
        )
        self.base = model_menu(
            "base model",
            self._base_choices,
            "the model to start from: packaged, a model file, or a new architecture",
        )
        defaults = TrainingOptions()
        self.epochs = SpinBox(
            label="epochs", min=1, max=500, value=defaults.epochs, tooltip="passes over the reviewed images"
        )
        self.learning_rate = FloatSpinBox(
            label="learning rate",
            min=1e-6,
            max=1e-2,
            step=1e-5,
            value=defaults.learning_rate,
            tooltip="peak of the one-cycle schedule (docs/fine-tuning.md says why the default)",
        )
        self.learning_rate.native.setDecimals(6)
        self.trainable_blocks = SpinBox(
            label="trainable blocks",
            min=-1,
            max=8,
            value=defaults.trainable_blocks,
            tooltip="encoder stages to train, deepest first; 0 = frozen, -1 = all",
        )
        self.val_fraction = FloatSpinBox(
            label="validation",
            min=0.0,
            max=0.5,
            step=0.05,
            value=defaults.val_fraction,
            tooltip=f"fraction of images held out to measure F1 and set the new model's threshold; under "
            f"{CROSS_VALIDATION_BELOW} images, {CROSS_VALIDATION_FOLDS}-fold cross-validation instead; 0: off",
        )
        folder = load_settings().finetune_folder
        self.output = FileEdit(
            label="save as",
            mode="w",
            filter="*.safetensors",
            value=unused_file_name(folder, DEFAULT_OUTPUT_NAME) if folder else DEFAULT_OUTPUT_NAME,
            tooltip="model file, written when the training ends (the best epoch so far is kept in "
            "<name>.partial.safetensors meanwhile); its folder is remembered, and the new model stays in the "
            "model menus",
        )
        self.train_button = PushButton(text="Train", tooltip="fine-tune on the reviewed images in the background")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="stop within one step; the model file stays as it was"
        )
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.progress = WorkProgress(self.status, "fine-tuning (steps of all epochs)")
        self.images.native.setMaximumHeight(110)
        self.form = Container(
            widgets=[
                self.images,
                self.base,
                self.epochs,
                self.learning_rate,
                self.trainable_blocks,
                self.val_fraction,
                self.output,
                Container(widgets=[self.train_button, self.cancel_button], layout="horizontal", labels=False),
                self.progress.bar,
                self.status,
            ]
        )
        self.plot = TrainingPlot()
        self._history_steps, self._history_f1 = [], []  # losses; (epoch, F1) pairs
        self._steps_per_epoch = 0
        self._plot_timer = QTimer(self)  # coalesces the plot's redraws (PLOT_INTERVAL_MS)
        self._plot_timer.setSingleShot(True)
        self._plot_timer.setInterval(PLOT_INTERVAL_MS)
        self._plot_timer.timeout.connect(self._redraw)
        layout = scrolling_layout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.plot.canvas)
        layout.addStretch()  # room to spare goes below the plot (its height is fixed), not into the form
        self.setMaximumWidth(440)

        self.train_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.output.changed.connect(lambda path: remember_paths(finetune_folder=Path(path).parent))
        self.viewer.layers.events.inserted.connect(self._refresh_choices)
        self.viewer.layers.events.removed.connect(self._refresh_choices)
        self._base_guard = ModelChoiceGuard(self.base)
        _listeners.append(self.base.reset_choices)
        self.destroyed.connect(lambda *_: _forget(self.base.reset_choices))
        stop_when_closed(self, self._stop_for_close)
        self._refresh_choices()

    # ------------------------------------------------------------------ choices

    def _image_choices(self, _widget=None):
        return image_layer_choices(self.viewer)

    def _refresh_choices(self, event=None):
        """Choose the images whose clumps layer has boxes, as such layers appear (Detect, a CSV)
        or get boxes (Detect again refills a layer in place)."""
        if qt_deleted(self):  # the viewer empties its layer list as it closes, after the docks are gone
            return
        for layer in self.viewer.layers:
            if is_boxes_layer(layer) and layer not in self._watched:
                self._watched.add(layer)
                layer.events.data.connect(self._refresh_choices)
        with_boxes = [
            layer
            for _, layer in image_layer_choices(self.viewer)
            if (boxes := self.clump_layer_for(layer)) is not None and len(boxes.data)
        ]
        preselect(self.images, with_boxes, self._offered)

    def _base_choices(self, _widget=None):
        from .model import BACKBONES

        return [*model_file_choices(), *((f"new: {name}", f"new:{name}") for name in BACKBONES)]

    def clump_layer_for(self, image_layer):
        """The clump Shapes layer over ``image_layer``, or None."""
        return clumps_layer_of(self.viewer.layers, image_layer)

    def training_items(self):
        """Labelled images from the chosen layers, and the notes on boxes that were repaired."""
        from .detections import CLASS_NAMES, box_array
        from .training import LabelledImage, clean_boxes

        items, notes = [], []
        for layer in self.images.value:
            image = layer_to_galaxy_image(layer)
            shapes = self.clump_layer_for(layer)
            if shapes is None or len(shapes.data) == 0:
                boxes, labels = np.zeros((0, 4)), np.zeros(0, int)
            else:
                table = boxes_table(shapes)
                boxes = box_array(table)
                labels = np.array([CLASS_NAMES.index(v) for v in table.label])
            boxes, labels, repaired = clean_boxes(boxes, labels, image.width, image.height, layer.name)
            notes.extend(repaired)
            items.append(LabelledImage(image, boxes, labels, image_name(layer)))
        return items, notes

    # ------------------------------------------------------------------ running

    def start(self):
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_info, show_warning

        if self.worker is not None:  # one training at a time: two would write the same file
            say_refused(self.status, "a training", "Cancel")
            return
        if not self.images.value:
            show_warning("napari-clumps: choose the images you reviewed")
            return
        try:
            items, notes = self.training_items()
        except ValueError as error:
            show_warning(f"napari-clumps: {error}")
            return
        for note in notes:
            show_info(f"napari-clumps: {note}")
        n_boxes = sum(len(it.boxes) for it in items)
        if n_boxes == 0:  # negatives alone teach only "no clump anywhere"
            message = (
                f"no boxes in the {len(items)} chosen image(s): run Detect and correct its boxes, or draw "
                "boxes, first (images without boxes train as negatives beside images with boxes)"
            )
            show_warning(f"napari-clumps: {message}")
            self.status.value = message
            return
        if self.val_fraction.value > 0 and len(items) == 1:
            show_info("napari-clumps: one image: no validation; the new model keeps its base model's score threshold")
        elif self.val_fraction.value > 0 and len(items) < CROSS_VALIDATION_BELOW:
            show_info(
                f"napari-clumps: {len(items)} images: validated by {CROSS_VALIDATION_FOLDS}-fold cross-validation "
                f"({CROSS_VALIDATION_FOLDS + 1} trainings), which also calibrates the score threshold"
            )
        options = TrainingOptions(
            epochs=self.epochs.value,
            learning_rate=self.learning_rate.value,
            trainable_blocks=None if self.trainable_blocks.value < 0 else self.trainable_blocks.value,
            val_fraction=self.val_fraction.value,
        )
        self._stop.clear()
        self._history_steps, self._history_f1, self._part = [], [], ""
        self._steps_per_epoch = 0
        self.plot.start(options.epochs)  # drawn now, before the worker starts
        self.train_button.enabled, self.cancel_button.enabled = False, True
        negatives = sum(len(it.boxes) == 0 for it in items)
        self.progress.busy(
            f"training on {len(items)} images ({n_boxes} boxes, {negatives} negatives): loading the base model "
            "(the first run in a session also starts PyTorch)..."
        )
        self.worker = create_worker(
            _train_in_thread,
            items,
            self.base.value,
            options,
            Path(self.output.value),
            self._relay.progress.emit,
            self._stop.is_set,
            _connect={
                "returned": self._inbox.later(self._done),
                "errored": self._inbox.later(self._crashed),
                "finished": self._inbox.later(self._finished),
            },
        )

    def cancel(self):
        if self.worker is not None:
            self._stop.set()
            self.status.value = "cancelling after this step..."

    def _stop_for_close(self):
        """The widget is being deleted (its viewer closed): the training stops within one step
        (the file keeps the last good model) and nothing it sends is shown (:class:`Inbox`).
        napari's activity bar is napari's, not the widget's: closed here, since _finished won't run."""
        self._stop.set()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _on_progress(self, progress):
        from napari.utils import progress as napari_progress

        if isinstance(progress, str):  # what the worker is doing before the first step
            self.status.value = progress
            return
        if progress.kind == "note":  # the trainer had to change course (e.g. out of GPU memory)
            from napari.utils.notifications import show_info

            show_info(f"napari-clumps: {progress.note}")
            self.status.value = progress.note
            return
        if progress.part != self._part:  # the next training of a cross-validation: a new bar and plot
            self._part = progress.part
            self._history_steps, self._history_f1 = [], []
            self.plot.start(progress.epochs)
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if progress.kind == "step":
            if self._bar is None:
                desc = f"Fine-tuning: {progress.part}" if progress.part else "Fine-tuning"
                self._bar = napari_progress(total=progress.steps * progress.epochs, desc=desc)
            self._bar.update(1)
            done = (progress.epoch - 1) * progress.steps + progress.step
            self.progress.count(done, progress.steps * progress.epochs)
            self._steps_per_epoch = progress.steps
            if not self._history_f1:  # until the first epoch's line, which then stays
                self.status.value = (
                    f"epoch {progress.epoch}/{progress.epochs}, step {progress.step}/{progress.steps}: "
                    f"loss {progress.loss:.3f}"
                )
            self._history_steps.append(progress.loss)
            self._redraw_soon()
        else:
            self._history_f1.append((progress.epoch, progress.val_f1))
            f1 = "" if progress.val_f1 is None else f", validation F1 {progress.val_f1:.3f}"
            part = f"{progress.part}, " if progress.part else ""
            self.status.value = f"{part}epoch {progress.epoch}/{progress.epochs}: loss {progress.loss:.3f}{f1}"
            self._redraw_soon()

    def _done(self, outcome):
        from napari.utils.notifications import show_error, show_info

        kind, message, path = outcome
        if kind == "ok":
            register_model_file(path)
            self.result_path = Path(path)
            show_info(f"napari-clumps: {message}")
        elif kind == "error":
            show_error(f"napari-clumps: training failed: {message}")
            if path is not None:  # the base model file did not load: back to the one before it
                self._base_guard.refuse(path)
                message = f"{message}; the base model is back to {self.base.current_choice}"
        self.status.value = message

    def _crashed(self, error):
        """An unexpected error (a bug, or a resource problem): say it, keep the widget usable."""
        from napari.utils.notifications import show_error

        self.status.value = f"training stopped: {crash_line(error)}"
        show_error(f"napari-clumps: {self.status.value}")

    def _finished(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.worker = None
        self.progress.done()
        self._plot_timer.stop()
        self._redraw()  # the whole run, whatever the last throttled draw showed
        self.train_button.enabled, self.cancel_button.enabled = True, False

    # ------------------------------------------------------------------ plot

    def _redraw_soon(self):
        if not self._plot_timer.isActive():
            self._plot_timer.start()

    def _redraw(self):
        self.plot.show(self._history_steps, self._history_f1, self._steps_per_epoch)


#: What a fine-tuning says while it waits for the session's other one (one at a time: they share
#: the fine-tuning process, and a GPU or 2 cores would not train two faster than one after the other).
WAITING_FOR_THE_OTHER_FINE_TUNING = "waiting for another fine-tuning of this session to end (one runs at a time)..."


def _train_in_thread(items, base, options, out, report, should_stop):
    """Worker body: the outcome of :func:`napari_clumps.model_process.fine_tuning_outcome`
    (``(kind, message, path)``), trained in the session's fine-tuning process, or in this thread
    where there is none (:func:`~napari_clumps._background.model_process_for`); ``report`` gets
    its progress. ``base``: the base model menu's choice."""
    from .model_process import fine_tuning_outcome

    model = base.removeprefix("new:") if base.startswith("new:") else (None if base == DEFAULT_CHOICE else base)
    run = dict(items=items, model=model, options=options, out=out)
    process = model_process_for("fine-tune")
    if process is None:
        with while_workers_run():
            return fine_tuning_outcome(report=report, should_stop=should_stop, **run)
    if process.runs_ahead():  # the Fine-tune widget and the review queue share the process
        report(WAITING_FOR_THE_OTHER_FINE_TUNING)
    for kind, *payload in process.items(should_stop, **run):
        if kind == "report":
            report(payload[0])
        elif kind == "returned":
            return payload[0]
        else:  # "crash": an unexpected error, ended as one in this thread would be
            raise payload[0]
    raise RuntimeError("the fine-tuning process sent no outcome")
