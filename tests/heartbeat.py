"""A heartbeat on the GUI thread: how long the Qt event loop went without serving.

A ``QTimer`` ticks every ``interval_ms``; the gap between two ticks is how long the event loop
was busy elsewhere (a slot, a repaint, the GIL held by another thread). Used by
tests/test_gui_responsiveness.py and benchmarks/gui_responsiveness.py (which puts this folder on
``sys.path``). With ``where=True`` a watchdog thread also records what the GUI thread was doing
during each long gap (its stack, and the other threads', every ``sample_ms``), to find a stall.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback


class Heartbeat:
    def __init__(self, interval_ms: int = 10, where: bool = False, sample_ms: int = 100):
        from qtpy.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000
        self.gaps: list[tuple[float, float]] = []  # (gap in s, time of the tick that ended it)
        self.samples: list[tuple[float, float, dict]] = []  # (s into the gap, gap start, stacks by thread)
        self._last = None
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._where, self._sample = where, sample_ms / 1000
        self._gui_thread = threading.get_ident()
        self._watching = False
        self._watchdog = None

    def __enter__(self):
        self._last = time.perf_counter()
        self._timer.start()
        if self._where:
            self._watching = True
            self._watchdog = threading.Thread(target=self._watch, daemon=True)
            self._watchdog.start()
        return self

    def __exit__(self, *exc):
        self._timer.stop()
        self._tick()  # the stretch since the last tick counts too
        self._watching = False
        if self._watchdog is not None:
            self._watchdog.join()

    def _tick(self):
        now = time.perf_counter()
        self.gaps.append((now - self._last, now))
        self._last = now

    @property
    def longest(self) -> float:
        """The longest time (s) the event loop did not serve the timer, less its interval."""
        return max((gap for gap, _ in self.gaps), default=0.0) - self.interval

    def stalls(self, over: float) -> list[float]:
        """The gaps (s, less the interval) longer than ``over`` s, longest first."""
        return sorted((gap - self.interval for gap, _ in self.gaps if gap - self.interval > over), reverse=True)

    def where_longest(self, frames: int = 3) -> list[str]:
        """What the GUI thread was doing in the longest gap (with ``where=True``): per sample, its
        innermost ``frames`` calls, and the calls the event loop made (what to look at first)."""
        if not self.gaps:
            return []
        gap, end = max(self.gaps)
        lines = []
        for into, start, stacks in self.samples:
            if abs(start - (end - gap)) < 1e-6 and self._gui_thread in stacks:
                stack = stacks[self._gui_thread]
                inner = " < ".join(stack[::-1][:frames])
                lines.append(f"{into * 1000:.0f} ms in: {inner}, from {_entry(stack)}")
        return lines

    def _watch(self):
        # Sampled from this thread (it needs the GIL too: a gap where another thread holds it
        # shows up late, with that thread's stack beside the GUI thread's).
        while self._watching:
            time.sleep(self._sample / 4)
            start = self._last
            into = time.perf_counter() - start
            last = self.samples[-1] if self.samples else None
            if into >= self._sample and (last is None or last[1] != start or into - last[0] >= self._sample):
                self.samples.append((into, start, _stacks()))


def _stacks() -> dict:
    """Every other thread's calls, outermost first, as "function (file:line)"."""
    return {
        thread: [f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" for f in traceback.extract_stack(frame)]
        for thread, frame in sys._current_frames().items()
        if thread != threading.get_ident()
    }


#: Functions that serve the event loop while a test or benchmark waits: the call after them is
#: what the event loop ran.
_WAITING = ("wait_until", "waitUntil", "wait", "_tick", "exec", "exec_")


def _entry(stack: list[str]) -> str:
    waiting = [i for i, call in enumerate(stack) if call.split(" (")[0] in _WAITING]
    rest = stack[waiting[-1] + 1 :] if waiting else stack
    return " > ".join(rest[:2]) if rest else "the event loop itself"
