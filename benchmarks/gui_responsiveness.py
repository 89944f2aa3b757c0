"""How long the GUI thread stalls while the Detect and Fine-tune widgets run (target: < 200 ms).

usage: xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/gui_responsiveness.py
       [--n 8] [--detect-runs 3] [--napari-adds 3] [--train-images 4] [--train-epochs 1] [--train-runs 2]
       [--label NAME] [--out docs/benchmarks/gui_responsiveness.md]

In a fresh process (so that each widget's first run also starts the process its model runs in,
napari_clumps.model_process, as a user's first click does): a
shown napari viewer with ``--n`` simulated 200 px FITS galaxies, both widgets docked. A heartbeat
timer ticks every 10 ms on the GUI thread (tests/heartbeat.py); the gap between two ticks less
10 ms is a stall. Measured: Detect on every image ``--detect-runs`` times (the first makes the
clumps layers, the next ones refill them), then a ``--train-epochs`` fine-tuning of the packaged model
on ``--train-images`` galaxies with their true boxes, ``--train-runs`` times; and the same heartbeat
with nothing running (what the machine itself costs), and while napari alone adds a layer like a
clumps layer and shows it a frame later, as Detect does for a new image, with no run going on
(napari's and vispy's own share of a first Detect's stalls, which no widget code can lower). For
the longest stall of each run, what the GUI thread was doing (sampled every 100 ms by a watchdog
thread).

Under Xvfb, OpenGL is Mesa's llvmpipe (drawing on the CPU): repaints cost far more than on a GPU,
and on 2 cores the GUI thread shares them with the model's process; the stalls here are upper
bounds of what a desktop sees. ``--not-shown`` leaves the viewer hidden: no OpenGL drawing at
all, so what remains is the GUI thread's Python work (the widgets', napari's) and the GIL.
``--label`` names the section written (several labels share the page: e.g. the code before a
change).
"""

import argparse
import gc
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the heartbeat helper
from heartbeat import Heartbeat  # noqa: E402
from report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition, timeout: float = 900.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the run did not end")
        QApplication.processEvents()
        time.sleep(0.002)


#: How long each call of the widgets' Inbox took (s): the widgets' own share of the GUI thread.
HANDLED: list[float] = []


def time_the_inbox() -> bool:
    """Time every item the widgets' Inbox runs (not in the code before it existed)."""
    try:
        from napari_clumps._background import Inbox
    except ImportError:
        return False
    run_next = Inbox._run_next

    def timed(self):
        began = time.perf_counter()
        try:
            run_next(self)
        finally:
            HANDLED.append(time.perf_counter() - began)

    Inbox._run_next = timed
    return True


#: How long each full garbage collection took (s), in any thread: each holds the GIL throughout.
FULL_COLLECTIONS: list[float] = []


def time_full_collections() -> None:
    began = {}

    def note(phase, info):
        if phase == "start":
            began[threading.get_ident()] = time.perf_counter()
        elif info["generation"] == 2:
            FULL_COLLECTIONS.append(time.perf_counter() - began.pop(threading.get_ident()))

    gc.callbacks.append(note)


