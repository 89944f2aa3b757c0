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
        raise errors[0] if len(errors) == 1 else ImageReadError(
            errors[0].path, f"{errors[0].reason} (and {len(errors) - 1} more files failed)")
    for error in errors:  # napari turns warnings into notifications
        warnings.warn(f"napari-clumps could not read {error}", stacklevel=2)
    return layers
