"""What the dock widgets share about work in a worker thread (docs/reliability.md, GUI part).

One run per widget at a time; a worker's late signals touch nothing of a widget whose viewer was
closed; a closed widget stops its worker; an unexpected error in a worker ends the run like any
other failure. Qt glue only: the work itself is the core's.
"""

from __future__ import annotations

import logging

log = logging.getLogger("napari_clumps")


def qt_deleted(widget) -> bool:
    """Whether the Qt side of ``widget`` is gone (its viewer was closed, or its dock removed).

    A worker's queued signals still arrive after that; a slot that then touched a label or a
    layer list would raise, so the slots ask this first and drop what comes.
    """
    try:
        from qtpy import sip
    except ImportError:  # PySide: no sip, shiboken says the same
        from qtpy import shiboken

        return not shiboken.isValid(widget)
    return sip.isdeleted(widget)


def stop_when_closed(widget, stop) -> None:
    """Call ``stop()`` when ``widget`` is deleted (napari deletes the docks as it closes the
    viewer), so that a run nobody can see any more ends at its next check instead of going on
    for minutes, writing files, and keeping Python from exiting (Qt waits for its thread pool).

    ``stop`` must touch only Python state (an Event, the worker): the widget is being deleted.
    """
    widget.destroyed.connect(lambda *_: stop())


def busy_message(what: str, stop_button: str) -> str:
    """The status line of a refused second start: one run at a time, never two interleaved."""
    return f"{what} is already running: wait for it to end, or press {stop_button} first"


def crash_line(error: BaseException) -> str:
    """One line for an unexpected error in a worker; the traceback goes to the log, where a bug
    report can take it from."""
    log.error("napari-clumps: error in a background run", exc_info=error)
    return f"{type(error).__name__}: {error}"
