"""Sky coordinates for cutouts without a WCS of their own (JPEG/PNG as Galaxy Zoo and the Legacy
Surveys viewer ship them), from a cutout catalogue.

A cutout catalogue is a table (CSV, ECSV, FITS table, ...: whatever ``astropy.table.Table.read``
reads) with one row per image: its name, the sky position of its centre and its pixel scale, and
optionally its orientation. :func:`cutout_wcs` turns a row and the image's size into a celestial
TAN WCS of the image's array, so that its detections get RA/Dec exactly as a FITS file's do
(:func:`napari_clumps.detections.detections_frame`). A file's own celestial WCS always wins: the
catalogue serves only images without one (:func:`with_catalog_wcs`).

**Columns** (names in any case; of several names for one thing, the first listed that the table
has is used; columns with units, as ECSV and FITS tables carry, are converted):

* the image: ``image``, ``file``, ``filename``, ``file_name``, ``path``, ``name``;
* the centre's RA and Dec in degrees (ICRS): ``ra``, ``ra_deg``; ``dec``, ``dec_deg``;
* the pixel scale in arcsec per pixel: ``pixscale``, ``pixel_scale``, ``pixscale_arcsec``,
  ``pixel_scale_arcsec``, ``scale``;
* optional, the orientation in degrees: ``angle``, ``pa``, ``orientation`` (default 0).

**The centre** is the centre of the image: the edge-convention point ``(width / 2, height / 2)``
(:mod:`napari_clumps.pixels`), the middle pixel's centre for odd sizes, as cutout services use.

**Orientation.** Row 0 is the top of the picture, the first row of the JPEG file. With angle 0 the
cutout is as survey services make them: north up (towards row 0), east left (towards column 0).
A non-zero angle is where north points, in degrees counter-clockwise from up as the picture is
shown (90: north to the left, east down); east is always 90 degrees counter-clockwise from north,
as on the sky seen from the Earth (no mirror image).

**Which row is an image's** (:meth:`CutoutCatalog.match`): the row whose name is the image's name
as ``detect`` reports it (relative to the folder given); else a row with the same file name whose
folders, where both names have any, agree as far as the shorter goes (``sub/a.jpg`` fits
``a.jpg`` and ``/data/sub/a.jpg``, not ``other/a.jpg``); else the same with stems (the file name
without its image suffix: ``a.jpg`` -> ``a``). When two rows fit at the first rule that finds
any, that is an error naming both; an image no row fits keeps empty RA/Dec.

Errors are :class:`CutoutCatalogError`: one line naming the file and the reason.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

#: Accepted column names (compared in lower case), in order of preference.
NAME_COLUMNS = ("image", "file", "filename", "file_name", "path", "name")
RA_COLUMNS = ("ra", "ra_deg")
DEC_COLUMNS = ("dec", "dec_deg")
PIXEL_SCALE_COLUMNS = ("pixscale", "pixel_scale", "pixscale_arcsec", "pixel_scale_arcsec", "scale")
ANGLE_COLUMNS = ("angle", "pa", "orientation")
#: Orientation when the catalogue has no angle column: north up, east left.
DEFAULT_ANGLE = 0.0

_ARCSEC_PER_DEGREE = 3600.0


class CutoutCatalogError(ValueError):
    """A cutout catalogue that cannot be used; ``str()`` is ``"<path>: <reason>"`` on one line."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


@dataclasses.dataclass(frozen=True)
class CutoutCentre:
    """One catalogue row: where an image's centre is on the sky, and how large its pixels are."""

    name: str
    ra: float  # degrees, ICRS
    dec: float  # degrees, ICRS
    pixel_scale: float  # arcsec per pixel
    angle: float = DEFAULT_ANGLE  # degrees; see the module docstring
    row: int = 0  # 1-based data row of the catalogue, for messages

    def wcs(self, width: int, height: int):
        """The celestial WCS of an image of this size (:func:`cutout_wcs`)."""
        return cutout_wcs(self.ra, self.dec, self.pixel_scale, width, height, self.angle)


