"""Sending detections to other astronomy tools over SAMP: TOPCAT, DS9, Aladin.

SAMP (the IVOA's Simple Application Messaging Protocol) passes messages between desktop tools
through a *hub*, which TOPCAT, DS9 and Aladin each start when none is running. We connect to
the running hub (``$SAMP_HUB``, else ``~/.samp``), send, and disconnect; we never start a hub:
with none running, a :class:`SampHubNotFoundError` says what to do.

* :func:`send_table`: a detections table as a VOTable (``table.load.votable``), to every tool
  that takes tables (TOPCAT, Aladin, glue).
* :func:`send_image_with_regions`: a FITS file (``image.load.fits``) to every tool that opens
  images, then, to DS9, its boxes as a region file (``ds9.set`` with ``regions load <file>``,
  DS9's own SAMP command: https://ds9.si.edu/doc/ref/samp.html).

Files are sent by ``file://`` URL, so the receiving tool must run on this machine (as SAMP's
standard profile assumes); they are written to one temporary folder, removed when Python exits.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np

#: How we appear in the hub's list of clients (TOPCAT's SAMP window shows it).
CLIENT_NAME = "napari-clumps"
#: A hub on this machine answers in milliseconds; one that does not within this is stuck.
CONNECT_TIMEOUT_S = 5.0
#: How long DS9 may take to load a FITS file before the regions are sent anyway.
DS9_REPLY_TIMEOUT_S = 20

HUB_NOT_RUNNING = "No SAMP hub is running: start TOPCAT or DS9 (they run a hub), then try again"

#: Columns of the detections schema with a unit and a UCD, so that TOPCAT and Aladin find the
#: positions without being told (docs/contracts.md gives their meaning).
_COLUMN_UNITS = {"x_min": "pix", "y_min": "pix", "x_max": "pix", "y_max": "pix", "x_center": "pix", "y_center": "pix"}
_COLUMN_UCDS = {"ra": "pos.eq.ra;meta.main", "dec": "pos.eq.dec;meta.main"}


class SampError(Exception):
    """Sending over SAMP failed; the message is one line for the user."""


class SampHubNotFoundError(SampError):
    """No SAMP hub is running (or the one in the lockfile does not answer)."""


class SampNoRecipientError(SampError):
    """The hub runs, but no tool on it takes this kind of message."""


def send_table(table, name: str = "napari-clumps detections") -> list[str]:
    """Send a detections table to every SAMP tool that takes tables; return their names.

    The table goes as a VOTable (``ra``/``dec`` in degrees with their UCDs, boxes in pixels);
    ``name`` is the title the receiving tool shows.
    """
    with _hub_client() as client:
        recipients = _subscribed(client, "table.load.votable")
        if not recipients:
            raise SampNoRecipientError("No tool on the SAMP hub takes tables: start TOPCAT (or Aladin), then try again")
        path = write_votable(table, _send_folder() / f"detections-{uuid.uuid4().hex[:8]}.xml")
        message = {
            "samp.mtype": "table.load.votable",
            "samp.params": {"url": path.as_uri(), "table-id": path.stem, "name": name},
        }
        for client_id in recipients:
            client.notify(client_id, message)
        return [_client_name(client, client_id) for client_id in recipients]


def send_image_with_regions(image_path, table, wcs=None, name: str | None = None) -> list[str]:
    """Send a FITS file to every SAMP tool that opens images, and to DS9 its boxes as regions
    (sky coordinates when ``wcs``, the image's celestial WCS, is given); return the tools' names.

    ``table`` holds this image's rows of the detections schema; with no rows, only the image goes.
    """
    from .io import is_fits_path

    image_path = Path(image_path)
    if not is_fits_path(image_path):
        raise SampError(f"{image_path.name}: DS9 opens FITS files, and this is not one; send the table to TOPCAT")
    if not image_path.is_file():
        raise SampError(f"{image_path}: no such file to send (was it moved?)")
    with _hub_client() as client:
        ds9s = _subscribed(client, "ds9.set")
        viewers = [client_id for client_id in _subscribed(client, "image.load.fits") if client_id not in ds9s]
        if not ds9s and not viewers:
            raise SampNoRecipientError(
                "No tool on the SAMP hub opens FITS images: start DS9 (or Aladin), then try again"
            )
        regions_path = None
        if len(table):
            from .export import write_regions

            regions_path = write_regions(table, _send_folder() / f"{image_path.stem}-{uuid.uuid4().hex[:8]}.reg", wcs)
        image_message = {
            "samp.mtype": "image.load.fits",
            "samp.params": {
                "url": image_path.resolve().as_uri(),
                "image-id": image_path.name,
                "name": name or image_path.name,
            },
        }
        for client_id in viewers:
            client.notify(client_id, image_message)
        for client_id in ds9s:
            # a call, waited for: DS9 clears a frame's regions when it loads an image into it,
            # and notifications may arrive in any order, so the regions go once the image is in
            _call(client, client_id, image_message)
            if regions_path is not None:
                regions_message = {"samp.mtype": "ds9.set", "samp.params": {"cmd": _ds9_regions_load(regions_path)}}
                _call(client, client_id, regions_message)
        return [_client_name(client, client_id) for client_id in [*ds9s, *viewers]]


def write_votable(table, path) -> Path:
    """A detections table (pandas) as a VOTable file, with units and position UCDs."""
    from astropy.io.votable import from_table
    from astropy.table import Table

    votable = from_table(Table.from_pandas(_votable_ready(table)))
    for field in votable.get_first_table().fields:
        if field.name in _COLUMN_UNITS:
            field.unit = _COLUMN_UNITS[field.name]
        if field.name in _COLUMN_UCDS:
            field.unit = "deg"
            field.ucd = _COLUMN_UCDS[field.name]
    path = Path(path)
    votable.to_xml(str(path))
    return path


def _votable_ready(table):
    """The table with its object columns typed: VOTable has no "any Python object" type.
    True/False columns with gaps (``on_host`` without a host) become masked booleans, the rest
    text, with empty cells for missing values."""
    import pandas as pd

    table = pd.DataFrame(table).reset_index(drop=True)
    for column in [name for name in table.columns if pd.api.types.is_object_dtype(table[name].dtype)]:
        values = table[column]
        missing = values.isna()
        if values[~missing].map(lambda v: isinstance(v, bool | np.bool_)).all() and not missing.all():
            table[column] = values.astype("boolean")
        else:
            table[column] = values.where(~missing, "").map(str)
    return table


def _ds9_regions_load(path: Path) -> str:
    """DS9's command to load a region file; a path with spaces goes in braces, DS9's quotes."""
    text = str(path)
    return f"regions load {{{text}}}" if any(c.isspace() for c in text) else f"regions load {text}"


@contextlib.contextmanager
def _hub_client():
    """A client connected to the running hub for the length of the block (not callable: we
    only send, and the hub itself waits for replies to calls)."""
    client = _astropy_samp().SAMPIntegratedClient(
        name=CLIENT_NAME, description="Giant star-forming clumps found in galaxy images", callable=False
    )
    _connect_within(client, CONNECT_TIMEOUT_S)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):  # a hub that went away meanwhile has nothing to undo
            client.disconnect()


def _connect_within(client, timeout: float) -> None:
    """Connect ``client`` to the running hub, or raise :class:`SampHubNotFoundError` within
    ``timeout`` seconds: astropy's connection has no timeout of its own, and a hub that accepts
    a connection and never answers would hold the caller forever."""
    outcome: list = []
    abandoned = threading.Event()

    def connect():
        try:
            client.connect(pool_size=1)
            outcome.append(None)
        except Exception as error:  # handed to the caller below
            outcome.append(error)
        if abandoned.is_set() and client.is_connected:  # too late: leave no stray client on the hub
            with contextlib.suppress(Exception):
                client.disconnect()

    thread = threading.Thread(target=connect, name="napari-clumps SAMP connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        abandoned.set()
        raise SampHubNotFoundError(f"The SAMP hub does not answer (waited {timeout:g} s): restart TOPCAT or DS9")
    error = outcome[0]
    if error is not None:
        if isinstance(error, _astropy_samp().SAMPHubError | OSError):
            raise SampHubNotFoundError(HUB_NOT_RUNNING) from error
        raise SampError(f"Could not connect to the SAMP hub: {_first_line(error)}") from error


def _astropy_samp():
    """``astropy.samp``, imported without its deprecation warning (astropy 8 points to pyvo.samp,
    which is not a dependency; the protocol and this use of it are unchanged)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*astropy.samp was deprecated")
        import astropy.samp

    return astropy.samp


def _subscribed(client, mtype: str) -> list[str]:
    """Ids of the hub's clients (not us) subscribed to ``mtype``, in a stable order."""
    return sorted(client.get_subscribed_clients(mtype))


def _call(client, client_id: str, message: dict) -> None:
    """Send ``message`` to one client and wait (the hub waits) for its reply."""
    from xmlrpc.client import Fault

    try:
        response = client.call_and_wait(client_id, message, str(DS9_REPLY_TIMEOUT_S))
    except (_astropy_samp().SAMPProxyError, Fault, OSError) as error:  # a hub's timeout comes back as a Fault
        raise SampError(f"{_client_name(client, client_id)} did not take {message['samp.mtype']}: {error}") from error
    if response.get("samp.status") == "samp.error":
        reason = response.get("samp.error", {}).get("samp.errortxt", "no reason given")
        raise SampError(f"{_client_name(client, client_id)} refused {message['samp.mtype']}: {_first_line(reason)}")


def _client_name(client, client_id: str) -> str:
    with contextlib.suppress(Exception):
        return str(client.get_metadata(client_id).get("samp.name") or client_id)
    return client_id


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


_folder: list[Path] = []


def _send_folder() -> Path:
    """One temporary folder for the files sent in this session: the receiving tools read them
    after we return, so they stay until Python exits."""
    if not _folder:
        _folder.append(Path(tempfile.mkdtemp(prefix="napari-clumps-samp-")))
        atexit.register(shutil.rmtree, _folder[0], ignore_errors=True)
    return _folder[0]
