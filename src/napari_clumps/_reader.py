"""npe2 reader contribution: FITS, JPEG and PNG galaxy cutouts (see :mod:`napari_clumps.io`)."""

from __future__ import annotations

import warnings

from ._layers import image_layers
from .io import ImageReadError, is_supported_path, read_image


def _as_paths(path) -> list:
    return [path] if isinstance(path, str) or not hasattr(path, "__iter__") else list(path)


def napari_get_reader(path):
    """Return a reader for supported paths (one path or a list of them), else None."""
    paths = _as_paths(path)
    if not paths or not all(is_supported_path(p) for p in paths):
        return None
    return read_galaxy_images


def read_galaxy_images(path) -> list[tuple]:
    """Layer data tuples for each file.

    An unreadable file is reported by name (napari shows it as a notification); when several
    files are opened at once the readable ones still load.
    """
    paths = _as_paths(path)
    layers, errors = [], []
    for p in paths:
        try:
            layers.extend(image_layers(read_image(p)))
        except ImageReadError as error:
            errors.append(error)
    if errors and not layers:
        raise (
            errors[0]
            if len(errors) == 1
            else ImageReadError(errors[0].path, f"{errors[0].reason} (and {len(errors) - 1} more files failed)")
        )
    for error in errors:  # napari turns warnings into notifications
        warnings.warn(f"napari-clumps could not read {error}", stacklevel=2)
    if any(kwargs["metadata"].get("wcs") is not None for _, kwargs, _ in layers):
        from ._sky_readout import show_sky_position_in_current_viewer

        show_sky_position_in_current_viewer()  # RA/Dec under the cursor
    return layers


def napari_get_clumps_csv_reader(path):
    """Reader for detections CSVs (``*.clumps.csv``): one Shapes layer of boxes per image named."""
    paths = _as_paths(path)
    if len(paths) != 1 or not str(paths[0]).lower().endswith(".csv"):
        return None
    return read_clumps_csv


def read_clumps_csv(path) -> list[tuple]:
    """Shapes layers of a detections CSV, one per image named in it.

    Boxes of a FITS image get its north-up display flip when the companion images list gives
    the image height (it does for the files napari-clumps writes). To put boxes onto an open
    image with its WCS, use the detection widget's "Load boxes from CSV".
    """
    import pandas as pd

    from ._layers import detections_layer, display_transform, mark_loaded_from
    from .detections import read_detections, read_images_list
    from .io import is_fits_path

    path = _as_paths(path)[0]
    table = read_detections(path)
    listed = read_images_list(path)
    heights = {} if listed is None else dict(zip(listed.image, listed.height))
    layers = []
    for name, rows in table.groupby("image", sort=False):
        height = heights.get(name)
        height = int(height) if height is not None and pd.notna(height) else None
        transform = display_transform(is_fits_path(name) and height is not None, height or 0)
        data, kwargs, kind = detections_layer(rows, image_name=name, transform=transform, height=height)
        mark_loaded_from(kwargs["metadata"], path)
        layers.append((data, kwargs, kind))
    return layers
