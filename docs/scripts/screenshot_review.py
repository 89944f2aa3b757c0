"""Screenshot of the review queue: a folder of simulated galaxies, the packaged model's boxes,
two galaxies already reviewed, the third on screen with one box selected.

usage: xvfb-run -a -s "-screen 0 1400x900x24" python docs/scripts/screenshot_review.py [OUT.png]

Works in a temporary folder (relative paths only, so no local path shows in the picture).
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
from napari_clumps.inference import detect
from napari_clumps.model import packaged_model_path, read_provenance, recommended_threshold
from napari_clumps.review import ReviewSession
from napari_clumps.settings import CONFIG_DIR_VARIABLE
from napari_clumps.simulate import write_dataset

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "docs/images/review_queue.png"

os.chdir(tempfile.mkdtemp())
os.environ[CONFIG_DIR_VARIABLE] = str(Path("settings").resolve())  # never the user's own settings
write_dataset("galaxies", n=6, seed=2024)
for path in Path("galaxies").glob("*.jpg"):
    path.unlink()
threshold = recommended_threshold(read_provenance(packaged_model_path()))
found = detect("galaxies", score_threshold=threshold)
session = ReviewSession("galaxies", "labels.csv")
for item in session.items:
    session.set_boxes(item.name, found[found.image == item.name])
session.accept()
session.next()
session.accept()
session.next()
session.mark_no_clumps()
print(found.groupby("image").size())

viewer = napari.Viewer(title="napari-clumps: review queue")
viewer.window._qt_window.resize(1400, 860)
widget = ReviewWidget(viewer)
viewer.window.add_dock_widget(widget, name="Review clumps")
widget.open_queue("galaxies", "labels.csv")
# the fields as typed (relative), not resolved: no local path in the picture
widget.folder.line_edit.value = "galaxies"
widget.labels_csv.line_edit.value = "labels.csv"
layer = widget.boxes_layer()
layer.selected_data = {0}
print(widget.status.value)
print(Path("labels.csv").read_text())


def shoot():
    viewer.reset_view()  # the canvas has its final size only now
    QTimer.singleShot(500, lambda: (viewer.window.screenshot(str(OUT), canvas_only=False), print(OUT), viewer.close()))


QTimer.singleShot(1000, shoot)
napari.run()
