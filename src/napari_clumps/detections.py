"""The detections table: the schema of the CSV contract (docs/contracts.md), in one place.

Columns, in this order (more may follow)::

    image,label,score,x_min,y_min,x_max,y_max,x_center,y_center,ra,dec,model

Boxes are 0-based pixel-edge coordinates (:mod:`napari_clumps.pixels`); ``ra``/``dec`` are
ICRS degrees of the box centre, empty without a celestial WCS; ``label`` is ``clump`` or
``odd_clump``; ``score`` is 0-1 (1 for hand labels and truth).

Every CSV is written with a companion *images list*, ``<name>.images.csv`` next to
``<name>.csv``: one row per image that was processed (``image, status, n_detections, width,
height, error`` and optional extras), so that an image with no clumps (a row with
``n_detections = 0``) differs from one that was not processed or failed (``status = failed``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: A box, pixel-edge convention (:mod:`napari_clumps.pixels`), as torchvision orders it.
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
COLUMNS = ["image", "label", "score", *BOX_COLUMNS, "x_center", "y_center", "ra", "dec", "model"]
#: Columns the detector adds after the contract's own (:mod:`napari_clumps.host`): the
#: detection's elliptical distance from the host galaxy's centre in units of the host's
#: semi-major axis, and whether it lies on the host (empty when no host was found).
HOST_COLUMNS = ["host_distance", "on_host"]
#: Units of the columns that have one, as astropy unit strings ("" is dimensionless: scores, and
#: host distances in units of the host's semi-major axis). The CSV has no place for them; the
#: ECSV, FITS and Parquet catalogues (:mod:`napari_clumps.export`) carry them on their columns.
COLUMN_UNITS = {
    "score": "",
    **dict.fromkeys([*BOX_COLUMNS, "x_center", "y_center"], "pix"),
    "ra": "deg",
    "dec": "deg",
    "host_distance": "",
}
#: After the host columns, the detector adds the photometry columns of the image's bands
#: (:func:`napari_clumps.photometry.photometry_columns`; their units: ``photometry.column_unit``).


def column_unit(name: str) -> str | None:
    """The astropy unit string of a detections column ("" dimensionless), or None if it has none."""
    if name in COLUMN_UNITS:
        return COLUMN_UNITS[name]
    from .photometry import astropy_unit

    return astropy_unit(name)


#: Class names by detector class index (0 is background).
CLASS_NAMES = ("background", "clump", "odd_clump")
LABELS = CLASS_NAMES[1:]
#: Box colours by class, wherever boxes are drawn (napari layers, PNG pictures).
CLASS_COLOURS = {"clump": "#00e5ff", "odd_clump": "#ff9f1c"}
#: ``model`` of boxes drawn by hand (score 1).
HAND_MODEL = "hand"
# Written precision: 1e-4 px, 1e-8 deg (0.04 mas), scores to 1e-5.
_DECIMALS = {
    "score": 5,
    **dict.fromkeys(BOX_COLUMNS, 4),
    "x_center": 4,
    "y_center": 4,
    "ra": 8,
    "dec": 8,
    "host_distance": 4,
}
IMAGES_COLUMNS = ["image", "status", "n_detections", "width", "height", "error"]
#: Extra images-list column of a labels CSV made in the review queue (:mod:`napari_clumps.review`):
#: whether a person has checked the image's boxes. Only reviewed images are labels.
REVIEW_STATUS_COLUMN = "review_status"
UNREVIEWED, REVIEWED = "unreviewed", "reviewed"
REVIEW_STATUSES = (UNREVIEWED, REVIEWED)
#: Extra images-list columns of a review queue ordered by active learning (:mod:`napari_clumps.active`):
#: the image's place in the order (1 = review first; empty for images outside the ranking) and why.
REVIEW_RANK_COLUMN, REVIEW_REASON_COLUMN = "review_rank", "review_reason"


def detections_columns(band_labels=()) -> list[str]:
    """Every column the detector writes for images of bands ``band_labels``
    (:func:`napari_clumps.photometry.band_labels`), in order."""
    from .photometry import photometry_columns

    return COLUMNS + HOST_COLUMNS + photometry_columns(band_labels)


def box_array(table) -> np.ndarray:
    """The boxes of a detections table as an ``(N, 4)`` float array."""
    return table[BOX_COLUMNS].to_numpy(float).reshape(-1, 4)


def images_row(image: str, n_detections: int = 0, width=None, height=None, error: str = "") -> dict:
    """One row of an images list: an image processed (``ok``) or ``failed`` with its ``error``."""
    return {
        "image": str(image),
        "status": "failed" if error else "ok",
        "n_detections": 0 if error else n_detections,
        "width": width,
        "height": height,
        "error": error,
    }


class DetectionsFileError(ValueError):
    """A detections/labels CSV that breaks the contract; ``str()`` names the file."""


def label_names(labels) -> list[str]:
    """Class names from class indices (1, 2) or names, mixed freely."""
    labels = [labels] if isinstance(labels, (str, int, np.integer)) else list(labels)
    names = [label if isinstance(label, str) else CLASS_NAMES[int(label)] for label in labels]
    unknown = sorted(set(names) - set(LABELS))
    if unknown:
        raise ValueError(f"unknown class label(s) {unknown}; expected {', '.join(LABELS)}")
    return names


def detections_frame(image: str, boxes, labels, scores, wcs=None, model="", **extra):
    """A detections table for one image from ``(N, 4)`` edge boxes and per-box labels/scores.

    ``scores`` and ``model`` are one value for all boxes or one per box.
    """
    import pandas as pd

    from .pixels import pixel_to_radec

    boxes = np.asarray(boxes, float).reshape(-1, 4)
    n = len(boxes)
    x_center = (boxes[:, 0] + boxes[:, 2]) / 2
    y_center = (boxes[:, 1] + boxes[:, 3]) / 2
    ra, dec = pixel_to_radec(wcs, x_center, y_center) if n else (np.empty(0), np.empty(0))
    labels = label_names(labels) if n else []
    table = pd.DataFrame(
        {
            "image": [str(image)] * n,
            "label": labels,
            "score": np.broadcast_to(np.asarray(scores, float), (n,)).copy(),
            **dict(zip(BOX_COLUMNS, boxes.T)),
            "x_center": x_center,
            "y_center": y_center,
            "ra": ra,
            "dec": dec,
            "model": [str(model)] * n if isinstance(model, str) else [str(m) for m in model],
        }
    )
    for name, values in extra.items():
        table[name] = values
    return table


def images_list_path(path) -> Path:
    """``detections.csv`` -> ``detections.images.csv``; a catalogue in another format
    (``detections.ecsv``, ``.fits``, ``.parquet``) shares the images list of its CSV."""
    from .export import CATALOGUE_SUFFIXES

    path = Path(path)
    suffix = path.suffix.lower()
    stem = path.name[: -len(suffix)] if suffix in CATALOGUE_SUFFIXES else path.name
    return path.with_name(f"{stem}.images.csv")


def _written_images(images):
    """An images list as written: contract columns first, integer counts and sizes."""
    images = images.copy()
    for column in IMAGES_COLUMNS:
        if column not in images:
            images[column] = "" if column == "error" else np.nan
    images = images[IMAGES_COLUMNS + [c for c in images.columns if c not in IMAGES_COLUMNS]]
    return images.astype({"n_detections": "Int64", "width": "Int64", "height": "Int64"})


def written_table(table):
    """The table as every file holds it: the contract's columns first, numbers rounded to the
    written precision."""
    return table[COLUMNS + [c for c in table.columns if c not in COLUMNS]].round(_DECIMALS)


def write_detections(table, path, images=None) -> Path:
    """Write the table (and the images list, if given) atomically; returns ``path``.

    :class:`DetectionsWriter` writes the same files a row at a time (long batch runs)."""
    from .atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        written_table(table).to_csv(tmp, index=False)
    if images is not None:
        write_images_list(images, path)
    return path


def write_images_list(images, path) -> Path:
    """Write the images list of the detections file ``path`` atomically; returns its path."""
    from .atomic import atomic_path

    companion = images_list_path(path)
    with atomic_path(companion) as tmp:
        _written_images(images).to_csv(tmp, index=False)
    return companion


class OutputPathError(ValueError):
    """An output that cannot be written; ``str()`` names the file and the reason."""


def check_writable(path) -> Path:
    """Raise :class:`OutputPathError` unless a file can be written at ``path`` (its folder may
    not exist yet: the nearest existing one must be writable). Writes nothing."""
    import os

    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{path}: not writable (permission denied or read-only file system)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{path}: cannot make its folder: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path}: cannot write in {folder} (permission denied or read-only file system)")
    return path


class DetectionsWriter:
    """A detections CSV and its images list written as images finish (long batch runs).

    Each :meth:`append` adds one image: its rows to the CSV in one write, then its row to the
    images list, both flushed to the operating system at once (and ``os.fsync``-ed every
    ``fsync_seconds`` and on :meth:`close`). A process killed at any moment leaves two valid CSV
    files holding every image appended before it; a kill in the middle of a write leaves at
    most a torn last line, which ``resume`` removes. The files read exactly as those of
    :func:`write_detections` (the same columns, rounding and images list).

    ``resume``: continue existing files instead of replacing them. The images list says which
    images are done (:attr:`done`, name -> status); images listed as ``failed`` are dropped from
    it, to be tried again; rows of an image whose images-list row never came (the run stopped
    between the two writes) are removed, and so is a torn last line. :attr:`notes` says what was
    found and repaired. Files that do not fit together raise :class:`DetectionsFileError`.

    ``columns``: the file's header (default: the contract's and the host columns); a run's
    photometry bands are fixed here (:func:`detections_columns`). Per-band photometry columns of
    other bands (a JPEG in a run of FITS files) are left out of the file, and the images counted
    in :attr:`n_other_bands`; any other column not in the header is an error. Resuming without
    ``columns`` takes the existing file's header, whatever its bands.

    One writer per output: rows computed elsewhere (other processes, a cluster) are appended
    through the process that holds it, an image at a time. The constructor checks that the
    files can be written (:class:`OutputPathError`) and, when resuming, reads them; nothing is
    replaced until :meth:`open` (or ``with writer:``).
    """

    def __init__(self, path, columns=None, *, resume: bool = False, fsync_seconds: float = 10.0):
        self.path = check_writable(path)
        self.images_path = check_writable(images_list_path(path))
        if columns is None and resume and self.path.exists():
            from .photometry import header_band_labels

            found = _header(self.path)
            columns = detections_columns(header_band_labels(found))
            if found != columns:
                raise DetectionsFileError(
                    f"{self.path}: cannot resume: its columns are {','.join(found)!r}, expected "
                    f"{','.join(COLUMNS + HOST_COLUMNS)!r} and the photometry columns of its bands"
                )
        self.columns = list(columns) if columns is not None else COLUMNS + HOST_COLUMNS
        if self.columns[: len(COLUMNS)] != COLUMNS:
            raise ValueError(f"the columns must start with {', '.join(COLUMNS)}")
        self.fsync_seconds = fsync_seconds
        self.done: dict[str, str] = {}
        self.done_rows = 0  # rows already in the file when resuming
        self.models: set[str] = set()  # model ids of those rows
        self.notes: list[str] = []
        self.n_images = self.n_rows = self.n_failed = 0  # appended by this writer
        self.n_other_bands = 0  # images appended whose photometry bands are not the file's
        self._files = None
        self._last_sync = 0.0
        self._resuming = resume and (self.path.exists() or self.images_path.exists())
        if self._resuming:
            self._recover()
        elif resume:
            self.notes.append(f"{self.path}: nothing to resume yet; a new run starts it")

    # ------------------------------------------------------------------ writing

    def open(self) -> DetectionsWriter:
        """Start writing: new files hold just their header (replacing old ones atomically);
        resumed ones are appended to."""
        import time

        from .atomic import atomic_path

        if self._files is not None:
            return self
        if not self._resuming:
            for path, header in ((self.path, self.columns), (self.images_path, IMAGES_COLUMNS)):
                with atomic_path(path) as tmp:
                    tmp.write_bytes(_csv_line(header))
        self._files = [open(path, "ab", buffering=0) for path in (self.path, self.images_path)]  # noqa: SIM115
        self._last_sync = time.monotonic()
        return self

    def append(self, images_row: dict, table=None) -> None:
        """One finished image: its detections (a table in the CSV schema; None or empty for
        none) and its images-list row (:func:`images_row`)."""
        import time

        if self._files is None:
            raise RuntimeError("DetectionsWriter.append before open()")
        detections, images = self._files
        if table is not None and len(table):
            from .photometry import is_band_column

            extra = [c for c in table.columns if c not in self.columns]
            other_bands = [c for c in extra if is_band_column(c)]
            self.n_other_bands += bool(other_bands)
            extra = [c for c in extra if c not in other_bands]
            if extra:
                raise ValueError(f"{self.path}: columns {', '.join(extra)} are not in the file's header")
            _write_all(detections, _rows_text(table, self.columns))
            self.n_rows += len(table)
        _write_all(images, _images_line(images_row))
        self.n_images += 1
        self.n_failed += images_row.get("status") == "failed"
        if time.monotonic() - self._last_sync >= self.fsync_seconds:
            self.sync()

    def sync(self) -> None:
        """``os.fsync`` both files (the detections first), so that they survive a power cut."""
        import os
        import time

        if self._files is not None:
            for handle in self._files:
                os.fsync(handle.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._files is not None:
            self.sync()
            for handle in self._files:
                handle.close()
            self._files = None

    def __enter__(self) -> DetectionsWriter:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ resuming

    def _recover(self) -> None:
        """Read the files to resume: what is done, and what an interrupted write left. Every
        check comes first; the files are changed only when they pass."""
        for path in (self.path, self.images_path):
            if not path.exists():
                other = self.images_path if path == self.path else self.path
                raise DetectionsFileError(f"{path}: missing, so {other} cannot be resumed; delete it or drop --resume")
        ends = {}  # byte offset after each file's last whole line
        for path, header in ((self.path, self.columns), (self.images_path, IMAGES_COLUMNS)):
            ends[path] = _whole_lines_end(path)
            found = next((row for _, row in _csv_records(path, ends[path], header=False)), None)
            if found != header:
                raise DetectionsFileError(
                    f"{path}: cannot resume: its columns are {','.join(found or [])!r}, expected {','.join(header)!r}"
                )
        # The images list: what is done; failed images are tried again.
        listed, failed_offsets = {}, []
        for offset, row in _checked_records(self.images_path, ends[self.images_path], len(IMAGES_COLUMNS)):
            if row[1] == "failed":
                failed_offsets.append(offset)
            elif row[2].isdigit() or not row[2]:
                listed[row[0]] = listed.get(row[0], 0) + int(row[2] or 0)
            else:
                raise DetectionsFileError(f"{self.images_path}: cannot resume: n_detections {row[2]!r} of {row[0]!r}")
        # The detections: rows of unlisted images can only be those of the unfinished last image.
        counts, tail_start, model_col = {}, None, self.columns.index("model")
        for offset, row in _checked_records(self.path, ends[self.path], len(self.columns)):
            name = row[0]
            if name in listed:
                if tail_start is not None:
                    raise DetectionsFileError(
                        f"{self.path}: cannot resume: rows of an image missing from the images list "
                        f"come before rows of {name!r}; the two files do not belong together"
                    )
                counts[name] = counts.get(name, 0) + 1
                self.models.add(row[model_col])
            elif tail_start is None:
                tail_start = offset
        for name, n in listed.items():
            if counts.get(name, 0) != n:
                raise DetectionsFileError(
                    f"{self.path}: cannot resume: {counts.get(name, 0)} rows of {name!r} but its images list "
                    f"says {n}; the two files do not belong together"
                )
        # The repairs.
        for path, end in ends.items():
            size = path.stat().st_size
            if path == self.path and tail_start is not None:
                _truncate(path, tail_start)
                self.notes.append(
                    f"{path}: removed the rows of an unfinished image ({size - tail_start} bytes, a torn last line "
                    "included if any) to redo it"
                )
            elif end < size:
                _truncate(path, end)
                self.notes.append(f"{path}: removed a torn last line ({size - end} bytes) left by an interrupted write")
        if failed_offsets:
            _drop_records(self.images_path, failed_offsets)
            self.notes.append(f"{len(failed_offsets)} images that failed before are tried again")
        self.done = dict.fromkeys(listed, "ok")
        self.done_rows = sum(counts.values())


def _header(path) -> list[str]:
    """The header of a CSV file (its first record), or [] for an empty file."""
    return next((row for _, row in _csv_records(path, _whole_lines_end(path), header=False)), [])


def _csv_line(values) -> bytes:
    """One CSV line as pandas writes it (pandas uses the csv module, lines end with os.linesep)."""
    import csv
    import io
    import os

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=os.linesep).writerow(values)
    return buffer.getvalue().encode()


def _rows_text(table, columns) -> str:
    """The table's rows in ``columns`` as :func:`write_detections` writes them: the same
    rounding and the same text as pandas (floats as ``repr``, NaN and None empty), at a tenth
    of ``DataFrame.round().to_csv()``'s cost for the few rows of one image."""
    import csv
    import io
    import os

    cells = []
    for column in columns:
        if column not in table.columns:
            cells.append([""] * len(table))
            continue
        values = table[column].to_numpy()
        if values.dtype.kind == "f" and column in _DECIMALS:
            values = values.round(_DECIMALS[column])
        cells.append([_cell(value) for value in values.tolist()])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=os.linesep).writerows(zip(*cells))
    return buffer.getvalue()


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else repr(value)
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return ""
    return str(value)