def measure(what: str, start, done) -> dict:
    """Start a run, serve the event loop until ``done()`` (or for ``done`` seconds); the
    heartbeat's record of it. The viewer first finishes what came before (the last result's
    repaint, a CSV's boxes): each row measures its own run."""
    wait_until(_after(0.5))
    if isinstance(done, (int, float)):
        done = _after(done)
    HANDLED.clear()
    FULL_COLLECTIONS.clear()
    with Heartbeat(where=True) as beat:
        began = time.perf_counter()
        start()
        wait_until(done)
        wall = time.perf_counter() - began
    where = beat.where_longest(frames=2)
    row = {
        "what": what,
        "wall": wall,
        "longest": beat.longest,
        "over_100": len(beat.stalls(0.1)),
        "over_200": len(beat.stalls(0.2)),
        "where": where[len(where) // 2] if where else "",  # a sample from the middle of the stall
        "handler": max(HANDLED, default=None),
        "collections": list(FULL_COLLECTIONS),
    }
    longest = f"longest stall {beat.longest * 1000:.0f} ms"
    print(f"{what}: {wall:.1f} s, {longest}, {row['over_200']} over 200 ms", flush=True)
    for line in where:
        print("   ", line, flush=True)
    return row


def galaxies_in_a_viewer(n: int, name: str, show: bool, size=None):
    """A napari viewer (``size``: its window's, before anything is open) with ``n`` simulated FITS
    galaxies (seed 5) opened by the plugin; and their folder and truth CSV. The widgets'
    settings go to a fresh folder first: the model files a run trains are remembered, and must
    not land in the user's own settings."""
    from napari_clumps.settings import CONFIG_DIR_VARIABLE

    os.environ[CONFIG_DIR_VARIABLE] = tempfile.mkdtemp(prefix=f"{name}_settings_")
    import napari

    from napari_clumps.simulate import write_dataset

    folder = Path(tempfile.mkdtemp(prefix=f"{name}_"))
    truth_csv = write_dataset(folder, n=n, seed=5)
    viewer = napari.Viewer(show=show)
    if size is not None:
        viewer.window._qt_window.resize(*size)
    for path in sorted(folder.glob("*.fits")):
        viewer.open(path, plugin="napari-clumps")
    return viewer, folder, truth_csv


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8, help="galaxies open in the viewer (Detect runs on all)")
    parser.add_argument("--detect-runs", type=int, default=3)
    parser.add_argument("--napari-adds", type=int, default=3, help="layers napari adds alone, after the Detect runs")
    parser.add_argument("--train-images", type=int, default=4)
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--train-runs", type=int, default=2)
    parser.add_argument(
        "--not-shown",
        action="store_true",
        help="the viewer not shown: nothing is drawn, so the stalls are the GUI thread's Python work alone",
    )
    parser.add_argument("--label", default="current")
    parser.add_argument("--out", default=ROOT / "docs/benchmarks/gui_responsiveness.md")
    args = parser.parse_args()
    inbox = time_the_inbox()
    time_full_collections()

    import napari
    from napari.layers import Image

    from napari_clumps._detect_widget import DetectionWidget
    from napari_clumps._train_widget import FineTuneWidget
    from napari_clumps.detections import read_detections, write_detections

    viewer, folder, truth_csv = galaxies_in_a_viewer(
        args.n, "gui_responsiveness", show=not args.not_shown, size=(1400, 900)
    )
    truth = read_detections(truth_csv)
    detect = DetectionWidget(viewer)
    train = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(detect, name="Detect clumps")
    viewer.window.add_dock_widget(train, name="Fine-tune")
    wait_until(_after(1.0))  # shown and painted once before anything is measured
    load = os.getloadavg()[0]

    rows = [measure("nothing running (2 s)", lambda: None, 2.0)]
    rows.append(measure("one repaint, nothing running (zoom in)", lambda: _zoom(viewer), 1.0))
    for run in range(1, args.detect_runs + 1):
        first = " (starts the detection process: PyTorch, the model)" if run == 1 else ""
        what = f"Detect {run}: {args.n} images, {'makes' if run == 1 else 'refills'} the clumps layers{first}"
        rows.append(measure(what, detect.run, lambda: detect.run_button.enabled))
    for image in [layer for layer in viewer.layers if isinstance(layer, Image)][
        : args.napari_adds
    ]:  # after Detect 1: its first layers are not made ahead
        rows.append(
            measure(
                "napari alone, nothing running: a layer like a clumps layer added, shown a frame later",
                lambda image=image: _add_a_boxes_layer(viewer, image),
                1.0,
            )
        )
    names = sorted(p.name for p in folder.glob("*.fits"))[: args.train_images]
    detect.import_csv(write_detections(truth[truth.image.isin(names)], folder / "truth.csv"))
    train.images.value = [viewer.layers[name] for name in names]
    train.epochs.value, train.val_fraction.value = args.train_epochs, 0.0
    for run in range(1, args.train_runs + 1):
        train.output.value = folder / f"tuned{run}.safetensors"
        epochs = f"{args.train_epochs} epoch{'s' if args.train_epochs > 1 else ''}"
        first = " (starts the fine-tuning process: PyTorch, the model)" if run == 1 else ""
        what = f"Fine-tune {run}: {epochs} on {len(names)} images{first}"
        rows.append(measure(what, train.start, lambda: train.train_button.enabled))
    viewer.close()

    import torch

    from napari_clumps.model_process import NICENESS, cores_beside_a_gui

    lines = [
        f"{platform.machine()}, {os.cpu_count()} cores (load average {load:.1f} at the start), "
        f"torch {torch.__version__} on {cores_beside_a_gui()} threads in the model's processes (niceness "
        f"{NICENESS}), napari {napari.__version__}, "
        f"display {os.environ.get('DISPLAY', '?')} (Xvfb: Mesa llvmpipe)"
        + (", **the viewer not shown** (nothing drawn: the GUI thread's Python work alone)" if args.not_shown else "")
        + ". Made by "
        + f"`python {shlex.join(['benchmarks/gui_responsiveness.py', *sys.argv[1:]])}`. A stall is a gap between "
        "two ticks of a 10 ms timer on the GUI thread, less 10 ms; the widgets' longest handler is the longest "
        "call the widgets made for what a worker sent (the rest of a stall is napari and vispy: layers, repaints); "
        "a full garbage collection holds the GIL, whichever thread runs it.",
        "",
        "| run | wall (s) | longest stall (ms) | stalls > 100 ms | stalls > 200 ms | widgets' longest handler (ms) "
        "| full garbage collections: how many, the longest (ms) | the GUI thread in the longest stall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        where = row["where"].replace("|", "/")
        handler = "n/a" if not inbox else "-" if row["handler"] is None else f"{row['handler'] * 1000:.0f}"
        lines.append(
            f"| {row['what']} | {row['wall']:.1f} | {row['longest'] * 1000:.0f} | {row['over_100']} | "
            f"{row['over_200']} | {handler} | {collections(row['collections'])} | {where} |"
        )
    write_section(
        args.out,
        args.label,
        f"### {args.label}\n\n" + "\n".join(lines),
        title="# GUI responsiveness while Detect and Fine-tune run\n\nMade by `benchmarks/gui_responsiveness.py` "
        "(its docstring says what is measured); the faults and fixes behind the numbers: docs/reliability.md. "
        "Under Xvfb every repaint is drawn on the CPU (Mesa llvmpipe), on the same 2 cores as PyTorch: the stalls "
        "left are mostly napari's own work for a new or changed layer and the repaint after it.",
    )
    print("\n".join(lines))


def collections(durations: list[float]) -> str:
    return f"{len(durations)}, {max(durations) * 1000:.0f}" if durations else "0"


def _add_a_boxes_layer(viewer, image_layer) -> None:
    """What Detect does with a new image's boxes, done by napari alone: a Shapes layer with
    scores as text, inserted hidden above its image, shown once that is drawn."""
    import numpy as np
    from napari.layers import Shapes
    from qtpy.QtCore import QTimer

    from napari_clumps._background import FRAME_MS
    from napari_clumps._layers import boxes_layer

    corners = np.random.default_rng(0).uniform(20, 150, (6, 2))
    data, kwargs, _ = boxes_layer(
        np.hstack([corners, corners + 10]),
        ["clump"] * 6,
        np.linspace(0.3, 0.9, 6),
        name=f"{image_layer.name} boxes",
        image_kwargs={"scale": image_layer.scale, "translate": image_layer.translate},
    )
    layer = Shapes(data, **kwargs, visible=False)
    viewer.layers.insert(viewer.layers.index(image_layer) + 1, layer)
    QTimer.singleShot(FRAME_MS, lambda: setattr(layer, "visible", True))


def _zoom(viewer):
    viewer.camera.zoom *= 1.25


def _after(seconds: float):
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


if __name__ == "__main__":
    main()
