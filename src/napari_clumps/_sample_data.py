"""npe2 sample data: a simulated clumpy galaxy (FITS-like, with WCS and truth) and a real HST field."""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: The simulated sample: galaxy 5 of seed 2024 (a spiral with three clumps, two of them odd, and stars).
SAMPLE_SEED, SAMPLE_INDEX = 2024, 5
#: Crop of scikit-image's Hubble eXtreme Deep Field around a group with a clumpy blue galaxy.
HUBBLE_CROP = (slice(230, 430), slice(230, 430))


def simulated_galaxy_image(seed: int = SAMPLE_SEED, index: int = SAMPLE_INDEX):
    """A simulated galaxy as a :class:`~napari_clumps.io.GalaxyImage` plus its truth boxes and labels."""
    from .composite import lupton_composite
    from .io import GalaxyImage
    from .simulate import BANDS, simulate_galaxy

    galaxy = simulate_galaxy(seed, index)
    wcs = galaxy.wcs()
    image = GalaxyImage(
        path=Path(f"simulated_seed{seed}_{index}.fits"),
        bands=galaxy.bands,
        band_names=BANDS,
        composite=lupton_composite(galaxy.bands, BANDS),
        wcs=wcs,
        header=wcs.to_header(),
    )
    return image, galaxy.truth_boxes(), galaxy.truth_labels()


def hubble_image():
    """A 200 x 200 px crop of the Hubble eXtreme Deep Field colour image (ships with scikit-image)."""
    from skimage.data import hubble_deep_field

    from .io import GalaxyImage

    rgb = np.ascontiguousarray(hubble_deep_field()[HUBBLE_CROP])
    return GalaxyImage(path=Path("hubble_xdf_crop.jpg"), bands=np.moveaxis(rgb, -1, 0) / np.float32(255),
                       band_names=("R", "G", "B"), composite=rgb)


def simulated_galaxy(seed: int = SAMPLE_SEED, index: int = SAMPLE_INDEX, truth: bool = True) -> list[tuple]:
    """napari sample: simulated galaxy composite, raw g/r/i bands and (optionally) the truth boxes."""
    from ._layers import boxes_layer, image_layers

    image, boxes, labels = simulated_galaxy_image(seed, index)
    layers = image_layers(image)
    if truth:
        layers.append(boxes_layer(boxes, labels, 1.0, name=f"{layers[0][1]['name']} truth",
                                  image_kwargs=layers[0][1]))
    return layers


def hubble_deep_field_crop() -> list[tuple]:
    """napari sample: a real HST image crop (no WCS)."""
    from ._layers import image_layers

    return image_layers(hubble_image())
