"""Screenshot of the fine-tuning widget mid-training (real window, Xvfb).

usage: xvfb-run -a -s "-screen 0 1400x900x24" python docs/scripts/screenshot_finetune.py BASE_MODEL [OUT.png]

Simulates 16 galaxies, loads their truth boxes as the user's corrected boxes (through the
detection widget's CSV import), starts fine-tuning BASE_MODEL on them and takes the screenshot
once two epochs are done (loss curve and validation F1 in the dock), then cancels.
"""

import os
import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtCore import QTimer

from napari_clumps._detect_widget import DetectionWidget, register_model_file
from napari_clumps._train_widget import FineTuneWidget
from napari_clumps.settings import CONFIG_DIR_VARIABLE
from napari_clumps.simulate import write_dataset

# a throwaway settings directory: the model files registered here must not join the user's model menus
os.environ.setdefault(CONFIG_DIR_VARIABLE, tempfile.mkdtemp(prefix="napari-clumps-settings-"))

ROOT = Path(__file__).resolve().parents[2]
BASE = Path(sys.argv[1])
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs/images/finetune_widget.png"

tmp = Path(tempfile.mkdtemp())
truth = write_dataset(tmp, n=16, seed=77)
viewer = napari.Viewer(title="napari-clumps: fine-tuning")
viewer.window._qt_window.resize(1400, 860)
names = [f"sim_{i:05d}.fits" for i in range(16)]
for name in names:
    viewer.open(tmp / name, plugin="napari-clumps")
for layer in viewer.layers:
    layer.visible = layer.name.startswith("sim_00000.fits") and "[" not in layer.name
DetectionWidget(viewer).import_csv(truth)
for layer in viewer.layers:
    if layer.name.endswith("clumps"):
        layer.visible = layer.name.startswith("sim_00000")
widget = FineTuneWidget(viewer)
viewer.window.add_dock_widget(widget, name="Fine-tune detector")
register_model_file(BASE)
widget.images.value = [viewer.layers[n] for n in names]
widget.base.value = str(BASE.resolve())
widget.epochs.value = 6
widget.val_fraction.value = 0.25
widget.output.value = tmp / "finetuned.safetensors"
widget.start()


def shoot():
    if len(widget._history_f1) < 2:
        QTimer.singleShot(1000, shoot)
        return
    viewer.reset_view()
    viewer.window.screenshot(str(OUT), canvas_only=False)
    print(OUT, widget.status.value)
    widget.cancel()
    QTimer.singleShot(500, wait_and_close)


def wait_and_close():
    if not widget.train_button.enabled:
        QTimer.singleShot(500, wait_and_close)
        return
    viewer.close()


QTimer.singleShot(2000, shoot)
napari.run()
