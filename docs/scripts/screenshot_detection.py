"""Screenshot of the detection widget after a run: boxes over a FITS composite and over a JPEG.

usage: xvfb-run -a -s "-screen 0 1400x900x24" python docs/scripts/screenshot_detection.py [MODEL|default] [OUT.png]

Simulates galaxy 5 of seed 2024 (FITS + JPEG), opens both through the plugin side by side,
runs the widget's Detect on both with MODEL (default: the packaged default model, at its
recommended threshold), writes the CSV next to the PNG and takes the screenshot; prints the CSV
boxes so they can be compared with the picture.
"""

import os
import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtCore import QTimer

from napari_clumps._detect_widget import DEFAULT_CHOICE, DetectionWidget, register_model_file
from napari_clumps.settings import CONFIG_DIR_VARIABLE
from napari_clumps.simulate import write_dataset

# a throwaway settings directory: the model files registered here must not join the user's model menus
os.environ.setdefault(CONFIG_DIR_VARIABLE, tempfile.mkdtemp(prefix="napari-clumps-settings-"))

ROOT = Path(__file__).resolve().parents[2]
MODEL = sys.argv[1] if len(sys.argv) > 1 else "default"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs/images/detection_widget.png"

tmp = Path(tempfile.mkdtemp())
write_dataset(tmp, n=6, seed=2024)
viewer = napari.Viewer(title="napari-clumps: detection")
viewer.window._qt_window.resize(1400, 860)
for offset, name in ((0, "sim_00005.fits"), (220, "sim_00005.jpg")):
    layer = viewer.open(tmp / name, plugin="napari-clumps")[0]
    layer.translate = layer.translate + [0, offset]  # side by side
widget = DetectionWidget(viewer)
viewer.window.add_dock_widget(widget, name="Detect clumps")
if MODEL == "default":
    widget.model.value = DEFAULT_CHOICE  # the slider takes the model's recommended threshold
else:
    register_model_file(MODEL)
    widget.model.value = str(Path(MODEL).resolve())
    widget.score.value = 0.5
widget.images.value = [viewer.layers["sim_00005.fits"], viewer.layers["sim_00005.jpg"]]
widget.run()


def shoot():
    if widget.worker is None or not widget.run_button.enabled:
        QTimer.singleShot(500, shoot)
        return
    csv = widget.export_csv(OUT.with_suffix(".csv"))
    print(Path(csv).read_text())
    viewer.reset_view()
    QTimer.singleShot(500, lambda: (viewer.window.screenshot(str(OUT), canvas_only=False), print(OUT), viewer.close()))


QTimer.singleShot(1000, shoot)
napari.run()
