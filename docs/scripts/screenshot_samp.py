"""Screenshot of the detection widget's Send to TOPCAT / Send to DS9 buttons, with the sky position
under the cursor in the status bar.

usage: xvfb-run -a -s "-screen 0 1400x900x24" python docs/scripts/screenshot_samp.py [OUT.png]

Simulates galaxy 5 of seed 2024 (a FITS file with a WCS), opens it through the plugin, loads its
truth boxes with the widget's "Load boxes from CSV" (no model is run), puts the cursor over the
first box and shows napari's status for that position; prints the status text and the box's
catalogue RA/Dec so that they can be compared with the picture. No SAMP hub is needed.
"""

import os
import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtCore import QTimer

from napari_clumps._detect_widget import DetectionWidget
from napari_clumps.detections import read_detections, write_detections
from napari_clumps.pixels import boxes_to_napari_rectangles
from napari_clumps.settings import CONFIG_DIR_VARIABLE
from napari_clumps.simulate import write_dataset

# a throwaway settings directory: the CSV path chosen here must not become the user's remembered one
os.environ.setdefault(CONFIG_DIR_VARIABLE, tempfile.mkdtemp(prefix="napari-clumps-settings-"))

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs/images/samp_widget.png"

tmp = Path(tempfile.mkdtemp())
rows = read_detections(write_dataset(tmp, n=6, seed=2024))
rows = rows[rows.image == "sim_00005.fits"]
truth = write_detections(rows, tmp / "sim_00005.clumps.csv")  # this galaxy's boxes only
viewer = napari.Viewer(title="napari-clumps: RA/Dec under the cursor, Send to TOPCAT / DS9")
viewer.window._qt_window.resize(1400, 860)
[image] = viewer.open(tmp / "sim_00005.fits", plugin="napari-clumps")
widget = DetectionWidget(viewer)
viewer.window.add_dock_widget(widget, name="Detect clumps")
widget.csv_path.value = truth
[clumps] = widget.import_csv(truth)
first = rows.iloc[0]


def shoot():
    viewer.reset_view()
    # the cursor at the centre of the first box (napari data -> world, through the north-up flip)
    centre = boxes_to_napari_rectangles([[first.x_min, first.y_min, first.x_max, first.y_max]])[0].mean(axis=0)
    viewer.cursor.position = tuple(clumps.data_to_world(centre))
    # a screenshot has no mouse pointer: a cross marks where it is
    viewer.add_points([viewer.cursor.position], name="cursor", symbol="cross", size=9)
    viewer.layers.selection.active = clumps
    viewer.mouse_over_canvas = True
    viewer.update_status_from_cursor()
    print("status:", viewer.status["coordinates"] if isinstance(viewer.status, dict) else viewer.status)
    print(f"box row: ra {first.ra:.5f} dec {first.dec:+.5f}")
    QTimer.singleShot(500, lambda: (viewer.window.screenshot(str(OUT), canvas_only=False), print(OUT), viewer.close()))


QTimer.singleShot(1500, shoot)
napari.run()
