"""The fine-tuning widget's live plot: the training loss at each step, the validation F1 at each
epoch (matplotlib in Qt).

Drawn whole (axes, ticks, labels) only when a run starts, the plot is made wider or narrower, or a value leaves
the axes' limits; every other update draws the two lines over a saved picture of the rest
(matplotlib's blitting). A whole draw is mostly Agg text rendering: 55 ms on an idle 2-core
machine, 0.2-0.5 s while PyTorch trains beside it, in the GUI thread; an update of the lines
alone, under 1 ms (docs/benchmarks/gui_responsiveness.md).
"""

from __future__ import annotations

import math

import numpy as np

#: Headroom above the largest loss seen, so that a slightly larger one does not redraw everything.
LOSS_HEADROOM = 1.15
#: The plot's height on screen (pixels).
PLOT_HEIGHT = 240


class TrainingPlot:
    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.figure = Figure(figsize=(3.8, 2.6))
        self.loss_axes = self.figure.add_subplot(111)
        self.f1_axes = self.loss_axes.twinx()
        self.loss_axes.set_xlabel("step", fontsize=8)
        self.loss_axes.set_ylabel("training loss", fontsize=8, color="tab:blue")
        self.f1_axes.set_ylabel("validation F1", fontsize=8, color="tab:orange")
        for axes in (self.loss_axes, self.f1_axes):
            axes.tick_params(labelsize=7)
            axes.locator_params(nbins=4)  # fewer tick labels: a whole draw 80 -> 55 ms (idle, 2 cores)
        self.loss_axes.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))  # steps are whole
        self.f1_axes.set_ylim(0, 1)
        # animated: left out of whole draws, drawn over the saved background instead
        (self.loss_line,) = self.loss_axes.plot([], [], color="tab:blue", lw=1, animated=True)
        (self.f1_line,) = self.f1_axes.plot([], [], "o-", color="tab:orange", animated=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        # a fixed height: the docks beside it are re-laid out when a run starts or ends (progress
        # bars shown, status lines longer), and each new height redrew the whole plot, in the GUI
        # thread, as the run started (0.2-0.3 s, docs/benchmarks/gui_responsiveness.md)
        self.canvas.setFixedHeight(PLOT_HEIGHT)
        self._background = None
        self.whole_draws = 0  # how many times everything was drawn (the tests count them)
        self.canvas.mpl_connect("draw_event", self._after_whole_draw)
        self.canvas.mpl_connect("resize_event", lambda event: self.figure.tight_layout())
        self.start(0)

    def start(self, total_steps: int) -> None:
        """A new run of ``total_steps`` steps (0: not known yet): empty lines, laid out afresh."""
        self.loss_line.set_data([], [])
        self.f1_line.set_data([], [])
        self.loss_axes.set_xlim(0, max(total_steps, 1))
        self.loss_axes.set_ylim(0, 1)
        self._loss_scaled = False
        self.figure.tight_layout()  # once per run (and resize): at every draw it doubles a draw's time
        self._redraw_whole()

    def show(self, losses, f1_points, steps_per_epoch: int, total_steps: int) -> None:
        """Plot ``losses`` (one per step) and ``f1_points`` ((epoch, F1) pairs, F1 None when the
        epoch had no validation images)."""
        self.loss_line.set_data(np.arange(1, len(losses) + 1), losses)
        shown = [(epoch * steps_per_epoch, value) for epoch, value in f1_points if value is not None]
        self.f1_line.set_data([x for x, _ in shown], [value for _, value in shown])
        if self._fit_limits(losses, total_steps) or self._background is None:
            self._redraw_whole()
            return
        self.canvas.restore_region(self._background)
        self._draw_lines()
        # update(), not blit(): blit repaints at once, and with it every other widget of the window
        # waiting to be painted; update lets Qt paint the new picture at its next pass
        self.canvas.update()

    def _fit_limits(self, losses, total_steps: int) -> bool:
        """Widen the axes to take the data; whether they changed (everything must be redrawn)."""
        changed = False
        if total_steps > self.loss_axes.get_xlim()[1]:
            self.loss_axes.set_xlim(0, total_steps)
            changed = True
        finite = [value for value in losses if math.isfinite(value)]
        if finite and (not self._loss_scaled or max(finite) > self.loss_axes.get_ylim()[1]):
            self.loss_axes.set_ylim(0, max(finite) * LOSS_HEADROOM)  # from the run's first loss on
            self._loss_scaled = changed = True
        return changed

    def _redraw_whole(self) -> None:
        self._background = None
        self.canvas.draw_idle()

    def _after_whole_draw(self, event) -> None:
        """Keep the picture without the lines (for the next updates), then draw the lines on it."""
        self.whole_draws += 1
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_lines()

    def _draw_lines(self) -> None:
        self.loss_axes.draw_artist(self.loss_line)
        self.f1_axes.draw_artist(self.f1_line)
