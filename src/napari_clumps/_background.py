"""What the dock widgets share about work in a worker thread (docs/reliability.md, GUI part).

One run per widget at a time; a worker's late signals touch nothing of a widget whose viewer was
closed; a closed widget stops its worker; an unexpected error in a worker ends the run like any
other failure. Qt glue only: the work itself is the core's.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import deque
from contextlib import contextmanager

from qtpy.QtCore import QTimer

log = logging.getLogger("napari_clumps")


def qt_deleted(widget) -> bool:
    """Whether the Qt side of ``widget`` is gone (its viewer was closed, or its dock removed).

    A worker's queued signals still arrive after that; a slot that then touched a label or a
    layer list would raise, so the slots ask this first and drop what comes.
    """
    try:
        from qtpy import sip
    except ImportError:  # PySide: no sip, shiboken says the same
        from qtpy import shiboken

        return not shiboken.isValid(widget)
    return sip.isdeleted(widget)


def stop_when_closed(widget, stop) -> None:
    """Call ``stop()`` when ``widget`` is deleted (napari deletes the docks as it closes the
    viewer), so that a run nobody can see any more ends at its next check instead of going on
    for minutes, writing files, and keeping Python from exiting (Qt waits for its thread pool).

    ``stop`` must touch only Python state (an Event, the worker): the widget is being deleted.
    """
    widget.destroyed.connect(lambda *_: stop())


#: How long (ms) the Inbox waits after an item that asked for a frame (:meth:`Inbox.after_a_frame`):
#: Qt draws a window's pending update a few ms after it is asked for (5 ms idle time on X11 and
#: Wayland), so by then the repaint has run, in a pass of its own.
FRAME_MS = 20


class Inbox:
    """What a worker's signals ask of a widget, done in order, one item per pass of the event
    loop, never one inside another.

    Why not in the slots themselves: napari's activity-dock progress bar calls
    ``QApplication.processEvents()`` at every update, so a slot that updates one is re-entered
    by the worker's next signals half-way (seen: a late step's status line written over "saved",
    the progress bar shown again after the run had ended). And a batch of results arrives as a
    burst of signals that Qt delivers back to back: one item per pass lets the viewer repaint and
    take input between two. The timer is the widget's child: once the widget is deleted (its
    viewer closed) nothing queued runs, and nothing more is queued.
    """

    def __init__(self, widget):
        self._items = deque()
        self._running = False
        self._wait_a_frame = False
        self._timer = QTimer(widget)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._run_next)

    def put(self, handler, *args) -> None:
        """Call ``handler(*args)`` after what was put before (a slot for a worker's signal)."""
        if qt_deleted(self._timer):
            return
        self._items.append((handler, args))
        if not self._timer.isActive():  # a frame's wait (:meth:`after_a_frame`) is not cut short
            self._timer.start(0)

    def later(self, handler):
        """A slot that puts its call to ``handler`` here: ``worker.finished.connect(inbox.later(f))``."""
        return lambda *args: self.put(handler, *args)

    def after_a_frame(self, handler, *args) -> None:
        """Call ``handler(*args)`` before anything queued, once the viewer has drawn what the item
        running now changed: one item's work for the GUI thread split in two stalls, each with a
        repaint of its own, instead of one stall holding both (docs/reliability.md)."""
        self._items.appendleft((handler, args))
        self.wait_a_frame()

    def wait_a_frame(self) -> None:
        """Run the next item only once the viewer has drawn what the item running now changed."""
        self._wait_a_frame = True

    def clear(self) -> None:
        self._items.clear()

    def _run_next(self) -> None:
        if self._running or not self._items:  # fired inside a handler's processEvents: the handler goes first
            return
        handler, args = self._items.popleft()
        self._running = True
        try:
            handler(*args)
        finally:  # also after a bug in one handler: the next ones (the run's end among them) still run
            self._running = False
            wait, self._wait_a_frame = self._wait_a_frame, False
            if self._items and not qt_deleted(self._timer):
                self._timer.start(FRAME_MS if wait else 0)


_import_lock = threading.Lock()
_imported = False


def import_pytorch_without_gc_pauses() -> None:
    """Import PyTorch and the detector's libraries (the first time in the process) with Python's
    cyclic garbage collector off, and leave their objects frozen (out of every collection; see
    :func:`while_workers_run` for when that ends).

    Why: the import makes ~400k objects, and every full collection while it went on walked them
    all, holding the GIL, so that the GUI thread waited: 0.4-0.7 s each, seen in the worker
    (2 cores; docs/benchmarks/gui_responsiveness.md). Frozen before the collector is on again, they
    are also not walked by the young-generation collection that would otherwise come next.
    """
    global _imported
    with _import_lock:
        if _imported:
            return
        collecting = gc.isenabled()  # a user who turned the collector off keeps it off
        gc.disable()
        try:
            from .model import import_libraries

            import_libraries()
        finally:
            gc.freeze()
            if collecting:
                gc.enable()
            _imported = True


_workers_lock = threading.Lock()
_workers = 0
_torch_threads_before = 0


@contextmanager
def while_workers_run():
    """The process's settings while any widget's worker runs (counted across concurrent workers;
    restored when the last one ends), PyTorch first imported without collection pauses
    (:func:`import_pytorch_without_gc_pauses`):

    - PyTorch on all cores but one. On 2 cores, PyTorch's two threads and Mesa's drawing threads
      starved the GUI thread: with one core left to it, the longest stalls were shorter and the
      runs themselves faster as well. On many cores the cost is one core of PyTorch's.
    - Python's garbage collector skips every object alive when a run starts (``gc.freeze()``),
      PyTorch's ~400k among them: a full collection walking them held the GIL 0.8-0.9 s in the
      GUI thread during fine-tuning. They stay frozen after the run (the GUI thread still shows
      its last results then, and the user edits boxes between runs) until a layer is removed
      (:func:`collect_removed_layers`). Objects that die meanwhile are freed by their reference
      counts; only those in reference cycles wait for that.
    """
    try:
        import_pytorch_without_gc_pauses()
    except Exception:  # the worker's body imports them again, and reports the failure its own way
        log.debug("napari-clumps: importing PyTorch ahead of the run failed", exc_info=True)
    import torch

    from .model_process import cores_beside_a_gui

    global _workers, _torch_threads_before
    with _workers_lock:
        if _workers == 0:
            _torch_threads_before = torch.get_num_threads()
            torch.set_num_threads(min(_torch_threads_before, cores_beside_a_gui()))
        _workers += 1
        gc.freeze()
    try:
        yield
    finally:
        with _workers_lock:
            _workers -= 1
            if _workers == 0:
                torch.set_num_threads(_torch_threads_before)


def _unfreeze(event=None) -> None:
    gc.unfreeze()


def collect_removed_layers(viewer) -> None:
    """Make every object frozen by :func:`while_workers_run` collectable again when a layer is
    removed (closing the viewer removes them all): napari collects right after a removal, at its
    own cost, to free the layer's drawing objects (and their OpenGL resources) at once, which
    frozen objects would escape; and a removed layer, kept by reference cycles, would stay in
    memory for the session. Connected ahead of napari's handler (napari calls the last connected
    first); once per viewer however many widgets ask (napari ignores a second connection)."""
    viewer.layers.events.removed.connect(_unfreeze)


#: Whether the widgets run the model (Detect, Fine-tune, the review queue) in a process of its own
#: (:mod:`napari_clumps.model_process`): then PyTorch's import and work never hold the GUI
#: process's GIL. Tests that stand a fake in for the core's functions in this process turn it off.
MODEL_IN_A_PROCESS = True


def model_process_for(job: str):
    """The session's process for ``job`` (:func:`napari_clumps.model_process.shared_model_process`),
    or None where the work is to be done in the worker's thread: :data:`MODEL_IN_A_PROCESS` is
    off, or no process could be started (logged). A run in a process freezes the collector at
    its start as a run in a thread does (:func:`while_workers_run`), PyTorch or not."""
    if not MODEL_IN_A_PROCESS:
        return None
    from .model_process import shared_model_process

    try:
        process = shared_model_process(job)
    except Exception as error:  # noqa: BLE001 - any failure to start one: the thread does the work
        log.warning("napari-clumps: %s runs in the GUI process: no process of its own (%s)", job, error)
        return None
    gc.freeze()
    return process


def model_items(job: str, items_here, should_stop, **run):
    """What the generator ``items_here(should_stop=..., **run)`` yields (a core function that
    :mod:`napari_clumps.model_process` runs as ``job``), made in the session's process for
    ``job``, or in this thread where there is none (:func:`model_process_for`)."""
    process = model_process_for(job)
    if process is not None:
        yield from process.items(should_stop, **run)
    else:
        with while_workers_run():
            yield from items_here(should_stop=should_stop, **run)


def busy_message(what: str, stop_button: str) -> str:
    """The status line of a refused second start: one run at a time, never two interleaved."""
    return f"{what} is already running: wait for it to end, or press {stop_button} first"


def say_refused(status, what: str, stop_button: str) -> None:
    """Put the refusal of a second start above what the run's status line says (which the run's
    next step then writes over): the user still sees how far the run is."""
    line = busy_message(what, stop_button)
    if not status.value.startswith(line):
        status.value = f"{line}\n{status.value}" if status.value else line


def crash_line(error: BaseException) -> str:
    """One line for an unexpected error in a worker; the traceback goes to the log, where a bug
    report can take it from."""
    log.error("napari-clumps: error in a background run", exc_info=error)
    return f"{type(error).__name__}: {error}"
