"""Bundled sample images, offline: a simulated clumpy galaxy with its truth, and a real HST crop.

The napari sample-data commands (:mod:`napari_clumps._sample_data`) and ``napari-clumps demo``
both show these.
"""

from __future__ import annotations

import numpy as np

#: The simulated sample: galaxy 5 of seed 2024 (a spiral with three clumps, two of them odd, and stars).
SAMPLE_SEED, SAMPLE_INDEX = 2024, 5
#: Crop of scikit-image's Hubble eXtreme Deep Field around a group with a clumpy blue galaxy.
HUBBLE_CROP = (slice(230, 430), slice(230, 430))


def simulated_galaxy_image(seed: int = SAMPLE_SEED, index: int = SAMPLE_INDEX):
    """A simulated galaxy as a :class:`~napari_clumps.io.GalaxyImage` plus its truth boxes and labels."""
    from .io import GalaxyImage
    from .simulate import BANDS, simulate_galaxy

    galaxy = simulate_galaxy(seed, index)
    wcs = galaxy.wcs()
    image = GalaxyImage.from_bands(galaxy.bands, BANDS, f"simulated_seed{seed}_{index}.fits", wcs, wcs.to_header())
    return image, galaxy.truth_boxes(), galaxy.truth_labels()


def hubble_image():
    """A 200 x 200 px crop of the Hubble eXtreme Deep Field colour image (ships with scikit-image)."""
    from skimage.data import hubble_deep_field

    from .io import GalaxyImage

    return GalaxyImage.from_rgb(np.ascontiguousarray(hubble_deep_field()[HUBBLE_CROP]), "hubble_xdf_crop.jpg")
