"""Detections in other tools' formats: DS9 region files.

A minimal version, enough for sending boxes to DS9 over SAMP (:mod:`napari_clumps.samp`); its
signature is the one other modules rely on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_regions(table, path, wcs=None) -> Path:
    """Write one image's rows of a detections table as a DS9 region file; return its path.

    One rectangle per box, coloured by class and labelled with its class and score. With the
    image's celestial ``wcs`` the regions are in sky coordinates (they then land right in DS9
    however it orients or reprojects the image); without, in the image's pixels.
    """
    from regions import PixCoord, RectanglePixelRegion, Regions

    from .atomic import atomic_path
    from .detections import CLASS_COLOURS, box_array
    from .pixels import edge_to_astropy

    boxes = box_array(table)
    # regions counts pixels from the centre of the first one, as astropy does
    x_centre, y_centre = edge_to_astropy((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2)
    labels = [str(label) for label in table["label"]]
    scores = np.asarray(table["score"], float)
    shapes = []
    for x, y, box, label, score in zip(np.atleast_1d(x_centre), np.atleast_1d(y_centre), boxes, labels, scores):
        region = RectanglePixelRegion(
            PixCoord(float(x), float(y)),
            width=float(box[2] - box[0]),
            height=float(box[3] - box[1]),
            meta={"text": f"{label} {score:.2f}"},
            visual={"color": CLASS_COLOURS.get(label, "#ffffff")},
        )
        shapes.append(region.to_sky(wcs) if wcs is not None else region)
    path = Path(path)
    with atomic_path(path) as tmp:
        Regions(shapes).write(str(tmp), format="ds9", overwrite=True)
    return path
