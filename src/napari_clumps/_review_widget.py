"""The review queue dock widget: one galaxy at a time, keys to accept, fix and move on.

A view of :class:`napari_clumps.review.ReviewSession`, which holds the state and writes every
change to the labels CSV at once; this module only loads layers, binds keys and forwards edits.
Images come in through the reader glue (:func:`napari_clumps._layers.image_layers`) and boxes
through :func:`napari_clumps._layers.detections_layer`, so they look as in the detection widget.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton
from qtpy.QtWidgets import QLabel, QSizePolicy, QWidget

from ._background import (
    Inbox,
    busy_message,
    collect_removed_layers,
    crash_line,
    model_items,
    stop_when_closed,
)
from ._detect_widget import (
    DEFAULT_CHOICE,
    ModelChoiceGuard,
    _forget,
    _listeners,
    avoid_triton_llvm_clash,
    model_file_choices,
    model_menu,
    register_model_file,
    remember_paths,
    restore_paths,
    scrolling_layout,
)
from ._layers import (
    REVIEW_LAYER_KEY,
    boxes_table,
    clumps_layer_name,
    detections_layer,
    display_transform,
    hand_box_features,
    image_layers,
    mark_drawn_by_hand,
    replace_boxes,
)
from ._sky_readout import show_sky_position
from ._train_widget import _Relay, _train_in_thread
from .detections import HAND_MODEL, REVIEWED
from .model_process import ModelRefused
from .settings import unused_file_name
from .training import TrainingOptions

#: Images kept loaded (the current one and the last ones visited); others are unloaded.
KEEP_LOADED = 3


#: What a review worker yields in place of a result when it failed: a model or device error
#: (a message, or :class:`ModelRefused`), or an unexpected exception.
WORKER_FAILURES = (str, Exception, ModelRefused)


#: Key -> (widget method, what it does). Bound on the viewer and on each boxes layer, where they
#: win over napari's own Shapes keys (``p`` polygon, ``b`` send to back, ``a`` select all).
#: Boxes are deleted with napari's own Delete / Backspace / remove button: those edits reach
#: the session through the layer's data events.
KEYS = {
    "n": ("next_image", "next image"),
    "p": ("previous_image", "previous image"),
    "a": ("accept", "accept the boxes as they are, go to the next unreviewed image"),
    "0": ("no_clumps", "no clumps in this image (reviewed, zero boxes), go on"),
    "c": ("toggle_label", "selected box(es): clump <-> odd clump"),
    "b": ("add_box_at_cursor", "add a box of the image's typical size at the cursor"),
    "u": ("undo", "undo the last change (several levels)"),
    "Control-Z": ("undo", "undo, as u"),
}


class ReviewWidget(QWidget):
    """Go through a folder of galaxies, check each one's boxes; every change is saved at once."""

    def __init__(self, napari_viewer):
        super().__init__()
        avoid_triton_llvm_clash()
        self.viewer = napari_viewer
        collect_removed_layers(self.viewer)  # what the workers froze: collectable again
        show_sky_position(self.viewer)  # RA/Dec under the cursor
        self.session = None
        self._loaded: dict[str, list] = {}  # CSV name -> [image layers..., boxes layer], most recent last
        self._updating_layer = False  # True while the widget itself rewrites a boxes layer
        self._unloading = False  # True while the widget itself removes an image's layers
        self.folder = FileEdit(label="images", mode="d", tooltip="folder of galaxy images (searched recursively)")
        self.labels_csv = FileEdit(
            label="labels CSV",
            mode="w",
            filter="*.csv",
            value="labels.csv",
            tooltip="written at every change; open the same file again to resume",
        )
        restore_paths(review_images=self.folder, review_labels_csv=self.labels_csv)  # as last opened
        self.open_button = PushButton(
            text="Open queue", tooltip="open the images with the labels CSV; an existing CSV resumes where you stopped"
        )
        self.previous_button = PushButton(text="< Previous (p)", tooltip=KEYS["p"][1])
        self.next_button = PushButton(text="Next (n) >", tooltip=KEYS["n"][1])
        self.accept_button = PushButton(text="Accept (a)", tooltip=KEYS["a"][1])
        self.no_clumps_button = PushButton(text="No clumps (0)", tooltip=KEYS["0"][1])
        self.toggle_button = PushButton(text="Clump / odd (c)", tooltip=KEYS["c"][1])
        self.add_button = PushButton(text="Add box at cursor (b)", tooltip=KEYS["b"][1])
        self.undo_button = PushButton(text="Undo (u)", tooltip=KEYS["u"][1])
        self.model = model_menu(
            "model",
            lambda _widget: model_file_choices(),
            "the packaged default model or a model file (add files in the Detect clumps widget)",
        )
        self.detect_button = PushButton(
            text="Detect unreviewed",
            tooltip="run the model on the unreviewed images that have no hand-made boxes (at the model's "
            "recommended threshold); reviewed images are never touched",
        )
        self.order_button = PushButton(
            text="Order by what teaches most",
            tooltip="rank the unreviewed images with the chosen model so that the ones whose correction "
            "teaches it most come first: boxes with scores near its threshold, and boxes a mirrored view "
            "of the image disagrees on (docs/active-learning.md); next and accept then follow that order",
        )
        self.fine_tune_button = PushButton(
            text="Fine-tune on reviewed, re-detect the rest",
            tooltip="train the chosen model on the reviewed images (cross-validated below 20 images, which "
            "calibrates its threshold), save it next to the labels CSV, then detect again in the unreviewed "
            "images without hand-made boxes; reviewed images are never touched",
        )
        self.stop_button = PushButton(text="Stop", tooltip="stop the fine-tuning or detection that is running")
        self.worker = None
        self._after_worker = None  # what to do once the running worker has finished
        self.fine_tuned_path = None  # the last model fine-tuned here
        self._model_note = ""  # how it scored: shown under the queue's progress until the next one
        self._priorities = []  # the ranking's rows as they come (active learning)
        self._boxes_before = {}  # each image's boxes when the running detection began: only unchanged ones are filled
        self._boxes_at_fine_tuning = {}
        self._stopped_note = ""  # the status line once a stopped detection or ranking has ended
        self.training_options = TrainingOptions()  # the library's fine-tuning defaults (docs/fine-tuning.md)
        self._stop_requested = threading.Event()
        self._inbox = Inbox(self)  # what the workers send, handled in order (see Inbox)
        self._relay = _Relay()
        self._relay.progress.connect(self._inbox.later(self._on_training_progress))
        self.status = Label(value="choose a folder and a labels CSV, then Open queue")
        self.status.native.setWordWrap(True)
        keys = QLabel("keys (over the image):\n" + "\n".join(f"  {key}: {text}" for key, (_, text) in KEYS.items()))
        keys.setWordWrap(True)
        self.form = Container(
            widgets=[
                self.folder,
                self.labels_csv,
                self.open_button,
                Container(widgets=[self.previous_button, self.next_button], layout="horizontal", labels=False),
                Container(widgets=[self.accept_button, self.no_clumps_button], layout="horizontal", labels=False),
                Container(widgets=[self.toggle_button, self.add_button], layout="horizontal", labels=False),
                self.undo_button,
                self.model,
                self.detect_button,
                self.order_button,
                self.fine_tune_button,
                self.stop_button,
            ]
        )
        layout = scrolling_layout(self)
        layout.addWidget(self.form.native)
        # outside the form: word-wrapped labels in a form row get squeezed and cut off
        layout.addWidget(self.status.native)
        # as wide as the dock: a word-wrapped label otherwise wraps at the width of its first text
        self.status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        layout.addWidget(keys)
        layout.addStretch()
        self.setMaximumWidth(440)

        self.open_button.changed.connect(lambda: self.open_queue(self.folder.value, self.labels_csv.value))
        self.previous_button.changed.connect(self.previous_image)
        self.next_button.changed.connect(self.next_image)
        self.accept_button.changed.connect(self.accept)
        self.no_clumps_button.changed.connect(self.no_clumps)
        self.toggle_button.changed.connect(self.toggle_label)
        self.add_button.changed.connect(self.add_box_at_cursor)
        self.undo_button.changed.connect(self.undo)
        self.detect_button.changed.connect(self.detect_unreviewed)
        self.fine_tune_button.changed.connect(self.fine_tune_on_reviewed)
        self.order_button.changed.connect(self.order_by_priority)
        self.stop_button.changed.connect(self.stop)
        self._set_enabled(False)
        self.viewer.layers.events.removed.connect(self._layer_removed)
        for key, (method, _) in KEYS.items():
            self.viewer.bind_key(key, self._key_action(method), overwrite=True)
        viewer = self.viewer  # not self: the slot runs while the widget is being deleted
        self.destroyed.connect(lambda *_: _unbind_keys(viewer))
        # model files registered later (a fine-tune, the detection widget) become choices here too
        _listeners.append(self.model.reset_choices)
        self.destroyed.connect(lambda *_, reset=self.model.reset_choices: _forget(reset))
        self._model_guard = ModelChoiceGuard(self.model)  # a broken file: refused, the model before it kept
        stop_when_closed(self, self._stop_for_close)

    # ------------------------------------------------------------------ keys

    def _key_action(self, method: str):
        # the viewer passes itself (or the layer) to a key binding; the action needs neither
        def action(_viewer_or_layer=None):
            if self.session is not None:
                getattr(self, method)()

        action.__name__ = method
        return action

    def _set_enabled(self, enabled: bool):
        for button in (
            self.previous_button,
            self.next_button,
            self.accept_button,
            self.no_clumps_button,
            self.toggle_button,
            self.add_button,
            self.undo_button,
            self.detect_button,
            self.order_button,
            self.fine_tune_button,
        ):
            button.enabled = enabled and not self.busy
        self.open_button.enabled = not self.busy  # a run's results are for the queue it started on
        self.stop_button.enabled = self.busy

    @property
    def busy(self) -> bool:
        """A detection or fine-tuning is running (one at a time)."""
        return self.worker is not None

    def _refuse_if_busy(self, what: str) -> bool:
        """Whether to refuse starting ``what``: one worker at a time, whatever asked (a button is
        disabled while one runs, but a key, a script or a double click that got through is not)."""
        if self.busy:
            self._update_status(busy_message("a detection, ranking or fine-tuning", "Stop") + f" ({what} not started)")
        return self.busy

    def _stop_for_close(self):
        """The widget is being deleted (its viewer closed): the worker stops at its next check and
        nothing it sends is saved or shown. Python state only: the Qt side is going."""
        self._after_worker = None
        self._stop_requested.set()
        if hasattr(self.worker, "quit"):
            self.worker.quit()

    # ------------------------------------------------------------------ opening

    def open_queue(self, images, labels_csv):
        """Start (or resume, when ``labels_csv`` exists) a review of ``images`` (a folder, files)."""
        from napari.utils.notifications import show_error

        from .detections import DetectionsFileError
        from .review import ReviewSession

        if self._refuse_if_busy("another queue"):
            return None
        try:
            session = ReviewSession(images, labels_csv)
        except (ValueError, DetectionsFileError) as error:
            show_error(f"napari-clumps: {error}")
            return None
        for name in list(self._loaded):
            self._unload(name)
        self.session = session
        remember_paths(review_images=images, review_labels_csv=labels_csv)
        self._set_enabled(True)
        self.show_current()
        return session

    # ------------------------------------------------------------------ layers

    def current_layers(self) -> list:
        return self._loaded.get(self.session.item.name, [])

    def boxes_layer(self):
        """The current image's boxes (Shapes) layer."""
        layers = self.current_layers()
        return layers[-1] if layers else None

    def show_current(self):
        """Load the current image if needed, show only its layers, fit the view."""
        from napari.utils.notifications import show_error

        from .io import ImageReadError

        item = self.session.item
        note = ""
        if item.name in self._loaded:  # most recently used last
            self._loaded[item.name] = self._loaded.pop(item.name)
        else:
            try:
                self._load(item)
            except ImageReadError as error:  # shown as nothing; n, p and 0 still work
                show_error(f"napari-clumps: {error}")
                note = f"cannot read: {error}"
        for name, layers in self._loaded.items():
            for layer in layers:
                # raw FITS bands stay hidden unless the user shows them; the composite and boxes show
                layer.visible = name == item.name and "band_name" not in layer.metadata
        while len(self._loaded) > KEEP_LOADED:
            self._unload(next(iter(self._loaded)))
        boxes = self.boxes_layer()
        if boxes is not None:
            self.viewer.layers.selection.active = boxes
            if boxes.mode == "pan_zoom":
                boxes.mode = "select"  # a click selects a box (for c, Delete); set after the layer is shown
            self.viewer.reset_view()
        self._update_status(note)

    def _load(self, item):
        from napari.layers import Layer

        from .io import read_image

        galaxy = read_image(item.path)
        self.session.describe_image(item.name, galaxy)
        layers = [Layer.create(*data) for data in image_layers(galaxy)]
        data, kwargs, kind = detections_layer(
            self._table(item),
            image_name=item.name,
            transform=display_transform(galaxy.is_fits, galaxy.height),
            wcs=galaxy.wcs,
            height=galaxy.height,
            name=clumps_layer_name(Path(item.name).name),
        )
        boxes = Layer.create(data, kwargs, kind)
        layers.append(boxes)
        for layer in layers:
            layer.metadata[REVIEW_LAYER_KEY] = item.name
            self.viewer.layers.append(layer)
        boxes.events.data.connect(lambda event, layer=boxes: self._layer_edited(layer, event))
        boxes.events.features.connect(lambda event, layer=boxes: self._layer_edited(layer, event))
        for key, (method, _) in KEYS.items():
            boxes.bind_key(key, self._key_action(method), overwrite=True)
        self._loaded[item.name] = layers

    def _layer_removed(self, event):
        """The user removed one of an image's layers: forget the image's layers (loaded again when
        the image is shown again), so that no action edits a layer that is gone."""
        name = event.value.metadata.get(REVIEW_LAYER_KEY) if hasattr(event.value, "metadata") else None
        if name in self._loaded and not self._unloading:
            self._unload(name)

    def _unload(self, name: str):
        self._unloading = True
        try:
            for layer in self._loaded.pop(name, []):
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
        finally:
            self._unloading = False

    @staticmethod
    def _table(item):
        from .detections import detections_frame

        return detections_frame(item.name, item.boxes, item.labels, item.scores, wcs=item.wcs, model=item.models)

    def _refill(self, name: str):
        """Rewrite an image's boxes layer from the session (after a change made here, or an undo)."""
        layers = self._loaded.get(name)
        if not layers:
            return
        layer, item = layers[-1], self.session.items[self.session.index_of(name)]
        data, kwargs, _ = detections_layer(
            self._table(item), image_name=name, transform={}, wcs=item.wcs, height=item.height
        )
        self._updating_layer = True
        try:
            replace_boxes(layer, data, kwargs["features"], kwargs["edge_color"])
        finally:
            self._updating_layer = False

    def _layer_edited(self, layer, event):
        """A box drawn, moved, resized or deleted with napari's own tools: tell the session."""
        if self._updating_layer or self.session is None:
            return
        action = getattr(event, "action", None)
        if action is not None and str(action) not in ("added", "removed", "changed"):
            return  # "adding", "changing" ...: the edit is not finished
        if len(layer.features) != len(layer.data):
            return  # mid-update: shapes and features not yet in step
        name = layer.metadata[REVIEW_LAYER_KEY]
        known = self.session.items[self.session.index_of(name)].n_boxes
        if str(action) == "added" and len(layer.data) > known:
            self._mark_drawn_by_hand(layer, range(known, len(layer.data)))
        self.session.set_boxes(name, boxes_table(layer))
        self._update_status()

    def _mark_drawn_by_hand(self, layer, indices):
        """New boxes are hand boxes (score 1, clump; ``c`` makes them odd). napari gives a new
        shape the features of the last selected one, which may be a model's box."""
        self._updating_layer = True
        try:
            layer.feature_defaults = hand_box_features()
            mark_drawn_by_hand(layer, indices)
        finally:
            self._updating_layer = False

    # ------------------------------------------------------------------ actions (buttons and keys)

    def next_image(self):
        self.session.next()
        self.show_current()

    def previous_image(self):
        self.session.previous()
        self.show_current()

    def accept(self):
        self.session.accept()
        self.session.next_unreviewed()
        self.show_current()

    def no_clumps(self):
        name = self.session.item.name
        self.session.mark_no_clumps()
        self._refill(name)
        self.session.next_unreviewed()
        self.show_current()

    def toggle_label(self):
        layer = self.boxes_layer()
        selected = sorted(layer.selected_data) if layer is not None else []
        if not selected:
            self._update_status("select a box first (click it in select mode), then press c")
            return
        self.session.toggle_label(selected)
        self._refill(self.session.item.name)
        layer.selected_data = set(selected)
        self._update_status()

    def add_box_at_cursor(self):
        """A box of the image's typical size centred where the cursor is (a click, not a drag)."""
        from .pixels import napari_rectangles_to_boxes

        layer = self.boxes_layer()
        if layer is None:
            return
        row, col = np.asarray(layer.world_to_data(self.viewer.cursor.position), float)[-2:]
        x, y = napari_rectangles_to_boxes([np.array([[row, col]])])[0][:2]
        image = self.current_layers()[0]  # the composite: its metadata has the FITS header (PSF) and WCS
        shape = SimpleNamespace(
            header=image.metadata.get("header"), wcs=image.metadata.get("wcs"), width=image.data.shape[1]
        )
        self.session.add_box(x, y, self.session.typical_box_side(galaxy=shape))
        self._refill(self.session.item.name)
        self._update_status()

    def undo(self):
        if not self.session.undo():
            self._update_status("nothing to undo")
            return
        self._refill(self.session.item.name)
        self.show_current()

    # ------------------------------------------------------------------ detection

    @staticmethod
    def _detectable(item) -> bool:
        """Unreviewed and without hand-made boxes: the model's boxes would lose nobody's work."""
        return item.status != REVIEWED and HAND_MODEL not in item.models

    def detect_unreviewed(self, boxes_before: dict | None = None):
        """Run the model over the detectable images in a worker thread; fill their boxes as they
        come, each only if its boxes are still as they were when the run began (``boxes_before``:
        as they were at an earlier moment, the start of a fine-tuning that led here): the user
        reviews and corrects while the run goes on, and a correction is never written over."""
        from napari.qt.threading import create_worker

        if self._refuse_if_busy("detection"):
            return None
        if boxes_before is None:
            boxes_before = self._boxes_now()
        self._boxes_before = boxes_before
        detectable = [item for item in self.session.items if self._detectable(item)]
        targets = [item for item in detectable if self._unchanged(item)]
        changed = len(detectable) - len(targets)  # since the fine-tuning before this began
        kept = f" (kept your changes to {changed} image(s) made during the fine-tuning)" if changed else ""
        if not targets:
            self._update_status(f"no unreviewed image without hand-made boxes to detect in{kept}")
            return None
        self._stop_requested.clear()
        self._update_status(f"loading the model to detect in {len(targets)} unreviewed image(s)...{kept}")

        self.worker = create_worker(  # starts at once, since handlers are connected here
            _per_image_in_thread,
            "detections",
            [item.path for item in targets],
            [item.name for item in targets],
            self._model_choice(),
            should_stop=self._stop_requested.is_set,  # Stop, or the viewer closed: no more images
            _progress={"total": len(targets), "desc": "Detecting clumps"},
            _connect={
                "yielded": self._inbox.later(self._on_detected),
                "finished": self._inbox.later(self._worker_finished),
            },
        )
        self._set_enabled(True)
        return self.worker

    def _on_detected(self, result):
        if isinstance(result, WORKER_FAILURES):
            self._worker_failed("detection failed", result)
            return
        if result.error:
            self._update_status(f"{result.name}: {result.error}")
            return
        item = self.session.items[self.session.index_of(result.name)]
        if self._detectable(item) and self._unchanged(item):
            self.session.set_boxes(result.name, result.table)
            self._refill(result.name)
            self._update_status()
        else:  # reviewed or corrected while the run went on
            from napari.utils.notifications import show_warning

            kept = f"kept your review of {result.name}: changed while the detection ran"
            show_warning(f"napari-clumps: {kept}")
            self._update_status(kept)

    def _boxes_now(self) -> dict:
        """Each image's boxes and status as they are now (copies), by name."""
        return {item.name: item.copy() for item in self.session.items}

    def _unchanged(self, item) -> bool:
        """Whether ``item``'s boxes and status are as they were when the running detection (or the
        fine-tuning before it) began."""
        before = self._boxes_before.get(item.name)
        return before is not None and item.same_state(before)

    def _model_choice(self):
        """The chosen model as the core takes it: None for the packaged default, else a file."""
        return None if self.model.value == DEFAULT_CHOICE else self.model.value

    def _worker_failed(self, what: str, error) -> None:
        """Say why the running worker ended early (it ends by itself; :meth:`_worker_finished`
        then makes the widget ready again)."""
        from napari.utils.notifications import show_error

        if isinstance(error, ModelRefused):  # back to the model before it; the file is forgotten
            self._model_guard.refuse(error.model)
            line = f"{error.message}; the model is back to {self.model.current_choice}"
        else:
            line = crash_line(error) if isinstance(error, Exception) else str(error)
        show_error(f"napari-clumps: {what}: {line}")
        self._update_status(f"{what}: {line}")

    def _worker_finished(self):
        self.worker = None
        self._set_enabled(self.session is not None)
        if self._stopped_note and self.session is not None:  # stopped: say so in place of "stopping..."
            self._update_status(self._stopped_note)
        self._stopped_note = ""
        then, self._after_worker = self._after_worker, None
        if then is not None:
            then()

    def stop(self):
        """Stop the running fine-tuning (within one training step), detection or ranking (after the
        current images); a stopped ranking leaves the queue's order as it was."""
        if self.worker is None:
            return
        from napari.qt.threading import GeneratorWorker

        ranking = self._after_worker == self._apply_ranking
        self._after_worker = None  # no partial ranking applied, no detection after a stopped fine-tuning
        self._stop_requested.set()
        if isinstance(self.worker, GeneratorWorker):  # a detection or a ranking
            self.worker.quit()
            self._stopped_note = (
                "ranking stopped: the queue's order is as it was"
                if ranking
                else "detection stopped: the images done before Stop have their new boxes"
            )
        # a fine-tuning stops at its next step by itself and says what became of the model file; a
        # quit() would make superqt drop that answer
        self._update_status("stopping...")

    # ------------------------------------------------------------------ active learning

    def order_by_priority(self):
        """Rank the unreviewed images with the chosen model in a worker thread
        (:mod:`napari_clumps.active`); when done, the queue follows the ranking from its first image."""
        from napari.qt.threading import create_worker

        if self._refuse_if_busy("ranking"):
            return None
        waiting = [item for item in self.session.items if item.status != REVIEWED]
        if not waiting:
            self._update_status("every image is reviewed: nothing to order")
            return None
        self._stop_requested.clear()
        self._priorities = []
        self._update_status(f"loading the model to rank {len(waiting)} unreviewed image(s)...")

        self.worker = create_worker(
            _per_image_in_thread,
            "priorities",
            [item.path for item in waiting],
            [item.name for item in waiting],
            self._model_choice(),
            should_stop=self._stop_requested.is_set,
            _progress={"total": len(waiting), "desc": "Ranking for review"},
            _connect={
                "yielded": self._inbox.later(self._on_ranked),
                "finished": self._inbox.later(self._worker_finished),
            },
        )
        self._after_worker = self._apply_ranking
        self._set_enabled(True)
        return self.worker

    def _on_ranked(self, row):
        if isinstance(row, WORKER_FAILURES):
            self._after_worker = None  # a ranking cut short is not applied
            self._worker_failed("ranking failed", row)
            return
        self._priorities.append(row)
        self._update_status(f"ranking: {len(self._priorities)} image(s) done, last {row['image']}")

    def _apply_ranking(self):
        from .active import ranking_table

        if not self._priorities:
            self._update_status("no ranking (stopped or failed): the queue keeps its order")
            return
        table = ranking_table(self._priorities)
        self.session.set_ranking(table)
        self.session.go_to(self.session.index_of(table.image.iloc[0]))
        self.show_current()
        self._update_status(f"ranked {len(table)} image(s): the most useful to correct come first")

    # ------------------------------------------------------------------ fine-tuning

    def model_output_path(self) -> Path:
        """Where the next fine-tuned model goes: next to the labels CSV, never over an earlier one."""
        csv = self.session.labels_csv
        return unused_file_name(csv.parent, f"{csv.stem}-model.safetensors")

    def fine_tune_on_reviewed(self):
        """Train the chosen model on the reviewed images in a worker thread; when it is saved, select
        it and detect again in the unreviewed images (:meth:`detect_unreviewed`)."""
        from napari.qt.threading import create_worker

        if self._refuse_if_busy("fine-tuning"):
            return None
        reviews = self.session.reviewed_items()
        n_boxes = sum(review.n_boxes for review in reviews)
        if not n_boxes:  # negatives alone teach only "no clump anywhere"
            self._update_status(
                f"nothing to learn from yet: {len(reviews)} reviewed image(s), no boxes among them; review "
                "images with clumps first (a for accept, 0 for none)"
            )
            return None
        self._stop_requested.clear()
        self._boxes_at_fine_tuning = self._boxes_now()  # the detection after it keeps what changes meanwhile
        out = self.model_output_path()
        self._update_status(
            f"fine-tuning on {len(reviews)} reviewed image(s) ({n_boxes} boxes): reading them and loading the model..."
        )
        self.worker = create_worker(
            _fine_tune_in_thread,
            reviews,
            self.model.value,
            self.training_options,
            out,
            self._relay.progress.emit,
            self._stop_requested.is_set,
            _connect={
                "returned": self._inbox.later(self._fine_tuned),
                "errored": self._inbox.later(lambda error: self._worker_failed("fine-tuning stopped", error)),
                "finished": self._inbox.later(self._worker_finished),
            },
        )
        self._set_enabled(True)
        return self.worker

    def _on_training_progress(self, progress):
        if isinstance(progress, str):  # what the worker is doing before the first step
            self._update_status(f"fine-tuning: {progress}")
        elif progress.kind == "epoch":
            part = f"{progress.part}, " if progress.part else ""
            epoch = f"epoch {progress.epoch}/{progress.epochs}, loss {progress.loss:.3f}"
            self._update_status(f"fine-tuning: {part}{epoch}")

    def _fine_tuned(self, outcome):
        from napari.utils.notifications import show_error, show_info

        kind, message, path = outcome
        if kind != "ok":
            if kind == "error":
                show_error(f"napari-clumps: fine-tuning failed: {message}")
            self._update_status(message)
            return
        register_model_file(path)  # offered in every model menu (by its absolute path); selected here
        self.model.value = str(Path(path).resolve())
        self.fine_tuned_path = Path(path)
        self._model_note = f"model: {message}"
        show_info(f"napari-clumps: {message}")
        self._update_status()
        if not self._stop_requested.is_set():  # Stop pressed as it was saved: the model is kept, no detection
            self._after_worker = self._detect_after_fine_tuning  # once this worker has finished

    def _detect_after_fine_tuning(self):
        if self.session is not None:  # its status line says what it detects in, and what it keeps
            self.detect_unreviewed(self._boxes_at_fine_tuning)

    # ------------------------------------------------------------------ status

    def _update_status(self, note: str = ""):
        reviewed, total = self.session.progress
        item = self.session.item
        state = "reviewed" if item.status == REVIEWED else "not reviewed"
        why = f"rank {item.rank}: {item.reason}" if item.rank is not None and item.status != REVIEWED else ""
        progress = f"reviewed {reviewed} of {total}: {item.name} ({state}, {item.n_boxes} boxes)"
        lines = [progress, why, note, self._model_note]
        self.status.value = "\n".join(line for line in lines if line)


def _fine_tune_in_thread(reviews, base, options, out, report, should_stop):
    """Worker body: ``(kind, message, path)`` as the Fine-tune widget's (the same training)."""
    from .review import training_images

    items, _notes = training_images(reviews)  # the notes say which boxes were clipped: as in the CSV
    return _train_in_thread(items, base, options, out, report, should_stop)


def _per_image_in_thread(per_image: str, paths, names, model, should_stop):
    """Worker body: the items of :func:`napari_clumps.model_process.per_image_items`, made in the
    session's review process, or in this thread where there is none
    (:func:`~napari_clumps._background.model_process_for`)."""
    from .model_process import per_image_items

    yield from model_items(
        "review", per_image_items, should_stop, per_image=per_image, paths=paths, names=names, model=model
    )


def _unbind_keys(viewer) -> None:
    for key in KEYS:
        try:
            viewer.bind_key(key, None)
        except (KeyError, RuntimeError):  # already unbound, or the viewer is gone
            pass
