"""npe2 writer: Shapes layers of clump boxes -> the detections CSV of docs/contracts.md (``*.clumps.csv``),
or an ECSV, FITS or Parquet catalogue (``*.clumps.ecsv``, ``*.clumps.fits``, ``*.clumps.parquet``).

The ``.clumps.`` extensions keep clear of napari's built-in shapes CSV writer (``*.csv``).
"""

from __future__ import annotations

from pathlib import Path


def write_clumps_csv(path: str, layer_data: list[tuple]) -> list[str]:
    """Write every Shapes layer given to one detections file (+ its images list), in the format of
    its extension; returns the paths written."""
    import pandas as pd

    from ._layers import shapes_table
    from .detections import images_list_path, images_row
    from .export import write_catalogue

    tables, images = [], []
    for data, attributes, layer_type in layer_data:
        if layer_type != "shapes":
            continue
        metadata = attributes.get("metadata") or {}
        name = metadata.get("image_name") or attributes.get("name", "image")
        table = shapes_table(data, attributes.get("features", {}), metadata, name)
        tables.append(table)
        images.append(images_row(name, len(table), height=metadata.get("height")))
    path = Path(path)
    write_catalogue(pd.concat(tables, ignore_index=True), path, images=pd.DataFrame(images))
    return [str(path), str(images_list_path(path))]
