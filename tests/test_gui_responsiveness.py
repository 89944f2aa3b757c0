"""The event loop keeps serving while Detect and Train run (docs/reliability.md, GUI part).

A heartbeat timer ticks every 10 ms on the GUI thread (tests/heartbeat.py) through real runs
with the packaged model: detection of eight simulated galaxies twice (the second run refills the
clumps layers of the first), and a one-epoch fine-tuning on four of them with their true boxes.
Both are slow (16 detections, a training: ~15 s each on 2 cores).

The bound asserted is not the speed target: it is one that only a frozen GUI breaks. Before the
fixes the longest stall of the second detection was ~5 s (every result handled in one go, each
removed layer costing napari a full gc.collect()); the target, under 200 ms, is measured and
recorded by benchmarks/gui_responsiveness.py (docs/benchmarks/gui_responsiveness.md), not
asserted: a loaded 2-core CI machine under coverage stretches every stall several times.
"""

import pytest
from heartbeat import Heartbeat

pytestmark = pytest.mark.gui

#: The longest stall (s) a test lets pass: several times what a loaded CI machine measures, well
#: under a frozen GUI's (see the module docstring).
FROZEN = 1.5


@pytest.fixture
def galaxies_in_viewer(make_napari_viewer, simulated):
    """A viewer with the eight simulated FITS galaxies and the detection widget, docked.

    Not shown: under Xvfb the canvas is drawn by Mesa on the CPU, and a repaint there, rarely,
    took tens of seconds while PyTorch ran (docs/reliability.md): a test of this code must not
    hang on that. The benchmark measures with the viewer shown."""
    from napari_clumps._detect_widget import DetectionWidget

    folder, truth = simulated
    viewer = make_napari_viewer()
    for path in sorted(folder.glob("*.fits")):
        viewer.open(path, plugin="napari-clumps")
    widget = DetectionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget, folder, truth


@pytest.mark.slow
def test_detection_keeps_the_event_loop_serving(galaxies_in_viewer, qtbot):
    viewer, widget, folder, _ = galaxies_in_viewer
    assert len(widget.images.value) == 8
    longest = []
    for _ in range(2):  # the first run makes the clumps layers, the second refills them
        with Heartbeat() as beat:
            widget.run()
            qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
        longest.append(beat.longest)
    assert widget.status.value.startswith("done: 8 of 8 images")
    assert max(longest) < FROZEN, f"longest stalls {longest} s"


@pytest.mark.slow
def test_fine_tuning_keeps_the_event_loop_serving(galaxies_in_viewer, qtbot, tmp_path):
    from napari_clumps._train_widget import FineTuneWidget
    from napari_clumps.detections import write_detections

    viewer, detect_widget, folder, truth = galaxies_in_viewer
    names = sorted(p.name for p in folder.glob("*.fits"))[:4]
    detect_widget.import_csv(write_detections(truth[truth.image.isin(names)], tmp_path / "truth.csv"))
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.images.value = [viewer.layers[name] for name in names]
    widget.epochs.value = 1
    widget.val_fraction.value = 0.0
    widget.output.value = tmp_path / "tuned.safetensors"
    with Heartbeat() as beat:
        widget.start()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    assert widget.status.value.startswith("saved ")
    assert beat.longest < FROZEN, f"longest stall {beat.longest:.2f} s"


def _in_a_fresh_interpreter(script: str) -> str:
    """Run ``script`` in a new Python (the collector's state is the process's, and this one has
    imported PyTorch already); its output."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_pytorch_is_imported_once_without_a_collection_then_frozen():
    """A widget's first worker imports PyTorch with the collector off (each full collection
    during the import walked ~10^5 new objects, 0.4-0.7 s with the GIL held) and freezes what is
    alive, so that the young-generation collection that follows does not walk them either."""
    frozen = _in_a_fresh_interpreter("""
import gc, sys
from napari_clumps._background import import_pytorch_without_gc_pauses
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
assert gc.get_freeze_count() == 0
import_pytorch_without_gc_pauses()
assert collections == [], f"collections during the import: {collections}"
assert "torch" in sys.modules and "timm" in sys.modules, "the libraries are imported"
assert gc.isenabled(), "the collector is on again"
frozen = gc.get_freeze_count()
import_pytorch_without_gc_pauses()
assert gc.get_freeze_count() == frozen, "once per process"
print(frozen)
""")
    assert int(frozen.split()[-1]) > 100_000


def test_a_collector_turned_off_stays_off():
    _in_a_fresh_interpreter("""
import gc; gc.disable()
from napari_clumps._background import import_pytorch_without_gc_pauses
import_pytorch_without_gc_pauses()
assert not gc.isenabled() and gc.get_freeze_count() > 0
""")


def test_what_a_run_froze_is_collectable_again_once_a_layer_is_removed(make_napari_viewer):
    """A worker's run freezes what is alive (with PyTorch on all cores but one while it runs); it
    stays frozen after the run (the GUI thread still shows the last results, then the user edits
    boxes) until a layer is removed: napari collects then, and a reference cycle that died in
    between is freed, not pinned for the session."""
    import gc
    import weakref

    import numpy as np
    import torch

    from napari_clumps._background import while_workers_run
    from napari_clumps._detect_widget import DetectionWidget

    class Node:
        pass

    viewer = make_napari_viewer()
    DetectionWidget(viewer)  # connects the unfreezing to the viewer's layer list
    layer = viewer.add_image(np.zeros((8, 8)), name="galaxy")
    cycle = Node()
    cycle.me = cycle
    alive = weakref.ref(cycle)
    threads = torch.get_num_threads()
    with while_workers_run():
        assert gc.get_freeze_count() > 0
        with while_workers_run():  # a second widget's worker
            pass
        assert torch.get_num_threads() <= threads
    assert torch.get_num_threads() == threads
    del cycle
    gc.collect()
    assert gc.get_freeze_count() > 0 and alive() is not None, "frozen after the run, not collected"
    viewer.layers.remove(layer)
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None, "collected once a layer was removed"
