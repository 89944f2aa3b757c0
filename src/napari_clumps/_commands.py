"""npe2 commands that act on the viewer's layers (the Layers menu) and the widget buttons that do
the same. Glue only: the layers themselves come from :mod:`napari_clumps._layers`."""

from napari.viewer import Viewer

from ._layers import band_layers, has_raw_bands


def show_raw_bands(viewer: Viewer) -> list:
    """Add the raw bands of the FITS composites selected in the layer list, each band just above
    its composite (under its boxes); bands already there are shown again, not added twice.
    Returns the band layers shown."""
    from napari.layers import Layer
    from napari.utils.notifications import show_warning

    composites = [layer for layer in viewer.layers.selection if has_raw_bands(layer)]
    if not composites:
        show_warning("napari-clumps: select a FITS image opened with napari-clumps in the layer list to see its bands")
        return []
    shown = []
    for composite in composites:
        for offset, (data, kwargs, kind) in enumerate(band_layers(composite), start=1):
            if kwargs["name"] in viewer.layers:
                layer = viewer.layers[kwargs["name"]]
            else:
                layer = Layer.create(data, kwargs, kind)
                viewer.layers.insert(viewer.layers.index(composite) + offset, layer)
            layer.visible = True
            shown.append(layer)
    viewer.layers.selection = set(composites)  # napari selects what it inserts; the user chose these
    return shown
