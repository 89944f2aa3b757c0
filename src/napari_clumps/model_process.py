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
through its process one at a time, in order; what a run yields comes back through a socket item by
item, as it is made. A run that is stopped ends at its next check (between images, or training
steps), as in a thread; a process that dies (killed, out of memory) ends its run with a
``("crash", error)`` item, and the next run starts a new process. What the process logs (this
package's loggers, the libraries' that log through Python's root logger, Python's warnings) is
logged again here, by the logger of the same name, at the levels this process's loggers had when
it started the process (a level changed later reaches the next process only).

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
import time
import traceback
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

#: Seconds between two looks at the runs' stop requests (``should_stop``), here in the GUI process.
POLL_S = 0.05

#: Seconds a new process has to connect back (Python's start and this module's import only).
CONNECT_S = 60.0

_DONE = "done"  # a run's last message from the process
_PLAIN = (str, int, float, type(None))  # a log record's fields that cross to the GUI process
_LOG = 0  # the run number of the process's log records (runs count from 1)

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
    """The process ended in the middle of a run (killed, out of memory, crashed), or at its start."""


class _Run:
    def __init__(self, should_stop):
        self.results = queue.SimpleQueue()
        self.should_stop = should_stop
        self.stop_sent = False


class ModelProcess:
    """A process that runs one job (see the module) for the runs sent to it.

    Started as ``python -c`` (not with multiprocessing's spawn, which runs the user's main script
    again in the child: a napari script without a ``__main__`` guard would open a second viewer
    there); it connects back through a :class:`multiprocessing.connection.Listener` with a
    one-time key. Here, a thread reads everything the process sends and hands each item to its
    run's queue, and another asks each run's ``should_stop()`` every :data:`POLL_S` and sends the
    stop of that run alone: a run's stop never reaches another, and it reaches the process even
    when the run's consumer is gone without closing it (a quit worker whose generator is never
    resumed). Nothing is locked while a run's items are consumed.
    """

    def __init__(self, job: str):
        import secrets
        import subprocess
        from multiprocessing.connection import Listener

        if job not in _JOBS:
            raise ValueError(f"{job}: no such job; the jobs are {', '.join(_JOBS)}")
        self.job = job
        key = secrets.token_bytes(32)
        with Listener(authkey=key) as listener:
            levels = _log_levels()
            command = f"from napari_clumps.model_process import main; main({job!r}, {listener.address!r}, {levels!r})"
            self._process = subprocess.Popen([sys.executable, "-c", command], stdin=subprocess.PIPE)
            with self._process.stdin as key_pipe:  # not in the command line, which others can read
                key_pipe.write(key.hex().encode() + b"\n")
            self._connection = _Sender(self._accept(listener))
        self._run_numbers = itertools.count(1)
        self._runs: dict[int, _Run] = {}
        self._runs_lock = threading.Lock()
        self._ended: ModelProcessEnded | None = None
        threading.Thread(target=self._read, name=f"napari-clumps {job} results", daemon=True).start()
        threading.Thread(target=self._watch_stops, name=f"napari-clumps {job} stops", daemon=True).start()

    def _accept(self, listener):
        """The process's connection, once it has connected back; ModelProcessEnded if it exited
        first or did not connect within :data:`CONNECT_S`."""
        accepted = queue.SimpleQueue()

        def accept():
            try:
                accepted.put(listener.accept())
            except Exception as error:  # noqa: BLE001 - closed below, or a wrong key
                accepted.put(error)

        threading.Thread(target=accept, name="napari-clumps accept", daemon=True).start()
        waited = 0.0
        while True:
            try:
                got = accepted.get(timeout=0.1)
            except queue.Empty:
                waited += 0.1
                if self._process.poll() is not None or waited > CONNECT_S:
                    self._process.kill()
                    self._process.wait()
                    raise ModelProcessEnded(
                        f"the {self.job} process did not start (exit code {self._process.returncode})"
                    ) from None
                continue
            if isinstance(got, Exception):
                self._process.kill()
                raise ModelProcessEnded(f"the {self.job} process did not connect: {got}") from got
            return got

    @property
    def pid(self) -> int:
        return self._process.pid

    def is_alive(self) -> bool:
        return self._ended is None and self._process.poll() is None

    def runs_ahead(self) -> int:
        """How many runs were sent here and have not ended (running, or waiting their turn): a
        run sent now waits behind them."""
        with self._runs_lock:
            return len(self._runs)

    def items(self, should_stop, **run):
        """The items of this process's job for ``run`` (the job's arguments but ``should_stop``),
        made in the process. ``should_stop()`` is asked by a thread here and passed on; closing
        this generator early (a quit worker) stops the run too."""
        this = _Run(should_stop)
        with self._runs_lock:
            ended = self._ended
            number = next(self._run_numbers)
            if ended is None:
                self._runs[number] = this
        if ended is not None:
            yield "crash", ended
            return
        ended_here = False  # the run's last item came: nothing for the process to drop
        try:
            try:
                folder = os.getcwd()
            except OSError:  # the GUI's folder was removed: its relative paths fail here too
                folder = None
            try:
                self._send(("run", number, folder, run))
            except OSError as error:  # the process is gone (a broken pipe)
                self._end(error)
            except Exception as error:  # noqa: BLE001 - a run that does not pickle: this run's failure
                yield "crash", error
                return
            while True:
                item = this.results.get()
                if item == _DONE:
                    ended_here = True
                    return
                yield item
        finally:
            with self._runs_lock:
                self._runs.pop(number, None)
            if not (ended_here or this.stop_sent):  # given up half-way: the process drops the rest
                self._send_stop(number)

    def _send(self, message) -> None:
        self._connection.send(message)

    def _send_stop(self, number: int) -> None:
        with contextlib.suppress(OSError):
            self._send(("stop", number))

    def _watch_stops(self) -> None:
        """The stop watcher's body: each run whose ``should_stop()`` says so is told to stop."""
        while self.is_alive():
            with self._runs_lock:
                runs = list(self._runs.items())
            for number, run in runs:
                if not run.stop_sent and run.should_stop():
                    run.stop_sent = True
                    self._send_stop(number)
            time.sleep(POLL_S)

    def _read(self) -> None:
        """The reading thread's body: every item to its run's queue, until the process ends."""
        while True:
            try:
                number, item = self._connection.recv()
            except Exception as error:  # noqa: BLE001 - ended, or an item that does not unpickle here
                self._end(error)
                return
            if number == _LOG:
                _log_here(item)
                continue
            with self._runs_lock:
                run = self._runs.get(number)
            if run is not None:
                run.results.put(item)

    def _end(self, error: BaseException) -> None:
        """The process is gone, or its pipe is broken: it is ended, and each run waiting on it
        ends with a crash saying so."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                self._process.kill()
        with contextlib.suppress(Exception):
            self._process.wait(timeout=5)
        why = str(error) or type(error).__name__
        ended = ModelProcessEnded(f"the {self.job} process ended (exit code {self._process.returncode}): {why}")
        with self._runs_lock:
            if self._ended is None:
                self._ended = ended
            for run in self._runs.values():
                run.results.put(("crash", self._ended))
                run.results.put(_DONE)
            self._runs.clear()

    def close(self, timeout: float = 5.0) -> None:
        """End the process: at once if it is idle, after its current image otherwise."""
        with self._runs_lock:
            numbers = list(self._runs)
        for number in numbers:
            self._send_stop(number)
        with contextlib.suppress(OSError):
            self._send(None)
        try:
            self._process.wait(timeout)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            self._process.kill()
            self._process.wait(timeout)


def _log_levels() -> dict[str, int]:
    """The levels the process's loggers start at, as this process's are now: the root's (what
    the libraries log), this package's, and those set on loggers under it."""
    package = logging.getLogger(__package__)
    levels = {"": logging.getLogger().getEffectiveLevel(), __package__: package.getEffectiveLevel()}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith(f"{__package__}.") and isinstance(logger, logging.Logger) and logger.level:
            levels[name] = logger.level
    return levels


