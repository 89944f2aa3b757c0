"""The detection dock widget: pick images and a model, run off the GUI thread, edit, export.

Glue and layout only: detection is :func:`napari_clumps.inference.iter_detections`, boxes <->
layers is :mod:`napari_clumps._layers`, the CSV is :mod:`napari_clumps.detections`.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Select,
)
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

from ._background import (
    Inbox,
    collect_removed_layers,
    crash_line,
    model_items,
    qt_deleted,
    say_refused,
    stop_when_closed,
)
from ._commands import show_raw_bands
from ._layers import (
    apply_score_threshold,
    boxes_table,
    clumps_layer_of,
    detections_layer_over,
    hand_box_features,
    holds_users_boxes,
    image_name,
    is_boxes_layer,
    is_review_layer,
    label_colours,
    layer_to_galaxy_image,
    mark_loaded_from,
    note_user_edit,
    refill_boxes_layer,
    selection_kept,
    show_with_image,
    tie_to_image,
    with_score_threshold,
)
from ._sky_readout import show_sky_position
from .detections import LABELS
from .export import CATALOGUE_SUFFIXES
from .inference import DEFAULT_NMS_IOU
from .model import DEFAULT_MODEL, DEVICES, PAPER_SCORE_THRESHOLD
from .scale import DEFAULT_SEEING_ARCSEC
from .settings import forget_model_file, load_settings, remember_model_file, update_settings

#: Lowest score the widget keeps, so that the slider can go down without re-running the model.
SCORE_FLOOR = 0.05
DEFAULT_CHOICE = "default (packaged model)"

#: Model menus to refresh when a model file is added (the widgets' ``reset_choices``).
_listeners: list = []


#: The save dialog's filter: every catalogue format (the format is the file name's extension).
CATALOGUE_FILTER = "Detections (" + " ".join(f"*{suffix}" for suffix in CATALOGUE_SUFFIXES) + ")"


def register_model_file(path) -> None:
    """Make a model file selectable in every model menu, now and after a restart (the settings
    file remembers it: :func:`napari_clumps.settings.remember_model_file`)."""
    _saving(remember_model_file, path)
    _refresh_model_menus()


def unregister_model_file(path) -> None:
    """Take a (broken) model file out of every model menu and the remembered model files."""
    _saving(forget_model_file, path)
    _refresh_model_menus()


def _refresh_model_menus() -> None:
    for listener in list(_listeners):
        try:
            listener()
        except RuntimeError:  # its widget was closed and deleted
            _listeners.remove(listener)


def model_choice_problem(choice) -> str | None:
    """Why a model menu choice cannot be used, or None. Only a look at the file's header and
    metadata (:func:`napari_clumps.model.check_model_file`: milliseconds, no torch), since it runs
    on the GUI thread when a model is chosen; what only the weights tell (NaN values, tensors of
    another architecture) fails when the model loads, in the worker (:meth:`ModelChoiceGuard.refuse`).
    The packaged default and new architectures (``new:NAME``) are not files: None."""
    from .model import ModelError, check_model_file

    if not choice or choice == DEFAULT_CHOICE or str(choice).startswith("new:"):
        return None
    try:
        check_model_file(choice)
    except ModelError as error:
        return str(error)
    return None


class ModelChoiceGuard:
    """Keeps a model menu on models that can be used: a file that fails
    :func:`model_choice_problem` when chosen is refused at once (an error notification), taken out
    of the remembered model files, and the menu goes back to the choice before it; a model that
    fails to load at run time is refused the same way (:meth:`refuse`)."""

    def __init__(self, combo: ComboBox):
        self.combo = combo
        self.accepted = [combo.value]  # choices that passed, the latest last
        # after the menu's other handlers (lowest priority): the last value they see is the one kept
        combo.changed.connect(self._changed, priority=-1000)

    def _changed(self, value) -> None:
        problem = model_choice_problem(value)
        if problem is None:
            self.accepted = [v for v in self.accepted if v != value] + [value]
        else:
            self.refuse(value, problem)

    def refuse(self, value, problem: str | None = None) -> None:
        """Go back from ``value`` to the latest accepted choice still offered (else the packaged
        default) and forget the file; ``problem``: shown as an error notification."""
        from napari.utils.notifications import show_error

        if problem is not None:
            show_error(f"napari-clumps: {problem}")
        if not value or value == DEFAULT_CHOICE or str(value).startswith("new:"):
            return
        self.accepted = [v for v in self.accepted if v != value]
        offered = [v for v in self.combo.choices if v != value]
        if self.combo.value == value:
            self.combo.value = next((v for v in reversed(self.accepted) if v in offered), DEFAULT_CHOICE)
        unregister_model_file(value)


def remember(**changes) -> None:
    """Save settings (:mod:`napari_clumps.settings`, by field name) from a widget."""
    _saving(update_settings, **changes)


def _saving(save, *args, **kwargs) -> None:
    """Call a settings writer; a settings file that cannot be written costs the memory, never the
    action the user was taking."""
    from napari.utils.notifications import show_warning

    try:
        save(*args, **kwargs)
    except OSError as error:
        show_warning(f"napari-clumps: {error.filename or 'settings'}: cannot save the settings ({error.strerror})")


def restore_paths(**file_edits) -> None:
    """Start each ``FileEdit`` (by settings field name) at its remembered path, if there is one."""
    remembered = load_settings()
    for name, file_edit in file_edits.items():
        if getattr(remembered, name):
            file_edit.value = getattr(remembered, name)


def remember_paths(**paths) -> None:
    """Remember paths (by settings field name); a list of files is not a folder to remember."""
    remember(**{name: str(path) for name, path in paths.items() if isinstance(path, str | Path) and str(path)})


def image_layer_choices(viewer) -> list[tuple]:
    """(name, layer) of the image layers a detector can take: not the hidden raw-band layers, nor
    the review queue's (it detects in its images itself)."""
    from napari.layers import Image

    return [
        (layer.name, layer)
        for layer in viewer.layers
        if isinstance(layer, Image) and "band_name" not in layer.metadata and not is_review_layer(layer)
    ]


