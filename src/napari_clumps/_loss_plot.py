"""The fine-tuning widget's live plot: the training loss at each step, the validation F1 at each
epoch (matplotlib in Qt), over the run's epochs.

Drawn whole (axes, ticks, labels) when a run starts, before its worker does, and afterwards only
when the plot is made wider or narrower or a value leaves the axes; every other update draws the
two lines over a saved picture of the rest (matplotlib's blitting). A whole draw is mostly Agg
text rendering: 45 ms (and 20 ms of layout) on an idle 2-core machine, 0.1-0.5 s while PyTorch
trains beside it, in the GUI thread; an update of the lines alone, under 1 ms
(docs/benchmarks/gui_responsiveness.md). So the axes are known before the first step: the x axis
in epochs (the number asked for), the loss relative to the run's first (its value in the status
line), from 0 to :data:`LOSS_TOP`.
"""

from __future__ import annotations

import math

import numpy as np

#: The loss axis's top, relative to the first loss: a loss this much above the first widens it.
LOSS_TOP = 1.15
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
        self.loss_axes.set_xlabel("epoch", fontsize=8)
        self.loss_axes.set_ylabel("training loss (first step = 1)", fontsize=8, color="tab:blue")
        self.f1_axes.set_ylabel("validation F1", fontsize=8, color="tab:orange")
        for axes in (self.loss_axes, self.f1_axes):
            axes.tick_params(labelsize=7)
            axes.locator_params(nbins=4)  # fewer tick labels: a whole draw 80 -> 55 ms (idle, 2 cores)
        self.loss_axes.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # whole epochs
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
        self.start(1)

    def start(self, epochs: int) -> None:
        """A new run of ``epochs`` epochs: empty lines; the axes drawn again at once (before the
        run's worker starts) only if their limits change."""
        self.loss_line.set_data([], [])
        self.f1_line.set_data([], [])
        limits = ((0, max(epochs, 1)), (0, LOSS_TOP))
        if (self.loss_axes.get_xlim(), self.loss_axes.get_ylim()) == limits and self._background is not None:
            self.canvas.restore_region(self._background)  # the same axes, without the last run's lines
            self.canvas.update()
            return
        self.loss_axes.set_xlim(*limits[0])
        self.loss_axes.set_ylim(*limits[1])
        self.figure.tight_layout()  # when the ticks change: at every draw it doubles a draw's time
        self.canvas.draw()

    def show(self, losses, f1_points, steps_per_epoch: int) -> None:
        """Plot ``losses`` (one per step, relative to the first finite one) and ``f1_points``
        ((epoch, F1) pairs, F1 None when the epoch had no validation images)."""
        losses = np.asarray(losses, float)
        finite = losses[np.isfinite(losses) & (losses > 0)]
        relative = losses / finite[0] if len(finite) else losses
        epochs = np.arange(1, len(losses) + 1) / max(steps_per_epoch, 1)
        self.loss_line.set_data(epochs, relative)
        shown = [(epoch, value) for epoch, value in f1_points if value is not None]
        self.f1_line.set_data([x for x, _ in shown], [value for _, value in shown])
        if self._fit_limits(epochs, relative) or self._background is None:
            self._redraw_whole()
            return
        self.canvas.restore_region(self._background)
        self._draw_lines()
        # update(), not blit(): blit repaints at once, and with it every other widget of the window
        # waiting to be painted; update lets Qt paint the new picture at its next pass
        self.canvas.update()

    def _fit_limits(self, epochs, relative) -> bool:
        """Widen the axes to take the data; whether they changed (everything must be redrawn)."""
        changed = False
        if len(epochs) and epochs[-1] > self.loss_axes.get_xlim()[1]:  # a longer run than asked
            self.loss_axes.set_xlim(0, math.ceil(epochs[-1]))
            changed = True
        finite = relative[np.isfinite(relative)]
        if len(finite) and finite.max() > self.loss_axes.get_ylim()[1]:
            self.loss_axes.set_ylim(0, finite.max() * LOSS_TOP)
            changed = True
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