def _log_here(fields: dict) -> None:
    """A record the process logged, logged again here by the logger of its name (with its
    handlers: a user's log file, napari's log window). Never raises: the reading thread that
    calls it serves every run."""
    try:
        record = logging.makeLogRecord(fields)
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    except Exception:  # noqa: BLE001 - a handler's or filter's fault: said as logging says its own
        sys.stderr.write(f"napari-clumps: a log record of the model's process could not be logged: {fields}\n")


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


def main(job: str, address, log_levels: dict[str, int] | None = None) -> None:
    """The process's body (started by :class:`ModelProcess`): connect back with the key read
    from stdin, then run what arrives, one run at a time, until ``None`` or the GUI process is
    gone. What it logs at ``log_levels`` (logger name -> level) or above goes back too."""
    import signal
    from multiprocessing.connection import Client

    connection = _Sender(Client(address, authkey=bytes.fromhex(sys.stdin.readline().strip())))
    _log_to(connection, log_levels or {"": logging.WARNING})
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the GUI's terminal is the GUI's
    with contextlib.suppress(AttributeError, OSError):  # not on Windows; refused: runs as it is
        # below the GUI's priority: where cores are few, the GUI's drawing (on the CPU under
        # software OpenGL) goes first, and the model takes what is left
        os.nice(NICENESS)
    runs = queue.SimpleQueue()
    stopped: set[int] = set()
    threading.Thread(target=_receive, args=(connection, runs, stopped), daemon=True).start()
    started = False
    while True:
        message = runs.get()
        if message is None:
            return
        _, number, folder, run = message
        if folder is not None:
            with contextlib.suppress(OSError):  # the GUI's folder is gone: its relative paths fail there too
                os.chdir(folder)
        if not started:  # here, not at the start: a failed import is the first run's crash, said in the GUI
            started = _start_libraries(connection, number, job)
            if not started:
                continue
        try:
            if not _run(_JOBS[job], connection, number, run, stopped):
                os._exit(1)  # a process whose CUDA failed serves nothing more (tearing down CUDA may hang)
        except OSError:  # the GUI process ended (a broken pipe)
            return


