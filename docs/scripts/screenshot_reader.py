"""Screenshot of a real napari window: a simulated FITS cube and its JPEG opened through the plugin.

usage: xvfb-run -a -s "-screen 0 1400x900x24" python docs/scripts/screenshot_reader.py [OUT.png]

The FITS cube is shown north up (FITS row 1 at the bottom) and the JPEG is north up as survey
cutout services write it, so the two panels must look the same; the truth boxes are drawn over
both from truth.csv through the one pixel-convention conversion.
"""

import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtCore import QTimer

from napari_clumps._layers import boxes_layer
from napari_clumps.detections import read_detections
from napari_clumps.simulate import write_dataset

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs/images/reader_fits_and_jpeg.png"
GALAXY = "sim_00005"

tmp = Path(tempfile.mkdtemp())
truth = read_detections(write_dataset(tmp, n=6, seed=2024))
viewer = napari.Viewer(title="napari-clumps: FITS cube (left) and JPEG (right)")
viewer.window._qt_window.resize(1400, 860)
for offset, suffix in ((0, ".fits"), (220, ".jpg")):
    name = GALAXY + suffix
    image_layer = viewer.open(tmp / name, plugin="napari-clumps")[0]
    image_layer.translate = image_layer.translate + [0, offset]  # side by side
    rows = truth[truth.image == name]
    data, kwargs, _ = boxes_layer(
        rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy(),
        rows.label,
        rows.score,
        name=f"{name} truth",
        image_kwargs={"scale": image_layer.scale, "translate": image_layer.translate},
    )
    viewer.add_shapes(data, **kwargs)


def shoot():
    viewer.reset_view()
    viewer.window.screenshot(str(OUT), canvas_only=False)
    print(OUT)
    viewer.close()


QTimer.singleShot(2000, shoot)
napari.run()
