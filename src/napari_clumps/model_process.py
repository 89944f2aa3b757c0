"""The model's work in a process of its own, for a GUI that must keep serving (docs/reliability.md).

Why a process and not a thread: the GUI thread needs Python's GIL for every event it serves, and
PyTorch holds it for 100-210 ms at a time while it is imported and its C extension starts (more
on a cold disk or a busy machine), in whichever thread imports it. A process has a GIL of its
own: the GUI process then never imports PyTorch for the widgets' runs at all.

Three jobs: ``"detect"`` (the items of :func:`detection_items`: the Detect widget),
``"fine-tune"`` (the progress of :func:`fine_tuning_outcome`, then its outcome: the Fine-tune
widget and the review queue) and ``"review"`` (the items of :func:`per_image_items`: the review
queue's detection and ranking). Each has one process for the session
(:func:`shared_model_process`), so that a detection and a training go on side by side as they
did in threads: it imports PyTorch when its first run starts and keeps what it loaded for the
next runs (:func:`napari_clumps.model.get_detector` caches the model). Runs of one job go
through its process one at a time, in order; what a run yields comes back through a pipe item by
item, as it is made. A run that is stopped ends at its next check (between images, or training
steps), as in a thread; a process that dies (killed, out of memory) ends its run with a
``("crash", error)`` item, and the next run starts a new process.

Core: no napari, no Qt.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("napari_clumps")

#: Seconds between two looks at the user's stop request while a run waits for its next image.
POLL_S = 0.05

_DONE = "done"  # a run's last message from the process

#: How much lower than the GUI's the processes' CPU priority is (``os.nice``): the scheduler's
#: weight of a process at niceness 10 is about a tenth of one at 0.
NICENESS = 10


def cores_beside_a_gui() -> int:
    """PyTorch's threads beside a GUI: all cores but one (at least one). On 2 cores, PyTorch's
    two threads and Mesa's drawing threads starved the GUI thread; with a core left to it the
    stalls were shorter and the runs faster as well (docs/benchmarks/gui_responsiveness.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def detection_items(
    images, names, model, device, nms_iou, should_stop, psf_fwhm=None, pixel_scale=None, score_floor=0.0
):
    """Detect clumps in ``images`` (:class:`~napari_clumps.io.GalaxyImage`), one item per step,
    for a caller that shows them as they come (the detection widget):

    - ``("ready", device text)`` once the model is loaded;
    - ``("result", name, ImageDetections, device text)`` per image (``names``: the caller's own
      name of each image);
    - ``("model failed", message, model)`` when the chosen model file does not load;
    - ``("error", message)`` for the other failures a user can act on (no GPU, out of memory);
    - ``("crash", exception)`` for anything else (a bug, a torch error).

    Nothing propagates: a caller (a napari worker) that got an exception from a generator could
    not end the run cleanly.
    """
    import torch

    from .inference import iter_detections
    from .model import ModelError, get_detector, select_device
    from .scale import unused_psf_note

    try:
        torch_device = select_device(device)
        try:
            detector = get_detector(model, str(torch_device))
        except ModelError as error:  # the chosen model file's own fault (a device's is not)
            yield "model failed", str(error), model
            return
        device_text = f"{detector.model_id} on {torch_device}" + (" (auto)" if device == "auto" else "")
        yield "ready", device_text
        note = unused_psf_note(detector.config, psf_fwhm, pixel_scale)
        if note:
            device_text += f"; {note}"
        results = iter_detections(
            images,
            detector,
            names=[Path(image.path).name for image in images],
            device=str(torch_device),
            score_threshold=score_floor,
            nms_iou=nms_iou,
            keep_off_host=True,
            psf_fwhm=psf_fwhm,
            pixel_scale=pixel_scale,
            should_stop=should_stop,
        )
        for name, result in zip(names, results):
            yield "result", name, result, device_text
    except ModelError as error:
        yield "error", str(error)
    except torch.OutOfMemoryError:
        yield "error", f"out of memory on {device}; lower the number of images per run or use the CPU"
    except Exception as error:  # noqa: BLE001 - reported by the caller with its type
        yield "crash", error


class ModelRefused(NamedTuple):
    """What :func:`per_image_items` yields when the chosen model file does not load (NaN weights,
    another architecture): the review queue says why and goes back to the model before it."""

    message: str
    model: object


#: What :func:`per_image_items` can run: its name -> (module of this package, function).
PER_IMAGE = {"detections": ("inference", "iter_detections"), "priorities": ("active", "iter_priorities")}


def per_image_items(per_image: str, paths, names, model, should_stop):
    """Yields what ``per_image`` (:data:`PER_IMAGE`: :func:`~napari_clumps.inference.iter_detections`,
    :func:`~napari_clumps.active.iter_priorities`) yields per image, or :class:`ModelRefused` (the
    chosen model file does not load), or a message for the other failures a user can act on (no
    such device), or the exception of any other failure. Nothing propagates (see
    :func:`detection_items`)."""
    import importlib

    from .model import ModelError, get_detector, select_device

    module, function = PER_IMAGE[per_image]
    run = getattr(importlib.import_module(f".{module}", __package__), function)  # at call time: as patched
    try:
        device = str(select_device("auto"))
        try:
            detector = get_detector(model, device)
        except ModelError as error:  # the chosen file's own fault (a device's is not)
            yield ModelRefused(str(error), model)
            return
        yield from run(paths, detector, names=names, device=device, should_stop=should_stop)
    except ModelError as error:
        yield str(error)
    except Exception as error:  # noqa: BLE001 - reported by the caller with its type
        yield error


def fine_tuning_outcome(items, model, options, out, report, should_stop, description=""):
    """Fine-tune ``model`` (None: the packaged default; an architecture; a model file) on
    ``items`` into ``out``, for a caller that shows it (the Fine-tune and Review widgets):
    ``report`` gets each :class:`~napari_clumps.training.TrainingProgress` and the line
    "... loaded; the first training step comes next..."; the outcome is ``(kind, message,
    path)`` with kind "ok" (``path``: the file written), "cancelled" (the message says that
    ``out`` is unchanged, and where the best epoch is) or "error" (``path``: the model file that
    did not load, or None)."""
    from .model import BACKBONES, DEFAULT_MODEL, ModelError, get_detector
    from .training import TrainingCancelled, TrainingError, fine_tune, validation_summary

    try:
        try:
            detector = get_detector(DEFAULT_MODEL if model is None else model, "cpu")
        except ModelError as error:  # a file's own fault goes back with it (not a hub's, nor the default's)
            return "error", str(error), None if model is None or model in BACKBONES else model
        report(f"{detector.model_id} loaded; the first training step comes next...")
        trained = fine_tune(
            detector,
            items,
            options,
            out=out,
            callback=report,
            should_stop=should_stop,
            data_description=description or f"{len(items)} images corrected in napari",
        )
    except TrainingCancelled as stop:
        return "cancelled", str(stop), None
    except (ModelError, TrainingError, ValueError) as error:
        return "error", str(error), None
    return "ok", f"saved {out} ({trained.provenance['epochs_run']} epochs; {validation_summary(trained)})", str(out)


class ModelProcessEnded(RuntimeError):
    """The process ended in the middle of a run (killed, out of memory, crashed)."""


class ModelProcess:
    """A process that runs one job (see the module) for the runs sent to it.

    Runs are numbered; a thread here reads everything the process sends and hands each item to
    its run's queue. Nothing is locked while a run's items are consumed, so a run whose consumer
    is gone without closing it (a worker left in a frozen reference cycle) holds up no other:
    the process finishes it and its items are dropped with its queue.
    """

    def __init__(self, job: str):
        import multiprocessing

        if job not in _JOBS:
            raise ValueError(f"{job}: no such job; the jobs are {', '.join(_JOBS)}")
        self.job = job
        # spawn, not fork: a forked copy of a GUI process (Qt, OpenGL, threads) is not safe
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        # the highest run number stopped: the process reads it between images; never lowered,
        # so that a later run cannot un-stop an earlier one still ending
        self._stopped_up_to = context.Value("q", 0)
        self._process = context.Process(
            target=_serve, args=(job, child_end, self._stopped_up_to), name=f"napari-clumps {job}", daemon=True
        )
        self._process.start()
        child_end.close()  # the process's end is its own: a dead process reads as end-of-file here
        self._run_numbers = itertools.count(1)
        self._runs: dict[int, queue.SimpleQueue] = {}
        self._runs_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ended: ModelProcessEnded | None = None
        threading.Thread(target=self._read, name="napari-clumps detection results", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def is_alive(self) -> bool:
        return self._ended is None and self._process.is_alive()

    def items(self, should_stop, **run):
        """The items of this process's job for ``run`` (the job's arguments but ``should_stop``),
        made in the process. ``should_stop()`` is asked here, between two looks for the next
        item, and passed on; closing this generator early (a quit worker) stops the run too."""
        results = queue.SimpleQueue()
        with self._runs_lock:
            ended = self._ended
            number = next(self._run_numbers)
            if ended is None:
                self._runs[number] = results
        if ended is not None:
            yield "crash", ended
            return
        try:
            try:
                with self._send_lock:  # with this process's folder: a relative path means the same there
                    self._connection.send((number, os.getcwd(), run))
            except OSError as error:  # the process is gone (a broken pipe)
                self._end(error)
            while True:
                if should_stop():
                    self._stop(number)
                try:
                    item = results.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if item == _DONE:
                    return
                yield item
        finally:
            with self._runs_lock:
                self._runs.pop(number, None)
            self._stop(number)  # given up half-way: the process drops the rest (ended: changes nothing)

    def _read(self) -> None:
        """The reading thread's body: every item to its run's queue, until the process ends."""
        while True:
            try:
                number, item = self._connection.recv()
            except (EOFError, OSError) as error:  # the process ended, or this end was closed
                self._end(error)
                return
            with self._runs_lock:
                results = self._runs.get(number)
            if results is not None:
                results.put(item)

    def _end(self, error: BaseException) -> None:
        """The process is gone: each run waiting on it ends with a crash saying so."""
        self._process.join(timeout=1)
        ended = ModelProcessEnded(
            f"the {self.job} process ended (exit code {self._process.exitcode}): {error or 'pipe closed'}"
        )
        with self._runs_lock:
            if self._ended is None:
                self._ended = ended
            for results in self._runs.values():
                results.put(("crash", self._ended))
                results.put(_DONE)
            self._runs.clear()

    def _stop(self, number: int) -> None:
        with self._stopped_up_to.get_lock():
            self._stopped_up_to.value = max(self._stopped_up_to.value, number)

    def close(self, timeout: float = 5.0) -> None:
        """End the process: at once if it is idle, after its current image otherwise."""
        self._stop(sys.maxsize >> 1)
        try:
            with self._send_lock:
                self._connection.send(None)
        except OSError:
            pass
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)


_shared: dict[str, ModelProcess] = {}
_shared_lock = threading.Lock()


def shared_model_process(job: str) -> ModelProcess:
    """The session's process for ``job``, started on first use, and again if it died."""
    with _shared_lock:
        process = _shared.get(job)
        if process is None or not process.is_alive():
            process = _shared[job] = ModelProcess(job)
        return process


# ----------------------------------------------------------------------------- in the process


def _serve(job: str, connection, stopped_up_to) -> None:
    """The process's body: run what arrives, until ``None`` or the GUI process is gone."""
    from .model import import_libraries

    with contextlib.suppress(AttributeError, OSError):  # not on Windows; refused: runs as it is
        # below the GUI's priority: where cores are few, the GUI's drawing (on the CPU under
        # software OpenGL) goes first, and the model takes what is left
        os.nice(NICENESS)
    import_libraries()
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), cores_beside_a_gui()))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):  # the GUI process ended
            return
        if message is None:
            return
        number, folder, run = message
        with contextlib.suppress(OSError):  # the GUI's folder is gone: its relative paths fail there too
            os.chdir(folder)
        try:
            _run(_JOBS[job], connection, number, run, stopped_up_to)
        except (BrokenPipeError, ConnectionResetError):  # the GUI process ended
            return