def cutout_wcs(ra: float, dec: float, pixel_scale: float, width: int, height: int, angle: float = DEFAULT_ANGLE):
    """Celestial TAN WCS of a ``width`` x ``height`` cutout whose centre is at ``(ra, dec)``
    (degrees), with pixels of ``pixel_scale`` arcsec, row 0 at the top and north ``angle`` degrees
    counter-clockwise from up (0: north up, east left)."""
    from astropy.wcs import WCS

    from .pixels import edge_to_fits

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.crval = [float(ra), float(dec)]
    wcs.wcs.crpix = [float(v) for v in edge_to_fits(width / 2, height / 2)]
    # Unit vectors on the picture (x right, y = row, down): north points to (-sin, -cos), east
    # (90 degrees further counter-clockwise) to (-cos, +sin). The standard coordinates east (xi)
    # and north (eta) of a pixel offset (dx, dy) are its projections on them, which is the CD matrix.
    turn = np.deg2rad(angle)
    cos, sin = np.cos(turn), np.sin(turn)
    wcs.wcs.cd = (pixel_scale / _ARCSEC_PER_DEGREE) * np.array([[-cos, sin], [-sin, -cos]])
    wcs.pixel_shape = (int(width), int(height))
    return wcs


class CutoutCatalog:
    """The rows of a cutout catalogue, found by image name (:meth:`match`). Picklable: reading
    workers get it whole."""

    def __init__(self, centres, path="cutout catalogue"):
        self.path = str(path)
        self.centres = tuple(centres)
        self._by_name: dict[str, CutoutCentre] = {}
        self._by_file: dict[str, list[CutoutCentre]] = {}
        self._by_stem: dict[str, list[CutoutCentre]] = {}
        for centre in self.centres:
            parts = _name_parts(centre.name)
            key = "/".join(parts)
            if key in self._by_name:
                other = self._by_name[key]
                raise CutoutCatalogError(self.path, f"rows {other.row} and {centre.row} both name {centre.name!r}")
            self._by_name[key] = centre
            self._by_file.setdefault(parts[-1], []).append(centre)
            self._by_stem.setdefault(_stem(parts[-1]), []).append(centre)

    def __len__(self) -> int:
        return len(self.centres)

    def match(self, name) -> CutoutCentre | None:
        """The row of the image called ``name`` (the module docstring gives the rule), or None.
        Raises :class:`CutoutCatalogError` when two rows fit equally well."""
        parts = _name_parts(name)
        exact = self._by_name.get("/".join(parts))
        if exact is not None:
            return exact
        for found, key, own in (
            (self._by_file, parts[-1], lambda p: p),
            (self._by_stem, _stem(parts[-1]), _stem_parts),
        ):
            fitting = [c for c in found.get(key, []) if _folders_agree(own(_name_parts(c.name)), own(parts))]
            if len(fitting) > 1:
                first, second = fitting[:2]
                raise CutoutCatalogError(
                    self.path,
                    f"image {str(name)!r} fits rows {first.row} ({first.name!r}) and {second.row} ({second.name!r}); "
                    "give the names with their folders, as detect reports them",
                )
            if fitting:
                return fitting[0]
        return None

    def wcs_for(self, name, width: int, height: int):
        """The celestial WCS of the image called ``name`` of that size, or None if no row fits."""
        centre = self.match(name)
        return None if centre is None else centre.wcs(width, height)


def with_catalog_wcs(image, name, catalog: CutoutCatalog | None):
    """``image`` (a :class:`~napari_clumps.io.GalaxyImage`) with the WCS its catalogue row gives,
    when it has no celestial WCS of its own; else ``image`` itself (never changed in place)."""
    if catalog is None or image.wcs is not None:
        return image
    wcs = catalog.wcs_for(name, image.width, image.height)
    return image if wcs is None else dataclasses.replace(image, wcs=wcs)


def as_cutout_catalog(catalog) -> CutoutCatalog | None:
    """A :class:`CutoutCatalog` from one, a table file's path, or None."""
    if catalog is None or isinstance(catalog, CutoutCatalog):
        return catalog
    return read_cutout_catalog(catalog)


