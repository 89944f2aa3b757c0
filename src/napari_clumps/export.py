"""Catalogue formats and DS9 region files of a detections table (docs/contracts.md).

The CSV (:mod:`napari_clumps.detections`) is the contract. The other formats hold the same
table, rows and columns, with what a CSV has no place for: the unit of every column that has
one (:func:`~napari_clumps.detections.column_unit`) and the provenance of the run
(:func:`provenance`, keys :data:`PROVENANCE_KEYS`):

* ``.ecsv``: astropy's ECSV; the provenance is the table's ``meta``;
* ``.fits``: a binary table in HDU 1 (``DETECTIONS``); the provenance is in its header as
  ``HIERARCH`` cards under the same names; ``on_host`` is 1 / 0 with null (TNULL) for "no host
  found", because astropy cannot write a FITS logical null;
* ``.parquet``: the provenance as JSON under the schema metadata key :data:`PARQUET_METADATA_KEY`,
  each unit in its field's metadata (``unit``).

:func:`write_catalogue` picks the format by the file name's suffix; every catalogue has the
CSV images list ``<stem>.images.csv`` beside it. :func:`write_regions` writes one image's boxes as
a DS9 region file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .detections import OutputPathError, column_unit

#: Catalogue formats by file-name suffix; ``.csv`` is the contract.
CATALOGUE_SUFFIXES = (".csv", ".ecsv", ".fits", ".parquet")
#: What the ECSV, FITS and Parquet catalogues say about how they were made (the keys known are
#: written; the CSV has no place for them).
PROVENANCE_KEYS = (
    "model_id",
    "model_file",
    "model_sha256",
    "score_threshold",
    "nms_iou",
    "software_version",
    "date_utc",
    "command",
)
PARQUET_METADATA_KEY = b"napari_clumps"
FITS_EXTENSION_NAME = "DETECTIONS"
REGION_SUFFIX = ".reg"
# DS9's own first line; regions writes nothing at all for no shapes, and an empty file says less
# than "looked, found nothing".
_EMPTY_REGION_FILE = "# Region file format: DS9 version 4.1\n# napari-clumps: no clumps in this image\nimage\n"
_TEXT_COLUMNS = ("image", "label", "model")


class CatalogueFormatError(ValueError):
    """A catalogue file name whose suffix names no supported format."""


def check_catalogue_path(path) -> Path:
    """``path`` if its suffix is a catalogue format, else :class:`CatalogueFormatError` (one line)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CATALOGUE_SUFFIXES:
        raise CatalogueFormatError(
            f"{path}: unknown catalogue format {suffix or '(no suffix)'}; the name must end in "
            f"{', '.join(CATALOGUE_SUFFIXES)}"
        )
    return path


def working_csv_path(path) -> Path:
    """The CSV that a run streams to for the catalogue ``path``: ``path`` itself for a CSV, else
    the CSV beside it (``run.ecsv`` -> ``run.csv``), which shares its images list."""
    path = check_catalogue_path(path)
    return path if path.suffix.lower() == ".csv" else path.with_suffix(".csv")