def model_file_choices() -> list[tuple]:
    """(label, value) of the packaged default and the remembered model files."""
    return [
        (DEFAULT_CHOICE, DEFAULT_CHOICE),
        *((f"{Path(p).name} ({Path(p).parent.name})", p) for p in load_settings().model_files),
    ]


#: How many characters of a model's name the model menus show when closed (more when open).
MODEL_MENU_CHARACTERS = 24


def model_menu(label: str, choices, tooltip: str) -> ComboBox:
    """A menu of models (the packaged one, files, architectures) as wide as the dock allows.

    Qt sizes a menu to its longest entry, and a model file in a long-named folder then widened the
    dock's content past the dock: its right edge (file buttons, values) was cut off. Now a long
    entry is cut off at the right in the closed menu (its file name comes first) and shortened in
    the middle in the open list.
    """
    from qtpy.QtWidgets import QComboBox

    menu = ComboBox(label=label, choices=choices, tooltip=tooltip)
    native = menu.native
    native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(MODEL_MENU_CHARACTERS)
    native.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)
    return menu


def model_setting(choice: str) -> str:
    """The settings' name for a model menu choice (the packaged default has its own label)."""
    return DEFAULT_MODEL if choice == DEFAULT_CHOICE else choice


def model_choice(setting: str) -> str:
    return DEFAULT_CHOICE if setting == DEFAULT_MODEL else setting


#: The layer lists of the open widgets, and the layers whose renaming they follow.
_LAYER_SELECTS: weakref.WeakSet = weakref.WeakSet()
_RENAMES_FOLLOWED: weakref.WeakSet = weakref.WeakSet()


def _show_new_layer_names(_event=None) -> None:
    for select in list(_LAYER_SELECTS):
        if not qt_deleted(select.native):
            chosen = list(select.value)
            select.reset_choices()  # a renamed layer's item is made again, unchosen: chosen again here
            select.value = [layer for layer in chosen if layer in select.choices]


def preselect(select: Select, candidates, offered: weakref.WeakSet) -> None:
    """Add to ``select``'s value the ``candidates`` (layers) not offered before, so that a layer is
    chosen once, when it first qualifies, and a user's deselection afterwards stands. The list
    shows a layer's new name when the user renames it."""
    select.reset_choices()
    _LAYER_SELECTS.add(select)
    for layer in select.choices:
        if layer not in _RENAMES_FOLLOWED:
            _RENAMES_FOLLOWED.add(layer)
            layer.events.name.connect(_show_new_layer_names)
    new = [layer for layer in candidates if layer not in offered and layer in select.choices]
    offered.update(new)
    if new:
        select.value = [*select.value, *new]


class WorkProgress:
    """A progress bar and a status line inside a widget, so that work shows from its first second
    (napari's own activity dock starts collapsed): busy while a model loads, then i of N."""

    def __init__(self, status: Label, what: str):
        self.status = status
        self.bar = ProgressBar(label="progress", value=0, min=0, max=1, visible=False, tooltip=f"progress of {what}")

    def busy(self, text: str) -> None:
        self.status.value = text
        self.bar.visible = True
        self.bar.native.setRange(0, 0)  # Qt's "busy" bar: no end known yet

    def count(self, done: int, total: int, text: str | None = None) -> None:
        self.bar.visible = True
        self.bar.native.setRange(0, max(total, 1))
        self.bar.value = min(done, max(total, 1))
        if text is not None:
            self.status.value = text

    def done(self, text: str | None = None) -> None:
        self.bar.visible = False
        if text is not None:
            self.status.value = text