class _Sender:
    """A connection whose sends go one at a time, from whichever thread: in the GUI process, the
    runs' and the stop watcher's; in the model's, the run's and any thread that logs. A message
    is pickled before the lock is taken: pickling may warn, and in the model's process the
    warning's log record is sent too (through this, in the same thread)."""

    def __init__(self, connection):
        from multiprocessing.reduction import ForkingPickler

        self._connection = connection
        self._lock = threading.Lock()
        self._pickle = ForkingPickler.dumps  # what Connection.send does; recv() undoes it

    def send(self, message) -> None:
        data = self._pickle(message)
        with self._lock:
            self._connection.send_bytes(data)

    def recv(self):
        return self._connection.recv()


def _log_to(connection: _Sender, levels: dict[str, int]) -> None:
    """Every record logged in the process from now on (Python's warnings included) goes back
    through ``connection``: formatted here, as :class:`logging.handlers.QueueHandler` prepares
    a record for another process, and sent as its plain fields only (what ``extra=`` added may
    not pickle here, or unpickle there). Not sent: a record logged while sending one (a
    warning of the pickling), and a record of a forked child (a data loader's worker: its
    messages would cut into this process's on the shared socket)."""
    from logging.handlers import QueueHandler

    this_process = os.getpid()
    sending = threading.local()

    class Outbox:
        @staticmethod
        def put_nowait(record: logging.LogRecord) -> None:
            if os.getpid() != this_process or getattr(sending, "now", False):
                return
            fields = {key: value for key, value in vars(record).items() if isinstance(value, _PLAIN)}
            sending.now = True
            try:
                connection.send((_LOG, fields))
            except OSError:  # the GUI process is gone: nobody to tell
                pass
            finally:
                sending.now = False

    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(Outbox())]
    logging.captureWarnings(True)


def _receive(connection, runs, stopped) -> None:
    """The process's reading thread: runs to the queue, stops to the set; the GUI gone: exit."""
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            os._exit(0)  # the GUI process ended: nothing is left to show or write (files are atomic)
        if message is None:
            runs.put(None)
            return
        if message[0] == "stop":
            stopped.add(message[1])
        else:
            runs.put(message)


def _start_libraries(connection, number: int, job: str) -> bool:
    try:
        from .model import import_libraries

        import_libraries()
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), cores_beside_a_gui()))
        log.info(
            "the %s process (pid %d) runs PyTorch %s on %d threads, at niceness %d",
            job,
            os.getpid(),
            torch.__version__,
            torch.get_num_threads(),
            os.nice(0) if hasattr(os, "nice") else 0,
        )
    except Exception as error:  # noqa: BLE001 - PyTorch broken or missing: said as the run's crash
        connection.send((number, _sendable(("crash", error))))
        connection.send((number, _DONE))
        return False
    return True


def _run(job, connection, number: int, run: dict, stopped) -> bool:
    """Run ``job``; its items, then the run's end, go back. Whether the process can serve
    another run (not once CUDA has failed: its errors stay for the process's life)."""

    def send(item):
        connection.send((number, _sendable(item)))

    try:
        job(send, lambda: number in stopped, **run)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - a bug or a torch error: the run's last item says it
        send(("crash", error))
    finally:
        usable = _give_back_gpu_memory()
    connection.send((number, _DONE))
    return usable


def _give_back_gpu_memory() -> bool:
    """Between runs: the GPU memory PyTorch keeps cached for this process's next run goes back to
    the driver, for the other jobs' processes (and other programs) on the same GPU; the model
    itself stays loaded there. False if CUDA fails (after an illegal memory access it fails for
    the rest of the process's life)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return True
    try:
        torch.cuda.empty_cache()
    except Exception as error:  # noqa: BLE001 - torch.AcceleratorError, RuntimeError: CUDA is broken
        log.warning("CUDA failed (%s): this process ends; the next run starts a new one", error)
        return False
    return True


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
    """``item``, with an exception in it (a crash's, or a review item's) made one that unpickles
    in the GUI process without importing anything there (a built-in type, else a RuntimeError
    naming the type), its traceback attached as a note (it is also printed here)."""
    if isinstance(item, BaseException):
        return _picklable(item)
    if isinstance(item, tuple) and len(item) == 2 and item[0] == "crash":
        return "crash", _picklable(item[1])
    return item


def _picklable(error: BaseException) -> BaseException:
    import builtins

    text = "".join(traceback.format_exception(error))
    sys.stderr.write(text)
    if type(error).__module__ != "builtins" or getattr(builtins, type(error).__name__, None) is not type(error):
        error = RuntimeError(f"{type(error).__name__}: {error}")
    try:
        error = pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - a built-in exception with odd arguments
        error = RuntimeError(f"{type(error).__name__}: {error}")
    error.add_note(f"in the model's process:\n{text}")
    return error
