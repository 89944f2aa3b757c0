"""The one place that converts between pixel conventions.

The project's convention (docs/contracts.md, used by the CSV, the detector and the tests):

* 0-based pixel **edges** of the image array as the reader returns it;
* ``x`` = column, ``y`` = row; pixel ``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``;
* a box is ``(x_min, y_min, x_max, y_max)``, as in torchvision.

Other conventions met in practice:

* **astropy / WCS pixel coordinates** put the centre of the first pixel at 0, so an
  astropy pixel ``p`` is the edge coordinate ``p + 0.5``;
* **FITS pixel coordinates** (``CRPIX``) put it at 1, so a FITS pixel ``p`` is the edge ``p - 0.5``;
* **napari data coordinates** put pixel centres at integers and order axes ``(row, col)``,
  so the edge point ``(x, y)`` is napari ``(y - 0.5, x - 0.5)``.

How an image is *displayed* never changes these numbers. FITS arrays hold FITS row 1 (the
south edge, for the usual north-up WCS) at row 0; DS9, napari layers and our pictures show them
north up, row 0 at the bottom, as survey JPEG cutouts store them (:func:`north_up`,
:func:`napari_north_up`, :func:`flip_boxes_vertically`); a mirrored view of an image maps its boxes
back with :func:`flip_boxes_horizontally`.
"""

from __future__ import annotations

import numpy as np

#: Offset between edge coordinates and centre-based coordinates (astropy, napari).
_CENTRE_OFFSET = 0.5
#: FITS numbers pixels from 1 (``CRPIX``); astropy's 0-based pixels are FITS pixels minus this.
_FITS_ORIGIN = 1.0


def edge_to_astropy(x, y):
    """Edge-convention ``(x, y)`` to astropy pixel coordinates (first pixel centre at 0)."""
    return np.asarray(x, float) - _CENTRE_OFFSET, np.asarray(y, float) - _CENTRE_OFFSET


def astropy_to_edge(x, y):
    """Astropy pixel coordinates to the edge convention."""
    return np.asarray(x, float) + _CENTRE_OFFSET, np.asarray(y, float) + _CENTRE_OFFSET


def edge_to_fits(x, y):
    """Edge-convention ``(x, y)`` to FITS pixel coordinates (first pixel centre at 1), as ``CRPIX`` holds."""
    return np.asarray(x, float) + _FITS_ORIGIN - _CENTRE_OFFSET, np.asarray(y, float) + _FITS_ORIGIN - _CENTRE_OFFSET


def pixel_to_radec(wcs, x, y):
    """ICRS ``(ra, dec)`` in degrees of edge-convention points; NaN arrays when ``wcs`` is None."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    if wcs is None:
        nan = np.full(x.shape, np.nan)
        return nan, nan.copy()
    sky = wcs.pixel_to_world(*edge_to_astropy(x, y))
    icrs = sky.icrs
    return np.atleast_1d(icrs.ra.deg).astype(float), np.atleast_1d(icrs.dec.deg).astype(float)


def radec_to_pixel(wcs, ra, dec):
    """Edge-convention ``(x, y)`` of ICRS ``(ra, dec)`` in degrees."""
    from astropy.coordinates import SkyCoord

    sky = SkyCoord(np.atleast_1d(ra), np.atleast_1d(dec), unit="deg", frame="icrs")
    return astropy_to_edge(*wcs.world_to_pixel(sky))


def napari_to_edge(row, col):
    """A napari data point ``(row, col)`` (pixel centres at integers) to edge-convention ``(x, y)``."""
    return np.asarray(col, float) + _CENTRE_OFFSET, np.asarray(row, float) + _CENTRE_OFFSET


def boxes_to_napari_rectangles(boxes) -> list[np.ndarray]:
    """``(N, 4)`` edge boxes to napari rectangles: ``(4, 2)`` ``(row, col)`` vertex arrays."""
    rectangles = []
    for x_min, y_min, x_max, y_max in np.asarray(boxes, float).reshape(-1, 4):
        corners = np.array([[y_min, x_min], [y_min, x_max], [y_max, x_max], [y_max, x_min]], dtype=float)
        rectangles.append(corners - _CENTRE_OFFSET)
    return rectangles


def napari_rectangles_to_boxes(rectangles) -> np.ndarray:
    """napari shape vertices (any polygon, ``(row, col)``) to ``(N, 4)`` edge boxes.

    Rotated or irregular shapes become their axis-aligned bounding box, which is what a
    box detector can learn from.
    """
    boxes = np.zeros((len(rectangles), 4), dtype=float)
    for i, vertices in enumerate(rectangles):
        rc = np.asarray(vertices, float)[:, -2:] + _CENTRE_OFFSET
        boxes[i] = rc[:, 1].min(), rc[:, 0].min(), rc[:, 1].max(), rc[:, 0].max()
    return boxes


def flip_boxes_vertically(boxes, height: int) -> np.ndarray:
    """Boxes of an image whose rows were reversed (``array[::-1]``), e.g. a north-up JPEG of a FITS array."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return np.column_stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]])


def flip_boxes_horizontally(boxes, width: int) -> np.ndarray:
    """Boxes of an image whose columns were reversed (``array[:, ::-1]``): column ``c`` covers
    ``[c, c+1)`` and becomes ``width - 1 - c``, so an edge ``x`` becomes ``width - x``."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return np.column_stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]])


def north_up(array) -> np.ndarray:
    """The rows of a FITS array reversed: the image as DS9 shows it and cutout services store it."""
    return np.asarray(array)[::-1]


def napari_north_up(height: int) -> dict:
    """napari layer kwargs that show a FITS array of ``height`` rows north up: only the display
    flips (world row = height - 1 - data row), so data coordinates and boxes stay the array's."""
    return {"scale": (-1.0, 1.0), "translate": (float(height - 1), 0.0)}