def _images_line(row: dict) -> str:
    """An images-list row as :func:`write_detections` writes it (integers or empty)."""

    def integer(value):
        return "" if value is None or value != value else str(int(value))  # None or NaN: empty

    values = [str(row["image"]), row["status"], *(integer(row.get(c)) for c in IMAGES_COLUMNS[2:5])]
    return _csv_line([*values, row.get("error") or ""]).decode()


def _write_all(handle, text: str) -> None:
    """All of ``text`` to an unbuffered file (one write call unless the system splits it)."""
    data = memoryview(text.encode())
    while data:
        data = data[handle.write(data) :]


def _whole_lines_end(path) -> int:
    """The byte offset after the last newline: the end of the whole lines. A last line without
    one is torn (a write interrupted by a kill)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def _truncate(path, size: int) -> None:
    import os

    with open(path, "r+b") as handle:
        handle.truncate(size)
        os.fsync(handle.fileno())


def _csv_records(path, end=None, header: bool = True):
    """``(byte offset, fields)`` of each record up to byte ``end`` (after the header unless
    ``header``=False), read as a stream."""
    import csv

    with open(path, "rb") as handle:
        position = [0]
        end = path.stat().st_size if end is None else end

        def lines():
            for line in handle:
                if position[0] >= end:
                    return
                position[0] += len(line)
                yield line.decode("utf-8", errors="replace")

        reader = csv.reader(lines())
        if header:
            next(reader, None)
        while True:
            offset = position[0]
            row = next(reader, None)
            if row is None:
                return
            yield offset, row


def _checked_records(path, end, n_fields: int):
    for number, (offset, row) in enumerate(_csv_records(path, end), 2):
        if len(row) != n_fields:
            raise DetectionsFileError(
                f"{path}: cannot resume: record {number} has {len(row)} fields, expected {n_fields}"
            )
        yield offset, row


def _drop_records(path, offsets) -> None:
    """Rewrite ``path`` atomically without the records starting at ``offsets`` (streamed)."""
    from .atomic import atomic_path

    drop = set(offsets)
    with atomic_path(path) as tmp, open(path, "rb") as source, open(tmp, "wb") as target:

        def copy(start, end):
            if start not in drop:
                source.seek(start)
                target.write(source.read(end - start))

        target.write(source.readline())  # the header
        previous = None
        for offset, _ in _csv_records(path):
            if previous is not None:
                copy(previous, offset)
            previous = offset
        if previous is not None:
            copy(previous, path.stat().st_size)


def read_detections(path):
    """Read a detections / labels file, checking the contract: a CSV, or an ECSV, FITS or
    Parquet catalogue (:mod:`napari_clumps.export`), read into the same table as its CSV. Raises
    :class:`DetectionsFileError`."""
    import pandas as pd

    from .export import CATALOGUE_SUFFIXES, read_catalogue

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in CATALOGUE_SUFFIXES and suffix != ".csv":
            table = read_catalogue(path)
        else:
            table = pd.read_csv(path, dtype={"image": str, "label": str, "model": str}, keep_default_na=True)
    except FileNotFoundError:
        raise DetectionsFileError(f"{path}: no such file") from None
    except Exception as error:
        kind = suffix.lstrip(".").upper() if suffix in CATALOGUE_SUFFIXES else "CSV"
        raise DetectionsFileError(f"{path}: not a readable {kind} ({type(error).__name__})") from error
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DetectionsFileError(f"{path}: missing columns {', '.join(missing)}")
    bad = ~table["label"].isin(LABELS)
    if bad.any():
        raise DetectionsFileError(
            f"{path}: line {int(np.flatnonzero(bad)[0]) + 2}: label {table['label'][bad].iloc[0]!r} "
            f"is not one of {', '.join(LABELS)}"
        )
    table["model"] = table["model"].fillna("")
    return table


def read_images_list(path):
    """The images list next to a detections CSV, or None when there is none."""
    import pandas as pd

    companion = images_list_path(path)
    return pd.read_csv(companion, dtype={"image": str}) if companion.exists() else None


def labelled_image_names(images_list) -> list[str] | None:
    """The images of an images list that count as labelled: all of them, except in a review
    queue's list (:data:`REVIEW_STATUS_COLUMN`) the ones nobody has reviewed yet. None when
    there is no images list."""
    if images_list is None:
        return None
    if REVIEW_STATUS_COLUMN in images_list:
        images_list = images_list[images_list[REVIEW_STATUS_COLUMN] == REVIEWED]
    return list(images_list["image"])
