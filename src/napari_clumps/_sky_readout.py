"""RA/Dec under the cursor in napari's status bar, for images with a celestial WCS (as in DS9).

napari has no public way to add to the status bar (napari issue 2253): it shows what the active
layer's ``get_status`` returns, computed off the GUI thread. So each of our layers with a WCS
(the images, and the clumps layers over them, which are usually the active ones) gets a
``get_status`` that puts the sky position first and leaves napari's own text after it. Layers
are adopted as they are added to a viewer that :func:`show_sky_position` watches; the reader,
the sample data and the widgets call it, so opening a FITS file is enough.
"""

from __future__ import annotations

import copy
import weakref

import numpy as np

from .pixels import napari_to_edge, pixel_to_radec

_watched_viewers: weakref.WeakSet = weakref.WeakSet()


def show_sky_position(viewer) -> None:
    """Show RA/Dec under the cursor for the WCS layers of ``viewer``, now and as they come."""
    if viewer is None or viewer in _watched_viewers:
        return
    _watched_viewers.add(viewer)
    for layer in viewer.layers:
        add_sky_position(layer)
    viewer.layers.events.inserted.connect(lambda event: add_sky_position(event.value))


def show_sky_position_in_current_viewer() -> None:
    """:func:`show_sky_position` for the viewer napari is opening files into (none: nothing)."""
    import napari

    show_sky_position(napari.current_viewer())


def add_sky_position(layer) -> None:
    """Make ``layer``'s status start with the sky position under the cursor, if it has a WCS."""
    wcs = layer.metadata.get("wcs")
    if wcs is None or getattr(layer, "_napari_clumps_plain_status", None) is not None:
        return
    # its own copy: the status is computed on napari's status thread, while a detection
    # worker may be using the layer's WCS, and astropy's WCS is not made for sharing threads
    wcs = copy.deepcopy(wcs)
    height, width = _image_size(layer)
    layer._napari_clumps_plain_status = plain = layer.get_status
    layer_ref = weakref.ref(layer)

    def get_status(position=None, **kwargs):
        status = plain(position, **kwargs)
        layer = layer_ref()
        if position is None or layer is None:
            return status
        point = np.asarray(position, float)
        row, col = (layer.world_to_data(point) if kwargs.get("world") else point)[-2:]
        x, y = napari_to_edge(row, col)
        if height is None or not (0 <= x <= width and 0 <= y <= height):
            return status  # off the image its WCS says nothing worth reading
        text = radec_text(*(float(v[0]) for v in pixel_to_radec(wcs, x, y)))
        status["coordinates"] = f"{text}   {status.get('coordinates', '')}"
        status["coords"] = f"{text} {status.get('coords', '')}"  # what napari shows for several selected layers
        return status

    layer.get_status = get_status


def radec_text(ra: float, dec: float) -> str:
    """``RA 150.12345 Dec +2.34567 (10:00:29.63 +02:20:44.4)``: degrees, then sexagesimal."""
    from astropy import units as u
    from astropy.coordinates import Angle

    hms = Angle(ra, u.deg).to_string(unit=u.hourangle, sep=":", precision=2, pad=True)
    dms = Angle(dec, u.deg).to_string(unit=u.deg, sep=":", precision=1, pad=True, alwayssign=True)
    return f"RA {ra:.5f} Dec {dec:+.5f} ({hms} {dms})"


def _image_size(layer) -> tuple:
    """(height, width) in pixels of the image a layer shows or lies over (None: unknown)."""
    if layer.__class__.__name__ == "Image":
        shape = np.shape(layer.data)
        return shape[0], shape[1]
    height, width = layer.metadata.get("height"), layer.metadata.get("width")
    return (height, width) if height is not None and width is not None else (None, None)
