"""Detection on a Dask cluster (``dask.distributed``): many processes or machines, one output.

:func:`iter_detections_on_cluster` splits the files into chunks, runs each chunk as one task on a
worker (:func:`~napari_clumps.inference.iter_detections` there) and yields each image's
:class:`~napari_clumps.inference.ImageDetections` as chunks finish, in the order they finish; the
caller writes them (one :class:`~napari_clumps.detections.DetectionsWriter`, in this process).

- The model travels as its name or file path, never as a network: each worker process loads it
  on its first chunk and keeps it (:func:`worker_detector`), so a worker loads it once.
- Each worker picks its own device (``auto``: its GPU if it has one).
- A chunk that raises is retried (``retries``); a worker that dies has its chunks run again
  elsewhere (the scheduler's doing). A chunk that still fails gives each of its images a
  ``failed`` row with the reason, and the run goes on.
- The rows are those of a one-process run (the same images, tables and numbers); only their order
  in the file differs.

``dask.distributed`` is optional (``pip install "napari-clumps[dask]"``); it is imported here only
inside the functions that need it, so ``import napari_clumps`` never imports it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

#: Images per task: large enough that scheduling costs little, small enough to share the work.
DEFAULT_CHUNK_SIZE = 8
#: Times a chunk that raises is run again before its images are reported failed.
DEFAULT_RETRIES = 2
INSTALL_HINT = 'pip install "napari-clumps[dask]"'

# Detectors loaded in this (worker) process: (model, device, file stamp) -> Detector.
_WORKER_DETECTORS: dict = {}


class DaskMissingError(ImportError):
    """``dask.distributed`` is not installed; ``str()`` says how to install it."""


def require_distributed():
    """The ``distributed`` module, or :class:`DaskMissingError` (one line, with the fix)."""
    try:
        import distributed
    except ImportError as error:
        raise DaskMissingError(
            f"--workers and --scheduler need dask.distributed, which is not installed ({error}); {INSTALL_HINT}"
        ) from None
    return distributed


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None):
    """A ``distributed.Client``: of a new ``LocalCluster`` of ``workers`` processes (one thread
    each), or of the running scheduler at ``scheduler`` (``tcp://host:8786``). The local cluster
    is closed on the way out; an outside one is left running."""
    if (workers is None) == (scheduler is None):
        raise ValueError("give either workers or scheduler")
    distributed = require_distributed()
    if scheduler is not None:
        with distributed.Client(scheduler) as client:
            yield client
        return
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    import logging

    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with distributed.Client(cluster) as client:
            # Ctrl-C in a terminal reaches the whole process group: the workers leave it to this
            # process, which stops the run cleanly and then closes them.
            client.register_plugin(_ignore_sigint_plugin(distributed), name="napari-clumps-ignore-sigint")
            yield client
    finally:
        # A worker slow to exit is killed, which is all we want; no warning for that.
        nanny = logging.getLogger("distributed.nanny")
        level = nanny.level
        nanny.setLevel(logging.ERROR)
        try:
            cluster.close()
        finally:
            nanny.setLevel(level)


def _ignore_sigint_plugin(distributed):
    """A worker plugin: the worker (and every one started again in its place) ignores SIGINT."""

    class IgnoreSigint(distributed.WorkerPlugin):
        def setup(self, worker) -> None:
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreSigint()


def worker_detector(model, device: str = "auto"):
    """The detector ``model`` names, on this process's ``device`` (``auto``: its GPU if it has
    one), loaded on the first call and kept for the next ones (a changed model file is reloaded)."""
    from .model import get_detector, select_device

    chosen = str(select_device(device))
    path = Path(str(model)) if model is not None else None
    stamp = None
    if path is not None and path.is_file():
        stat = path.stat()
        stamp = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    key = (None if model is None else str(model), chosen, stamp)
    if key not in _WORKER_DETECTORS:
        _WORKER_DETECTORS.clear()  # one model at a time per worker
        _WORKER_DETECTORS[key] = get_detector(model, chosen)
    return _WORKER_DETECTORS[key]


def worker_device(device: str = "auto") -> str:
    """The device a worker uses (run on each worker to report it)."""
    from .model import select_device

    return str(select_device(device))


def _detect_chunk(chunk, model, device, options):
    """One task: the images of ``chunk`` (``(path, name)`` pairs) on this worker."""
    from .inference import iter_detections

    detector = worker_detector(model, device)
    paths = [path for path, _ in chunk]
    names = [name for _, name in chunk]
    used = str(next(detector.network.parameters()).device)
    return list(iter_detections(paths, detector, names=names, device=used, **options))


def chunked(items, size: int) -> list[list]:
    """``items`` in consecutive chunks of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, not {size}")
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def iter_detections_on_cluster(
    paths_and_names,
    model=None,
    client=None,
    *,
    device: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    retries: int = DEFAULT_RETRIES,
    should_stop=None,
    **options,
):
    """Yield an :class:`~napari_clumps.inference.ImageDetections` per image as chunks finish.

    ``paths_and_names``: ``(path, name)`` pairs (what :func:`~napari_clumps.io.find_images`
    gives) or paths (named as given); the paths must be readable by the workers (a shared file
    system). ``model``: a packaged model's name or a model file the workers can read (None: the
    default model) - not a :class:`~napari_clumps.model.Detector`, which would be shipped with
    every task. ``client``: a ``distributed.Client``. ``device``: what each worker uses
    (``auto``: its GPU if it has one). ``options``: those of
    :func:`~napari_clumps.inference.iter_detections` (``score_threshold`` defaults to the
    model's, as there). A chunk that raises is run again up to ``retries`` times; one that still
    fails (or whose workers keep dying) yields a failed outcome for each of its images, with the
    reason. ``should_stop()`` is polled as chunks finish; once it says True the chunks not yet
    finished are cancelled and nothing more is yielded.
    """
    from .inference import ImageDetections
    from .model import Detector

    distributed = require_distributed()
    if client is None:
        raise ValueError("a distributed.Client is needed (napari_clumps.distributed.dask_client makes one)")
    if isinstance(model, Detector):
        raise TypeError(
            "iter_detections_on_cluster takes a model name or file, which each worker loads once; "
            "a Detector object would be sent with every task"
        )
    if "num_workers" in options and options["num_workers"]:
        raise ValueError("num_workers (reading processes) does not apply on a cluster; each worker reads its own")
    options.pop("num_workers", None)
    pairs = [
        (str(item), str(item)) if isinstance(item, (str, Path)) else (str(item[0]), str(item[1]))
        for item in paths_and_names
    ]
    model = None if model is None else str(model)
    futures = {}
    for chunk in chunked(pairs, chunk_size):
        future = client.submit(_detect_chunk, chunk, model, device, options, retries=retries, pure=False)
        futures[future] = chunk
    pending = distributed.as_completed(list(futures))
    try:
        for future in pending:
            chunk = futures.pop(future)
            try:
                results = future.result()
            except Exception as error:  # noqa: BLE001 - a failed chunk never costs the others
                reason = " ".join(str(error).split())
                why = f"{type(error).__name__}" + (f": {reason}" if reason else "")
                results = [
                    ImageDetections(name, error=f"{path}: failed on the cluster after {retries} retries ({why})")
                    for path, name in chunk
                ]
            future.release()
            yield from results
            if should_stop is not None and should_stop():
                return
    finally:
        if futures:
            client.cancel(list(futures))
