"""Screenshots of the whole loop in the review queue, for docs/walkthrough.md: open a folder,
detect, order by what teaches most, review, fine-tune on the reviewed galaxies, re-detect the rest.

usage: xvfb-run -a -s "-screen 0 1400x900x24" python docs/scripts/screenshot_walkthrough.py [OUT_DIR]

Drives a real napari window as a user would, through the widget's own methods (the ones its
buttons and keys call), on 12 simulated FITS galaxies in a temporary folder (relative paths only,
so that no local path shows). The "corrections" are the simulation's true boxes, so the
fine-tuned model's cross-validated F1 in the last picture is measured, not staged. Writes
walkthrough_1_open.png ... walkthrough_5_fine_tuned.png and prints each step's status line.
"""

import os
import sys
import tempfile
from pathlib import Path

import torchvision.ops  # noqa: F401  (before napari's OpenGL: see tests/conftest.py)

# isort: split
import napari
from qtpy.QtCore import QTimer

from napari_clumps._review_widget import ReviewWidget
from napari_clumps.detections import box_array, read_detections
from napari_clumps.settings import CONFIG_DIR_VARIABLE
from napari_clumps.simulate import write_dataset

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "docs" / "images"
N_GALAXIES, N_REVIEWED = 12, 6

os.chdir(tempfile.mkdtemp())
os.mkdir("survey")  # the folder name the model menu shows next to a model file
os.chdir("survey")
os.environ[CONFIG_DIR_VARIABLE] = str(Path("settings").resolve())  # never the user's own settings
truth = read_detections(write_dataset("galaxies", n=N_GALAXIES, seed=2025))
for path in Path("galaxies").glob("*.jpg"):
    path.unlink()

viewer = napari.Viewer(title="napari-clumps: review queue")
viewer.window._qt_window.resize(1400, 860)
widget = ReviewWidget(viewer)
viewer.window.add_dock_widget(widget, name="Review clumps")
# the fields as typed (relative), not resolved: no local path in the picture
widget.folder.line_edit.value = "galaxies"
widget.labels_csv.line_edit.value = "labels.csv"


def shoot(name, then):
    def take():
        path = OUT / f"walkthrough_{name}.png"
        viewer.window.screenshot(str(path), canvas_only=False)
        print(f"{path.name}: {widget.status.value!r}", flush=True)
        QTimer.singleShot(200, then)

    viewer.reset_view()
    QTimer.singleShot(700, take)


def when_idle(then):
    """Call ``then`` once the widget's worker (detection or fine-tuning) has finished."""
    if widget.worker is None:
        then()
    else:
        QTimer.singleShot(500, lambda: when_idle(then))


def step_open():
    widget.open_queue("galaxies", "labels.csv")
    shoot("1_open", step_detect)


def step_detect():
    widget.detect_unreviewed()
    when_idle(lambda: shoot("2_detected", step_order))


def step_order():
    widget.order_by_priority()
    when_idle(lambda: shoot("3_ordered", step_review))


def step_review():
    session = widget.session
    for _ in range(N_REVIEWED):  # corrected to the truth, then accepted (key a)
        name = session.item.name
        rows = truth[truth.image == name]
        session.set_boxes(name, box_array(rows), list(rows.label))  # hand boxes, as a person draws them
        widget._refill(name)  # what the layer shows after the same edits made with the mouse
        widget.accept()
    widget.previous_image()
    widget.boxes_layer().selected_data = {0}
    shoot("4_review", step_fine_tune)


def step_fine_tune():
    widget.next_image()
    widget.fine_tune_on_reviewed()
    when_idle(lambda: shoot("5_fine_tuned", viewer.close))


QTimer.singleShot(1000, step_open)
napari.run()
