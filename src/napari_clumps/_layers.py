"""napari glue shared by the reader, sample data and widgets: layer data tuples and transforms.

This module builds plain ``(data, kwargs, layer_type)`` tuples and never imports napari, so that
it stays cheap; all coordinate conversion goes through :mod:`napari_clumps.pixels`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .detections import label_names
from .pixels import boxes_to_napari_rectangles

#: Edge colours of boxes by class.
CLASS_COLOURS = {"clump": "#00e5ff", "odd_clump": "#ff9f1c"}


def display_transform(is_fits: bool, height: int) -> dict:
    """Layer kwargs that show FITS data north up (FITS row 1 at the bottom, as DS9 does).

    Data coordinates (and so every box) stay those of the array; only the display flips:
    world row = (height - 1) - data row.
    """
    if not is_fits:
        return {}
    return {"scale": (-1.0, 1.0), "translate": (float(height - 1), 0.0)}


def image_layers(image) -> list[tuple]:
    """Layer data tuples of a :class:`~napari_clumps.io.GalaxyImage`.

    The colour composite first (what the detector sees); for FITS also one hidden layer per raw
    band, with zscale contrast limits.
    """
    from astropy.visualization import ZScaleInterval

    stem = Path(image.path).name
    transform = display_transform(image.is_fits, image.height)
    metadata = {
        "path": str(image.path),
        "wcs": image.wcs,
        "header": image.header,
        "band_names": image.band_names,
        "bands": image.bands,
        "napari_clumps": True,
    }
    layers = [(image.composite, {"name": stem, "rgb": True, "metadata": metadata, **transform}, "image")]
    if image.is_fits:
        for band, band_name in zip(image.bands, image.band_names):
            low, high = ZScaleInterval().get_limits(band)
            if not high > low:
                low, high = float(band.min()), float(band.max()) + 1e-6
            layers.append((band, {
                "name": f"{stem} [{band_name}]",
                "visible": False,
                "colormap": "gray",
                "contrast_limits": (float(low), float(high)),
                "metadata": {**metadata, "bands": None, "band_name": band_name},
                **transform,
            }, "image"))
    return layers


def boxes_layer(boxes, labels, scores, *, name: str, image_kwargs: dict | None = None) -> tuple:
    """A Shapes layer data tuple of edge-convention boxes over an image layer.

    ``image_kwargs`` are the kwargs (or attributes) of the image layer: its ``scale`` and
    ``translate`` are copied so the rectangles follow the image's display transform.
    """
    labels = label_names(labels)
    scores = np.broadcast_to(np.asarray(scores, float), (len(labels),)).copy()
    transform = {k: v for k, v in (image_kwargs or {}).items() if k in ("scale", "translate")}
    flipped = transform.get("scale") is not None and transform["scale"][0] < 0
    anchor = "lower_left" if flipped else "upper_left"  # the score sits above the box on screen
    return (boxes_to_napari_rectangles(boxes), {
        "name": name,
        "shape_type": "rectangle",
        "features": {"label": labels, "score": scores},
        "edge_color": "label",
        "edge_color_cycle": list(CLASS_COLOURS.values()),
        "edge_width": 1.5,
        "face_color": "transparent",
        "text": {"string": "{score:.2f}", "size": 8, "color": "white", "anchor": anchor},
        **transform,
    }, "shapes")


def _stem(path) -> str:
    name = Path(path).name
    for suffix in (".gz", ".fz"):
        name = name.removesuffix(suffix)
    return Path(name).stem
