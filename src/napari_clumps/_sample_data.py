"""npe2 sample data: the bundled samples of :mod:`napari_clumps.samples` as napari layers."""

from __future__ import annotations

from .samples import SAMPLE_INDEX, SAMPLE_SEED


def simulated_galaxy(seed: int = SAMPLE_SEED, index: int = SAMPLE_INDEX, truth: bool = True) -> list[tuple]:
    """napari sample: simulated galaxy composite, raw g/r/i bands and (optionally) the truth boxes."""
    from ._layers import boxes_layer, image_layers
    from ._sky_readout import show_sky_position_in_current_viewer
    from .samples import simulated_galaxy_image

    image, boxes, labels = simulated_galaxy_image(seed, index)
    layers = image_layers(image)
    show_sky_position_in_current_viewer()  # the simulated galaxy has a WCS: RA/Dec under the cursor
    if truth:
        layers.append(boxes_layer(boxes, labels, 1.0, name=f"{layers[0][1]['name']} truth", image_kwargs=layers[0][1]))
    return layers


def hubble_deep_field_crop() -> list[tuple]:
    """napari sample: a real HST image crop (no WCS)."""
    from ._layers import image_layers
    from .samples import hubble_image

    return image_layers(hubble_image())