def _forget(listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


class _ContentSizedScrollArea(QScrollArea):
    """Asks for its content's size when there is room, and shrinks in height (scrolling) when
    there is not; never narrower than its content, so that it never scrolls sideways. The first
    time it is shown docked under or over other docks, the column is shared among them
    (:func:`share_dock_column`)."""

    _column_shared = False

    def showEvent(self, event):
        super().showEvent(event)
        if not self._column_shared:
            self._column_shared = True
            QTimer.singleShot(0, self._share_column)  # once napari has docked it

    def _share_column(self):
        if not qt_deleted(self):  # the viewer may have closed before the event loop turned
            share_dock_column(self)

    def sizeHint(self):
        return self.widget().sizeHint() if self.widget() is not None else super().sizeHint()

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        if self.widget() is not None:
            hint.setWidth(self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width())
        return hint


def share_dock_column(widget: QWidget) -> None:
    """Share the height of the column of docks that holds ``widget`` among the docks stacked in
    it, in proportion to what each one's content asks for (never below a dock's minimum).

    Why: Qt gives a dock added under another only its minimum height, the one above keeping the
    rest: the Fine-tune widget docked under Detect on a 900 px screen got 89 px (a scrolling strip)
    while Detect kept ~60 px spare. Done once, when the dock is first shown; after that the
    split is the user's to drag.
    """
    dock = widget
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    column = [
        other
        for other in window.findChildren(QDockWidget)
        if other.isVisible()
        and not other.isFloating()
        and window.dockWidgetArea(other) == area
        and other.x() == dock.x()  # stacked in the same column (not side by side)
    ]
    if len(column) < 2:
        return
    room = sum(other.height() for other in column)
    wanted = [max(other.sizeHint().height(), 1) for other in column]
    heights = [max(other.minimumSizeHint().height(), room * hint // sum(wanted)) for other, hint in zip(column, wanted)]
    window.resizeDocks(column, heights, Qt.Orientation.Vertical)


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """The layout to fill ``widget`` with, inside a scroll area: docks stacked on a small screen
    (1400 x 900) shrink and scroll instead of pushing their buttons off the screen."""
    area = _ContentSizedScrollArea(widget)
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setFrameShape(QFrame.Shape.NoFrame)
    content = QWidget()
    area.setWidget(content)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(content)


class DetectionWidget(QWidget):
    """Detect clumps in image layers; results are one Shapes layer per image."""

    def __init__(self, napari_viewer):
        super().__init__()
        avoid_triton_llvm_clash()
        self.viewer = napari_viewer
        collect_removed_layers(self.viewer)  # what the workers froze: collectable again
        show_sky_position(self.viewer)  # RA/Dec under the cursor
        self.worker = None
        self.send_worker = None
        self._stop = threading.Event()
        self._offered = weakref.WeakSet()  # image layers preselected once (see preselect)
        self._watched = weakref.WeakSet()  # clumps layers whose edits are noted (note_user_edit)
        self._run = _RunTally(0)
        self._inbox = Inbox(self)  # what the worker sends, shown in order, one item per event-loop pass
        remembered = load_settings()
        self.images = Select(
            label="images",
            choices=self._image_choices,
            allow_multiple=True,
            tooltip="image layers to run on (ctrl/shift-click for several); every image opened is chosen",
        )
        self.bands_button = PushButton(
            text="Show raw bands",
            tooltip="add the raw FITS bands of the images selected in the layer list "
            "(also Layers > Data > Show raw FITS bands)",
        )
        self.model = model_menu(
            "model",
            self._model_choices,
            "the packaged default model or a model file (remembered, as the files added)",
        )
        self.model_file = FileEdit(
            label="model file",
            mode="r",
            filter="*.safetensors *.pt *.pth",
            tooltip="add a model file (napari-clumps model or paper checkpoint)",
        )
        self.device = ComboBox(
            label="device",
            choices=DEVICES,
            value=remembered.device,
            tooltip="auto: CUDA, then Apple MPS, then CPU (remembered)",
        )
        self.score = FloatSlider(
            label="score >=",
            min=SCORE_FLOOR,
            max=1.0,
            step=0.01,
            value=PAPER_SCORE_THRESHOLD,
            tooltip="shown boxes; moving it does not re-run the model. Starts at the model's "
            "recommended threshold when you choose a model; remembered",
        )
        self.nms = FloatSpinBox(
            label="NMS IoU",
            min=0.05,
            max=0.95,
            step=0.05,
            value=DEFAULT_NMS_IOU,
            tooltip=f"class-agnostic non-maximum suppression ({DEFAULT_NMS_IOU:g} as in the paper)",
        )
        self.keep_off_host = CheckBox(
            label="off host",
            value=False,
            text="show boxes off the host galaxy",
            tooltip="clumps belong to the central galaxy; tick to also show boxes "
            "on field stars and neighbours (hidden, not deleted)",
        )
        self.psf_fwhm = FloatSpinBox(
            label="PSF FWHM (px)",
            min=0.0,
            max=100.0,
            step=0.1,
            value=0.0,
            tooltip="the images' PSF FWHM in pixels: they are resampled to the "
            "model's training PSF. 0: from the FITS header or pixel scale",
        )
        self.pixel_scale = FloatSpinBox(
            label='pixel scale ("/px)',
            min=0.0,
            max=10.0,
            step=0.01,
            value=0.0,
            tooltip=f'arcsec per pixel (with {DEFAULT_SEEING_ARCSEC:g}" seeing) when the PSF FWHM is not '
            "given; 0: from the FITS header, or no resampling",
        )
        self.catalog = FileEdit(
            label="cutout catalogue",
            mode="r",
            filter="*.csv *.ecsv *.fits *.fit *.txt",
            value="",
            tooltip="optional: a table of the images' centre RA/Dec and pixel scale, which gives JPEG/PNG "
            "cutouts (no WCS of their own) RA/Dec; columns and matching in docs/user-guide.md (remembered)",
        )
        self.new_label = ComboBox(
            label="box class",
            choices=list(LABELS),
            value=LABELS[0],
            tooltip="class of the boxes you draw, and of the selected boxes when you change it",
        )
        self.run_button = PushButton(
            text="Detect",
            tooltip="run the model on the chosen images (boxes you edited or loaded from a file are kept as they are)",
        )
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="stop after the current batch")
        self.csv_path = FileEdit(
            label="file",
            mode="w",
            filter=CATALOGUE_FILTER,
            value="detections.csv",
            tooltip="detections file to write or read, format by extension: .csv (the contract), "
            ".ecsv, .fits, .parquet (with units and provenance)",
        )
        self.export_regions = CheckBox(
            text="also DS9 regions",
            value=False,
            tooltip="with the export, one DS9 region file per image in the folder <file name>.regions beside it",
        )
        self.export_button = PushButton(
            text="Export boxes", tooltip="every clumps layer, as edited, with its images list (contracts.md)"
        )
        self.import_button = PushButton(
            text="Load boxes", tooltip="boxes of a detections or labels file onto the open images"
        )
        self.topcat_button = PushButton(
            text="Send to TOPCAT",
            tooltip="every clumps layer, as edited, as one table to TOPCAT (or Aladin) over SAMP; "
            "start TOPCAT first (it runs the SAMP hub)",
        )
        self.ds9_button = PushButton(
            text="Send to DS9",
            tooltip="the FITS image selected in the layer list, and its boxes as regions, to DS9 over "
            "SAMP (sky coordinates when it has a WCS); start DS9 first",
        )
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.progress = WorkProgress(self.status, "detection")
        self.images.native.setMaximumHeight(110)
        self.form = Container(
            widgets=[
                self.images,
                self.bands_button,
                self.model,
                self.model_file,
                self.device,
                self.score,
                self.keep_off_host,
                self.nms,
                self.psf_fwhm,
                self.pixel_scale,
                self.catalog,
                self.new_label,
                Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                self.csv_path,
                self.export_regions,
                Container(widgets=[self.export_button, self.import_button], layout="horizontal", labels=False),
                Container(widgets=[self.topcat_button, self.ds9_button], layout="horizontal", labels=False),
                self.progress.bar,
                self.status,
            ]
        )
        layout = scrolling_layout(self)
        layout.addWidget(self.form.native)
        layout.addStretch()
        self.setMaximumWidth(440)

        if model_choice(remembered.model) in self.model.choices:
            self.model.value = model_choice(remembered.model)
        restore_paths(detections_csv=self.csv_path, cutout_catalog=self.catalog)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.bands_button.changed.connect(lambda: show_raw_bands(self.viewer))
        self.score.changed.connect(self._apply_threshold)
        self.keep_off_host.changed.connect(self._apply_threshold)
        self.new_label.changed.connect(self._set_new_label)
        self.model_file.changed.connect(self._add_model_file)
        self.model.changed.connect(self._use_model_threshold)
        self.export_button.changed.connect(lambda: self.export_csv(self.csv_path.value))
        self.import_button.changed.connect(lambda: self.import_csv(self.csv_path.value))
        self.topcat_button.changed.connect(self.send_to_topcat)
        self.ds9_button.changed.connect(self.send_to_ds9)
        self.viewer.layers.events.inserted.connect(self._refresh_choices)
        self.viewer.layers.events.removed.connect(self._refresh_choices)
        self.viewer.layers.events.inserted.connect(lambda event: self._watch_edits(event.value))
        for layer in self.viewer.layers:
            self._watch_edits(layer)
        self._use_model_threshold(self.model.value)
        if remembered.score_threshold is not None:
            self.score.value = max(remembered.score_threshold, SCORE_FLOOR)
        # remembered from here on (not while the widget is being set up)
        self.model.changed.connect(lambda choice: remember(model=model_setting(choice)))
        self.device.changed.connect(lambda device: remember(device=device))
        self.score.changed.connect(lambda value: remember(score_threshold=round(value, 4)))
        self.csv_path.changed.connect(lambda path: remember_paths(detections_csv=path))
        self.catalog.changed.connect(self._remember_catalog)
        self._model_guard = ModelChoiceGuard(self.model)
        _listeners.append(self.model.reset_choices)
        self.destroyed.connect(lambda *_: _forget(self.model.reset_choices))
        stop_when_closed(self, self._stop_for_close)
        self._refresh_choices()

    # ------------------------------------------------------------------ choices

    def _image_choices(self, _widget=None):
        return image_layer_choices(self.viewer)

    def _model_choices(self, _widget=None):
        return model_file_choices()

    def _refresh_choices(self, event=None):
        """New image layers are chosen as they come (most runs are on every open image)."""
        if qt_deleted(self):  # the viewer empties its layer list as it closes, after the docks are gone
            return
        preselect(self.images, [layer for _, layer in image_layer_choices(self.viewer)], self._offered)

    def _add_model_file(self, path):
        """A model file chosen with the file dialog: into the menus and selected, unless its header
        says it is broken (then the selected model stays, and the file is not remembered)."""
        from napari.utils.notifications import show_error

        if path and Path(path).is_file():
            problem = model_choice_problem(path)
            if problem is not None:
                show_error(f"napari-clumps: {problem}")
                self.status.value = f"{problem}; the model is still {self.model.current_choice}"
                return
            register_model_file(path)
            self.model.value = str(Path(path).resolve())

    def _use_model_threshold(self, value):
        """Start the slider at the chosen model's recommended threshold (read from its metadata)."""
        from .model import packaged_model_path, read_provenance, recommended_threshold

        path = packaged_model_path() if value == DEFAULT_CHOICE else Path(value)
        if path.is_file():
            self.score.value = recommended_threshold(read_provenance(path))

    def selected_model(self):
        return None if self.model.value == DEFAULT_CHOICE else self.model.value

    # ------------------------------------------------------------------ running

    def run(self):
        """Start detection on the chosen image layers in a worker thread."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error, show_warning

        if self.worker is not None:  # one run at a time: two would interleave their layers and status
            say_refused(self.status, "a detection", "Cancel")
            return
        layers = list(self.images.value)
        if not layers:
            show_warning("napari-clumps: choose an image layer to detect clumps in")
            return
        kept = [layer for layer in layers if self._users_boxes_of(layer)]
        if kept:  # a correction is never overwritten: the user removes the layer to start again
            names = ", ".join(layer.name for layer in kept)
            show_warning(
                f"napari-clumps: kept your boxes of {names} (edited, or loaded from a file): not detected "
                "again (delete its clumps layer to detect it again)"
            )
            layers = [layer for layer in layers if layer not in kept]
            if not layers:
                self.status.value = f"kept your boxes of {names}; nothing else to detect"
                return
        try:
            self._give_sky_positions(layers)
            images = [layer_to_galaxy_image(layer) for layer in layers]
        except ValueError as error:  # also a bad cutout catalogue (CutoutCatalogError)
            show_error(f"napari-clumps: {error}")
            return
        self._stop.clear()
        by_name = {layer.name: layer for layer in layers}
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self._run = _RunTally(len(images))
        self._run.selection = _selection_of(self.viewer.layers)
        self.progress.busy(
            f"loading the model ({self.model.current_choice}) for {len(images)} image(s); "
            "the first run in a session also starts PyTorch, which takes a while..."
        )
        self.worker = create_worker(  # starts at once, since handlers are connected here
            _detect_in_thread,
            images,
            [layer.name for layer in layers],
            self.selected_model(),
            self.device.value,
            self.nms.value,
            self._stop.is_set,
            self.psf_fwhm.value or None,
            self.pixel_scale.value or None,
            _progress={"total": len(images), "desc": "Detecting clumps"},
            _connect={
                "yielded": lambda item: self._inbox.put(self._show_item, item, by_name),
                "finished": self._inbox.later(self._end_run),  # after what the worker sent before
            },
        )

    def chosen_catalog(self) -> Path | None:
        """The cutout catalogue file chosen, or None (an empty field reads as the folder ".")."""
        path = self.catalog.value
        return None if path is None or str(path) in ("", ".") else Path(path)

    def _remember_catalog(self, _path=None) -> None:
        path = self.chosen_catalog()
        remember(cutout_catalog=None if path is None else str(path.expanduser().resolve()))

    def _give_sky_positions(self, layers) -> None:
        """Image layers without a celestial WCS get the one their cutout catalogue row gives (in
        their metadata, where the clumps layers and the CSV export take it from)."""
        from .cutouts import read_cutout_catalog

        path = self.chosen_catalog()
        if path is None:
            return
        catalog = read_cutout_catalog(path)  # read at each run: the file may have changed
        for layer in layers:
            if layer.metadata.get("wcs") is None:
                height, width = layer.data.shape[:2]
                layer.metadata["wcs"] = catalog.wcs_for(image_name(layer), width, height)

    def _users_boxes_of(self, image_layer) -> bool:
        """Whether the clumps layer over ``image_layer`` holds the user's work (edited, or loaded
        from a file): Detect never writes over it."""
        layer = clumps_layer_of(self.viewer.layers, image_layer)
        return layer is not None and holds_users_boxes(layer)

    def _put_boxes_layer(self, table, image_layer, in_a_run: bool = False):
        """The clumps layer of ``table`` over ``image_layer``, in place of the image's own
        (:func:`~napari_clumps._layers.clumps_layer_of`), tied to it; watched for the user's edits
        as every clumps layer inserted in the viewer is (:meth:`_watch_edits`).

        A clumps layer of the same image already there is refilled, not replaced: napari frees a
        removed layer with a full ``gc.collect()``, which takes most of a second once PyTorch is
        loaded, in the GUI thread, for every image of a run (docs/benchmarks/gui_responsiveness.md).

        ``in_a_run`` (a Detect run's result): the score and host filter are applied before the
        layer reaches the viewer, so that what listens to new layers (the fine-tuning widget's
        choice of images) sees the boxes shown; and a new layer takes neither the user's selection
        nor, yet, its first drawing: it goes in hidden, and :meth:`_show_result` shows it a frame
        later, so that napari's work for a new layer and vispy's for its first drawing are two
        stalls of the GUI thread, not one twice as long (docs/reliability.md).
        """
        from napari.layers import Shapes

        data, kwargs, _ = detections_layer_over(table, image_layer, self.new_label.value)
        if in_a_run:  # before the layer is built: building it twice doubles its cost
            data, kwargs = with_score_threshold(data, kwargs, self.score.value, self.keep_off_host.value)
        old = clumps_layer_of(self.viewer.layers, image_layer)  # a layer of another image is never touched
        if old is not None and _same_place(old, kwargs):
            refill_boxes_layer(old, data, kwargs)
            return old
        # built first: if it fails, the old layer is still there
        layer = Shapes(data, **kwargs, **({"visible": False} if in_a_run else {}))
        if old is not None:
            self.viewer.layers.remove(old)
        # just above its galaxy: napari draws the list bottom up, so the galaxies above cover
        # these boxes as they cover the galaxy, and boxes are never seen over another galaxy
        with selection_kept(self.viewer.layers) if in_a_run else contextlib.nullcontext():
            self.viewer.layers.insert(self.viewer.layers.index(image_layer) + 1, layer)
        tie_to_image(layer, image_layer, show_now=not in_a_run)
        return layer

    def _watch_edits(self, layer) -> None:
        """Note the user's edits of a clumps layer from now on (:func:`~napari_clumps._layers.note_user_edit`):
        every one in the viewer, also those Detect did not make (opened from a file, duplicated)."""
        if is_boxes_layer(layer) and layer not in self._watched:
            self._watched.add(layer)
            layer.events.data.connect(lambda event: note_user_edit(layer, event))

    def cancel(self):
        if self.worker is not None:
            self._stop.set()
            self.worker.quit()
            self.status.value = "cancelling..."

    def _stop_for_close(self):
        """The widget is being deleted (its viewer closed): the worker stops at its next check and
        nothing it sent is shown. Python state only: the Qt side is going."""
        self._stop.set()
        if self.worker is not None:
            self.worker.quit()

    def _show_item(self, item, layers_by_name):
        kind, *payload = item
        if kind == "error":
            self._failed(payload[0])
        elif kind == "model failed":  # the chosen file did not load: back to the model before it
            message, model = payload
            self._failed(message)
            self._model_guard.refuse(model)
            self.status.value = f"failed: {message}; the model is back to {self.model.current_choice}"
        elif kind == "crash":
            from napari.utils.notifications import show_error

            self._run.stopped = True
            self.status.value = f"detection stopped: {crash_line(payload[0])}"
            show_error(f"napari-clumps: {self.status.value}")
        elif kind == "ready":
            self._run.device_text = payload[0]
            self.progress.count(0, self._run.total, f"{payload[0]}: detecting in {self._run.total} image(s)...")
        else:
            name, result, device_text = payload
            self._run.done += 1
            self._run.device_text = device_text
            self.progress.count(self._run.done, self._run.total)
            self._show_result(layers_by_name[name], result, device_text)

    def _show_result(self, image_layer, result, device_text):
        from napari.utils.notifications import show_error, show_warning

        counter = f"image {self._run.done} of {self._run.total}: "
        if result.error:
            show_error(f"napari-clumps: {result.error}")
            self._run.failed += 1
            self.status.value = f"{counter}{result.error}"
            return
        if image_layer not in self.viewer.layers:  # removed while the run went on: no boxes over nothing
            self._run.dropped += 1
            self.status.value = f"{counter}{image_layer.name} was removed from the viewer; its boxes are dropped"
            return
        if self._users_boxes_of(image_layer):  # edited or loaded while the run went on: never overwritten
            self._run.kept += 1
            self.status.value = f"{counter}kept your boxes of {image_layer.name}"
            show_warning(f"napari-clumps: kept your boxes of {image_layer.name}: changed while Detect ran")
            return
        made = clumps_layer_of(self.viewer.layers, image_layer)
        layer = self._put_boxes_layer(result.table, image_layer, in_a_run=True)
        if layer is not made:  # shown once its insertion is drawn (see _put_boxes_layer)
            self._run.made.append(layer)
            self._inbox.after_a_frame(self._show_new_layer, layer)
        else:  # the refill's repaint before the next result, not in the same stall
            self._inbox.wait_a_frame()
        self._run.shown += len(layer.data)
        self.status.value = (
            f"{counter}{image_layer.name}: {len(layer.data)} clumps shown "
            f"({len(result.table)} with score >= {SCORE_FLOOR} on or off the host); {device_text}"
        )

    def _show_new_layer(self, layer):
        """Show a clumps layer a run made hidden (as its image is shown); its first drawing
        happens before the next result is handled, in a stall of its own."""
        show_with_image(layer)
        self._inbox.wait_a_frame()

    def _failed(self, message: str):
        from napari.utils.notifications import show_error

        show_error(f"napari-clumps: detection failed: {message}")
        self._run.stopped = True  # the run ends here: its closing line is this one, not a "done"
        self.status.value = f"failed: {message}"

    def _end_run(self):
        self.worker = None
        made = [layer for layer in self._run.made if layer in self.viewer.layers]
        if made and _selection_of(self.viewer.layers) == self._run.selection:
            # napari's way with a new layer (selected, ready to edit), once for the run rather than
            # once per image while the user may be working on another layer (see _put_boxes_layer)
            self.viewer.layers.selection.active = made[-1]
        self.progress.done("cancelled" if self._stop.is_set() else self._run.summary())
        self.run_button.enabled, self.cancel_button.enabled = True, False

    # ------------------------------------------------------------------ editing

    def boxes_layers(self):
        return [layer for layer in self.viewer.layers if is_boxes_layer(layer)]

    def _apply_threshold(self, _value=None):
        for layer in self.boxes_layers():
            apply_score_threshold(layer, self.score.value, self.keep_off_host.value)

    def _set_new_label(self, label):
        """New boxes get ``label``; so do the boxes selected in a clumps layer (a correction, kept
        as the model's box with its score, only its class changed)."""
        for layer in self.boxes_layers():
            selected = sorted(i for i in layer.selected_data if i < len(layer.features))
            if selected:
                features = layer.features.copy()
                features.loc[selected, "label"] = label
                layer.features = features
                layer.edge_color = label_colours(features["label"])
                layer.metadata["edited"] = True
            layer.feature_defaults = hand_box_features(label)  # after the features: setting them resets it

    # ------------------------------------------------------------------ CSV

    def export_csv(self, path) -> Path | None:
        """Write the boxes of every clump layer (as edited) to a detections file + images list
        (docs/contracts.md), in the format of its extension; with "also DS9 regions", a region
        file per image in ``<file name>.regions/``."""
        import pandas as pd
        from napari.utils.notifications import show_error, show_info, show_warning

        from .detections import images_row
        from .export import CatalogueFormatError, check_catalogue_path, region_path, write_catalogue, write_regions

        layers = self.boxes_layers()
        if not layers:
            show_warning("napari-clumps: no clump layers to export; run Detect or load a CSV first")
            return None
        try:
            path = check_catalogue_path(path)
        except CatalogueFormatError as error:
            show_error(f"napari-clumps: {error}")
            return None
        tables = [boxes_table(layer) for layer in layers]
        images = pd.DataFrame(
            [
                images_row(layer.metadata["image_name"], len(t), height=layer.metadata.get("height"))
                for layer, t in zip(layers, tables)
            ]
        )
        table = pd.concat(tables, ignore_index=True)
        write_catalogue(table, path, self._export_provenance(table), images)
        written = f"{sum(map(len, tables))} boxes to {path}"
        if self.export_regions.value:
            folder = regions_folder(path)
            for layer, layer_table in zip(layers, tables):
                write_regions(layer_table, region_path(folder, layer.metadata["image_name"]), layer.metadata.get("wcs"))
            written += f" and {len(layers)} DS9 region files to {folder}"
        show_info(f"napari-clumps: wrote {written}")
        self.status.value = f"exported to {path}"
        return path

    def _export_provenance(self, table) -> dict:
        """What an exported catalogue says of its making: the models of its rows, the chosen
        model's file when the rows are its, and the widget's threshold and NMS IoU."""
        from .export import provenance
        from .model import packaged_model_path, read_provenance

        models = sorted(set(table["model"].dropna()) - {""})
        chosen = packaged_model_path() if self.model.value == DEFAULT_CHOICE else Path(self.model.value)
        chosen_id = read_provenance(chosen).get("model_id") if chosen.is_file() else None
        return provenance(
            model_id=", ".join(models) or None,
            model_file=chosen if chosen_id in models else None,
            score_threshold=self.score.value,
            nms_iou=self.nms.value,
            command="napari-clumps detection widget: Export boxes",
        )

    def import_csv(self, path) -> list:
        """Add the boxes of a detections CSV onto the open image layers they name; a clumps layer
        the user edited is kept as it is (remove it to load the file's boxes). Detect keeps the
        loaded boxes as it keeps edits (:func:`~napari_clumps._layers.holds_users_boxes`)."""
        from napari.utils.notifications import show_error, show_warning

        from .detections import DetectionsFileError, read_detections

        try:
            table = read_detections(path)
        except DetectionsFileError as error:
            show_error(f"napari-clumps: {error}")
            return []
        images = {image_name(layer): layer for _, layer in image_layer_choices(self.viewer)}
        added, missing, kept = [], [], []
        for name, rows in table.groupby("image", sort=False):
            image_layer = images.get(Path(name).name)
            if image_layer is None:
                missing.append(name)
                continue
            boxes = clumps_layer_of(self.viewer.layers, image_layer)
            if boxes is not None and boxes.metadata.get("edited"):  # a correction is never written over
                kept.append(image_layer.name)
                continue
            layer = self._put_boxes_layer(rows, image_layer)
            mark_loaded_from(layer.metadata, path)
            added.append(layer)
        if missing:
            show_warning(f"napari-clumps: {path}: no open image for {len(missing)} image(s), e.g. {missing[0]}")
        if kept:
            show_warning(
                f"napari-clumps: {path}: kept your edited boxes of {len(kept)} image(s), e.g. {kept[0]}; "
                "remove their clumps layers to load the file's"
            )
        return added

    # ------------------------------------------------------------------ SAMP (TOPCAT, DS9)

    def send_to_topcat(self) -> None:
        """Send the boxes of every clumps layer (as edited, as exported) as one table over SAMP."""
        import pandas as pd
        from napari.utils.notifications import show_warning

        from .samp import send_table

        layers = self.boxes_layers()
        if not layers:
            show_warning("napari-clumps: no clump layers to send; run Detect or load a CSV first")
            return
        table = pd.concat([boxes_table(layer) for layer in layers], ignore_index=True)
        what = f"{len(table)} clumps of {len(layers)} image(s)"
        self._send(what, send_table, table, f"napari-clumps: {what}")

    def send_to_ds9(self) -> None:
        """Send the chosen image (a FITS file) and its boxes, as regions, over SAMP."""
        from napari.utils.notifications import show_warning

        from .detections import detections_frame
        from .samp import send_image_with_regions

        image_layer = self.image_to_send()
        if image_layer is None:
            show_warning("napari-clumps: select the image to send to DS9 in the layer list")
            return
        if not image_layer.metadata.get("path"):
            show_warning(f"napari-clumps: {image_layer.name} was not opened from a file; DS9 opens FITS files")
            return
        boxes_layer = clumps_layer_of(self.viewer.layers, image_layer)
        if boxes_layer is not None:
            table = boxes_table(boxes_layer)
        else:
            table = detections_frame(image_name(image_layer), [], [], [])
        what = f"{image_layer.name} with {len(table)} boxes"
        wcs = image_layer.metadata.get("wcs")
        self._send(what, send_image_with_regions, image_layer.metadata["path"], table, wcs, image_layer.name)

    def image_to_send(self):
        """The image layer selected in the layer list, or the one under the selected clumps layer,
        or the only image open; None when that leaves a choice."""
        images = [layer for _, layer in image_layer_choices(self.viewer)]
        active = self.viewer.layers.selection.active
        if active in images:
            return active
        if active is not None and is_boxes_layer(active):
            under = [layer for layer in images if clumps_layer_of(self.viewer.layers, layer) is active]
            if len(under) == 1:
                return under[0]
        return images[0] if len(images) == 1 else None

    def _send(self, what: str, send, *args) -> None:
        """Run ``send(*args)`` off the GUI thread (connecting to a hub can take seconds); say how it went."""
        from napari.qt.threading import create_worker

        if self.send_worker is not None:
            self.status.value = "a send over SAMP is still going: its answer comes within seconds"
            return
        self.topcat_button.enabled = self.ds9_button.enabled = False
        self.status.value = f"sending {what} over SAMP..."
        self.send_worker = create_worker(
            _send_in_thread,
            send,
            *args,
            _connect={"returned": lambda outcome: self._sent(what, outcome), "finished": self._send_finished},
        )

    def _sent(self, what: str, outcome) -> None:
        from napari.utils.notifications import show_info, show_warning

        if qt_deleted(self):
            return
        kind, detail = outcome
        if kind == "error":
            show_warning(f"napari-clumps: {detail}")
            self.status.value = detail
        else:
            show_info(f"napari-clumps: sent {what} to {', '.join(detail)}")
            self.status.value = f"sent {what} to {', '.join(detail)}"

    def _send_finished(self) -> None:
        if qt_deleted(self):
            return
        self.send_worker = None
        self.topcat_button.enabled = self.ds9_button.enabled = True


def _send_in_thread(send, *args) -> tuple:
    """Worker body: ``("sent", tool names)``, or ``("error", one line)``: what a user can act on
    (no hub, no tool that takes it) as it is, anything else (the tool quit mid-send, a temporary
    folder gone) as a crash line, its traceback to the log. Nothing propagates: the widget's status
    line would stay at "sending..." beside napari's traceback dialog."""
    from .samp import SampError

    try:
        return "sent", send(*args)
    except SampError as error:
        return "error", str(error)
    except Exception as error:  # noqa: BLE001 - one line in the widget; the traceback is logged
        return "error", f"sending over SAMP failed: {crash_line(error)}"


def _selection_of(layers) -> tuple:
    return frozenset(layers.selection), layers.selection.active


class _RunTally:
    """What one Detect run has done so far, for the status line."""

    def __init__(self, total: int):
        self.total, self.done, self.failed, self.shown, self.device_text = total, 0, 0, 0, ""
        self.dropped = 0  # results for images removed from the viewer during the run
        self.kept = 0  # results not shown over boxes the user edited during the run
        self.stopped = False  # an unexpected error ended the run
        self.made = []  # the clumps layers it made (not refilled), in order
        self.selection = None  # the viewer's layer selection when it started: (layers, active)

    def summary(self) -> str | None:
        """The closing line of a run that gave results; None keeps the last line (an error)."""
        if self.done <= 1 or self.stopped:
            return None  # one image: its own line says it all; an error's line stays
        counts = ((self.failed, "failed"), (self.dropped, "dropped (image removed)"), (self.kept, "kept (yours)"))
        notes = "".join(f", {n} {what}" for n, what in counts if n)
        return f"done: {self.done} of {self.total} images{notes}, {self.shown} clumps shown; {self.device_text}"


def _same_place(layer, kwargs) -> bool:
    """Whether a layer sits where a new layer of ``kwargs`` would (scale and translate)."""
    import numpy as np

    return all(np.allclose(getattr(layer, key), kwargs[key]) for key in ("scale", "translate") if key in kwargs)


def regions_folder(path) -> Path:
    """Where an export's DS9 region files go: ``run.ecsv`` -> ``run.regions/``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.regions")


def avoid_triton_llvm_clash() -> None:
    """Keep torch from importing triton when an LLVM is already loaded (Mesa's llvmpipe GL).

    triton (imported by ``torch._dynamo`` on Linux CUDA builds, which torchvision imports)
    bundles its own LLVM; loading it into a process where Mesa's LLVM serves napari's OpenGL
    context crashes the process (seen under Xvfb). napari-clumps never compiles kernels, so torch
    is told triton is absent, only in that case.
    """
    import sys

    if "triton" in sys.modules or "torch._dynamo" in sys.modules:
        return
    try:
        with open("/proc/self/maps") as maps:
            llvm_loaded = any("libLLVM" in line or "libgallium" in line for line in maps)
    except OSError:  # not Linux
        return
    if llvm_loaded:
        sys.modules["triton"] = None  # makes ``import triton`` raise ImportError


def _detect_in_thread(images, names, model, device, nms_iou, should_stop, psf_fwhm=None, pixel_scale=None):
    """Worker body: the items of :func:`napari_clumps.model_process.detection_items`, made in
    the session's detection process, or in this thread where there is none
    (:func:`~napari_clumps._background.model_process_for`). Nothing propagates: superqt takes a
    RuntimeError from a generator for a deleted worker and then never says "finished", which
    would leave the widget busy for good."""
    from .model_process import detection_items

    yield from model_items(
        "detect",
        detection_items,
        should_stop,
        images=images,
        names=names,
        model=model,
        device=device,
        nms_iou=nms_iou,
        psf_fwhm=psf_fwhm,
        pixel_scale=pixel_scale,
        score_floor=SCORE_FLOOR,
    )