def _run(job, connection, number: int, run: dict, stopped_up_to) -> None:
    def send(item):
        connection.send((number, _sendable(item)))

    try:
        job(send, lambda: stopped_up_to.value >= number, **run)
    except (BrokenPipeError, ConnectionResetError):
        raise
    except Exception as error:  # noqa: BLE001 - a bug or a torch error: the run's last item says it
        send(("crash", error))
    connection.send((number, _DONE))


def _detect(send, should_stop, **run) -> None:
    for item in detection_items(should_stop=should_stop, **run):
        send(item)


def _fine_tune(send, should_stop, **run) -> None:
    def report(progress):
        send(("report", progress))

    send(("returned", fine_tuning_outcome(report=report, should_stop=should_stop, **run)))


def _review(send, should_stop, **run) -> None:
    for item in per_image_items(should_stop=should_stop, **run):
        send(item)


_JOBS = {"detect": _detect, "fine-tune": _fine_tune, "review": _review}


def _sendable(item):
    """``item``, with an exception in it (a crash's, or a review item's) replaced by one that
    pickles when it does not; its traceback is printed here (it does not cross the pipe)."""
    if isinstance(item, BaseException):
        return _picklable(item)
    if isinstance(item, tuple) and len(item) == 2 and item[0] == "crash":
        return "crash", _picklable(item[1])
    return item


def _picklable(error: BaseException) -> BaseException:
    traceback.print_exception(error, file=sys.stderr)
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any exception can fail to pickle in its own way
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