def file_sha256(path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(*, model_id=None, model_file=None, score_threshold=None, nms_iou=None, command=None) -> dict:
    """The provenance of a catalogue: what is given, the model file's SHA-256, the software
    version and the date (UTC). Keys in :data:`PROVENANCE_KEYS` order; unknown ones left out."""
    import sys
    from datetime import UTC, datetime

    # the package's own version (this checkout's, whatever distribution is installed); the
    # package is imported whenever one of its modules is
    __version__ = sys.modules[__package__].__version__

    values = {
        "model_id": model_id,
        "model_file": str(Path(model_file).resolve()) if model_file else None,
        "model_sha256": file_sha256(model_file) if model_file else None,
        "score_threshold": None if score_threshold is None else float(score_threshold),
        "nms_iou": None if nms_iou is None else float(nms_iou),
        "software_version": f"napari-clumps {__version__}",
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
    }
    return {key: value for key, value in values.items() if value is not None}


def write_catalogue(table, path, provenance=None, images=None) -> Path:
    """Write a detections table in the format of ``path``'s suffix, atomically; with the images
    list (``<stem>.images.csv``) if ``images`` is given. ``provenance``: a dict of
    :func:`provenance` (a default one, software and date, when None); not written to a CSV."""
    from .atomic import atomic_path
    from .detections import write_detections, write_images_list

    path = check_catalogue_path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return write_detections(table, path, images)
    writers = {".ecsv": _write_ecsv, ".fits": _write_fits, ".parquet": _write_parquet}
    meta = _provenance_or_default(provenance)
    with atomic_path(path) as tmp:
        writers[suffix](_typed(table), tmp, meta)
    if images is not None:
        write_images_list(images, path)
    return path


def _provenance_or_default(given) -> dict:
    if given is None:
        return provenance()
    unknown = sorted(set(given) - set(PROVENANCE_KEYS))
    if unknown:
        raise ValueError(f"unknown provenance keys {unknown}; expected some of {', '.join(PROVENANCE_KEYS)}")
    return {key: given[key] for key in PROVENANCE_KEYS if key in given}


def _typed(table):
    """The table as written (:func:`~napari_clumps.detections.written_table`) with one type per
    column: text, float, and ``on_host`` as a nullable boolean (empty: no host found)."""
    from .detections import written_table
    from .photometry import is_band_column

    typed = written_table(table).reset_index(drop=True)
    for column in typed.columns:
        if column in _TEXT_COLUMNS:
            typed[column] = typed[column].fillna("").astype(str)
        elif column_unit(column) is not None or is_band_column(column):  # numbers, with or without a unit
            typed[column] = typed[column].astype(float)
        elif column == "on_host":
            typed[column] = typed[column].astype("boolean")
        elif typed[column].dtype == object:
            typed[column] = typed[column].fillna("").astype(str)
    return typed


def _astropy_table(typed):
    import astropy.units as u
    from astropy.table import Table

    result = Table.from_pandas(typed)
    for column in result.colnames:
        unit = column_unit(column)
        if unit is not None:
            result[column].unit = u.Unit(unit)
    return result


def _write_ecsv(typed, path, meta: dict) -> None:
    result = _astropy_table(typed)
    result.meta.update(meta)
    result.write(path, format="ascii.ecsv", overwrite=True)


def _write_fits(typed, path, meta: dict) -> None:
    import numpy as np
    from astropy.io import fits
    from astropy.table import MaskedColumn

    result = _astropy_table(typed)
    if "on_host" in result.colnames:
        on_host = typed["on_host"]
        result.replace_column(
            "on_host",
            MaskedColumn(on_host.fillna(False).to_numpy(np.int16), mask=on_host.isna().to_numpy(), fill_value=-1),
        )
    hdu = fits.table_to_hdu(result)
    hdu.name = FITS_EXTENSION_NAME
    for key, value in meta.items():
        hdu.header[f"HIERARCH {key}"] = value  # HIERARCH keeps the names as in the other formats
    hdu.header["COMMENT"] = "napari-clumps detections; columns and units: docs/contracts.md"
    hdu.header["COMMENT"] = "boxes in 0-based pixel-edge coordinates of the image array"
    hdu.header["COMMENT"] = "on_host: 1 on the host galaxy, 0 off it, null when no host was found"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


def _write_parquet(typed, path, meta: dict) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(typed, preserve_index=False)
    units = {field.name: column_unit(field.name) for field in arrow.schema}
    fields = [
        field if units[field.name] is None else field.with_metadata({b"unit": units[field.name].encode()})
        for field in arrow.schema
    ]
    metadata = {**(arrow.schema.metadata or {}), PARQUET_METADATA_KEY: json.dumps(meta).encode()}
    pq.write_table(pa.Table.from_arrays(arrow.columns, schema=pa.schema(fields, metadata=metadata)), path)


def read_catalogue(path):
    """An ECSV, FITS or Parquet catalogue as a pandas table with the values its CSV would read
    as (text columns as text, ``on_host`` True / False / NaN)."""
    import numpy as np
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        from astropy.table import Table

        result = Table.read(path, format="ascii.ecsv" if suffix == ".ecsv" else "fits")
        result.convert_bytestring_to_unicode()
        table = result.to_pandas()
    for column in _TEXT_COLUMNS:
        if column in table:
            table[column] = table[column].fillna("").astype(object)
    if "on_host" in table:
        on_host = table["on_host"]
        known = on_host.notna().to_numpy()
        values = np.full(len(table), np.nan, dtype=object)
        values[known] = on_host[known].astype(bool).to_numpy()
        table["on_host"] = values
    return table


# ----------------------------------------------------------------------------- DS9 regions


def region_shapes(table, wcs=None) -> list:
    """The boxes of one image's rows as ``regions`` rectangles: in sky coordinates through
    ``wcs`` (a celestial astropy WCS), else in pixels; text ``"label score"``, coloured by class."""
    from regions import PixCoord, RectanglePixelRegion, RegionMeta, RegionVisual

    from .detections import CLASS_COLOURS, box_array
    from .pixels import edge_to_astropy

    boxes = box_array(table)
    # regions puts pixel centres at integers, as astropy does; its DS9 writer adds the 1 of DS9
    x_centre, y_centre = edge_to_astropy((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2)
    celestial = wcs.celestial if wcs is not None and wcs.has_celestial else None
    shapes = []
    for x, y, box, label, score in zip(x_centre, y_centre, boxes, table["label"], table["score"]):
        shape = RectanglePixelRegion(
            PixCoord(x, y),
            width=box[2] - box[0],
            height=box[3] - box[1],
            meta=RegionMeta({"text": f"{label} {score:.2f}", "tag": [label]}),
            visual=RegionVisual({"color": CLASS_COLOURS[label]}),
        )
        shapes.append(shape if celestial is None else shape.to_sky(celestial))
    return shapes


def write_regions(table, path, wcs=None) -> Path:
    """Write one image's detections as a DS9 region file, atomically; returns ``path``.

    ``table``: that image's rows in the detections schema (none: a file that says so);
    ``wcs``: its celestial astropy WCS (boxes in sky coordinates) or None (image coordinates)."""
    from regions import Regions

    from .atomic import atomic_path

    if "image" in table and table["image"].nunique() > 1:
        raise ValueError(f"{path}: the rows of {table['image'].nunique()} images; a region file is one image's")
    text = Regions(region_shapes(table, wcs)).serialize(format="ds9") if len(table) else _EMPTY_REGION_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def region_path(folder, image_name: str) -> Path:
    """``folder/<image name>.reg``, the image's sub-folders mirrored (``deep/a.fits`` ->
    ``folder/deep/a.fits.reg``); a leading ``/`` and ``..`` parts are dropped, so that every file
    stays inside ``folder``."""
    parts = [part for part in PurePosixPath(str(image_name).replace("\\", "/")).parts if part not in ("/", "..", ".")]
    if not parts:
        raise ValueError(f"{image_name!r}: no file name to name a region file after")
    return Path(folder, *parts[:-1], parts[-1] + REGION_SUFFIX)


def check_regions_folder(folder) -> Path:
    """Raise :class:`~napari_clumps.detections.OutputPathError` unless region files can be written
    in ``folder`` (made if missing: the nearest existing folder must be writable). Writes nothing."""
    import os

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{folder}: is a file; region files need a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{folder}: cannot make the folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{folder}: cannot write in {existing} (permission denied or read-only file system)")
    return folder