def read_cutout_catalog(path) -> CutoutCatalog:
    """Read a cutout catalogue (the module docstring lists the columns). Raises
    :class:`CutoutCatalogError` naming the file and what is wrong."""
    path = Path(path)
    table = _read_table(path)
    columns = {}
    for column in table.colnames:
        columns.setdefault(column.lower(), column)

    def find(names, what: str, required: bool = True) -> str | None:
        for name in names:
            if name in columns:
                return columns[name]
        if required:
            raise CutoutCatalogError(
                path,
                f"no {what} column: expected one of {', '.join(names)} (any case); "
                f"the table has {', '.join(table.colnames) or 'no columns'}",
            )
        return None

    name_column = find(NAME_COLUMNS, "image name")
    ra_column, dec_column = find(RA_COLUMNS, "RA"), find(DEC_COLUMNS, "Dec")
    scale_column = find(PIXEL_SCALE_COLUMNS, "pixel scale")
    angle_column = find(ANGLE_COLUMNS, "angle", required=False)
    if len(table) == 0:
        raise CutoutCatalogError(path, "the table has no rows")

    names = _names(path, table[name_column])
    ra = _numbers(path, table[ra_column], "deg") % 360.0
    dec = _numbers(path, table[dec_column], "deg")
    scale = _numbers(path, table[scale_column], "arcsec")
    angle = np.full(len(table), DEFAULT_ANGLE) if angle_column is None else _numbers(path, table[angle_column], "deg")
    _require(path, dec_column, np.abs(dec) <= 90, "is not a declination in [-90, 90] degrees", dec)
    _require(path, scale_column, scale > 0, "is not a pixel scale above 0 arcsec/px", scale)
    return CutoutCatalog(
        (
            CutoutCentre(n, float(r), float(d), float(s), float(a), row=i + 1)
            for i, (n, r, d, s, a) in enumerate(zip(names, ra, dec, scale, angle))
        ),
        path,
    )


# ---------------------------------------------------------------------- helpers


def _read_table(path: Path):
    from astropy.io.registry import IORegistryError
    from astropy.table import Table

    if not path.exists():
        raise CutoutCatalogError(path, "no such file")
    if path.is_dir():
        raise CutoutCatalogError(path, "is a folder, not a table file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "several tables in the file: reading the first"
            try:
                return Table.read(path)
            except IORegistryError:  # a suffix astropy does not know (.txt, .dat, none): guess the text layout
                return Table.read(path, format="ascii")
    except CutoutCatalogError:
        raise
    except Exception as error:  # astropy raises many types for files it cannot parse
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        raise CutoutCatalogError(path, f"not a table astropy can read ({reason})") from error


def _first_bad_row(mask) -> int:
    return int(np.flatnonzero(mask)[0]) + 1


def _names(path, column) -> list[str]:
    missing = np.ma.getmaskarray(column)
    # FITS tables hold bytes
    names = [(v.decode(errors="replace") if isinstance(v, bytes) else str(v)).strip() for v in np.asarray(column)]
    empty = missing | np.array([not n for n in names])
    if empty.any():
        raise CutoutCatalogError(path, f"column {column.name!r}, row {_first_bad_row(empty)}: no image name")
    return names


def _numbers(path, column, unit: str) -> np.ndarray:
    """A column as floats in ``unit`` (converted when the column has a unit of its own)."""
    from astropy import units

    missing = np.ma.getmaskarray(column)
    if missing.any():
        raise CutoutCatalogError(path, f"column {column.name!r}, row {_first_bad_row(missing)}: no value")
    if column.unit is not None:
        try:
            return np.asarray(column.quantity.to_value(unit), float)
        except units.UnitsError:
            raise CutoutCatalogError(path, f"column {column.name!r} is in {column.unit}, not in {unit}") from None
    try:
        values = np.asarray(column, dtype=float)
    except ValueError:
        values = None
    if values is None:
        for row, value in enumerate(np.asarray(column), start=1):
            try:
                float(value)
            except ValueError:
                raise CutoutCatalogError(
                    path, f"column {column.name!r}, row {row}: {str(value)!r} is not a number of {unit}"
                ) from None
    _require(path, column.name, np.isfinite(values), f"is not a finite number of {unit}", values)
    return values


def _require(path, column_name: str, ok: np.ndarray, problem: str, values) -> None:
    if not np.all(ok):
        row = _first_bad_row(~np.asarray(ok))
        raise CutoutCatalogError(path, f"column {column_name!r}, row {row}: {values[row - 1]:g} {problem}")


def _name_parts(name) -> tuple[str, ...]:
    """A name's folders and file name (``/`` or ``\\`` separated, ``.`` parts dropped)."""
    parts = tuple(p for p in str(name).strip().replace("\\", "/").split("/") if p not in ("", "."))
    return parts or ("",)


def _stem(file_name: str) -> str:
    """A file name without its image suffix (``a.fits.gz`` -> ``a``); other dots are kept
    (``J1234.5+0102`` is a name, not a suffix)."""
    from .io import SUPPORTED_SUFFIXES

    lower = file_name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return file_name


def _stem_parts(parts: tuple[str, ...]) -> tuple[str, ...]:
    return (*parts[:-1], _stem(parts[-1]))


def _folders_agree(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether the shorter path is the end of the longer one (``a.jpg`` fits ``sub/a.jpg``)."""
    shorter, longer = sorted((a, b), key=len)
    return longer[len(longer) - len(shorter) :] == shorter
