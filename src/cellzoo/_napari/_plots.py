"""Small matplotlib canvases embedded in the widgets: a metric bar chart and a live training curve."""
from __future__ import annotations

import math
import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

# napari's default dark theme, so the plots do not glare inside the dock
BACKGROUND = "#262930"
FOREGROUND = "#d6d6d6"
ACCENT = "#4c9be8"
SECOND = "#f0a43a"


def _style_axes(ax) -> None:
    ax.set_facecolor(BACKGROUND)
    ax.tick_params(colors=FOREGROUND, labelsize=8)
    for spine in ax.spines.values():
        spine.set_color(FOREGROUND)
    ax.xaxis.label.set_color(FOREGROUND)
    ax.yaxis.label.set_color(FOREGROUND)
    ax.title.set_color(FOREGROUND)


class _Canvas(QWidget):
    def __init__(self, parent: QWidget | None = None, height: float = 2.4) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(4, height), facecolor=BACKGROUND, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(int(height * 70))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.ax = self.figure.add_subplot()
        _style_axes(self.ax)

    def redraw(self) -> None:
        self.canvas.draw_idle()


class BarChart(_Canvas):
    """Horizontal bars of metric values (e.g. the evaluation summary)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: dict[str, float] = {}

    def show_values(self, values: dict[str, float], title: str = "") -> None:
        finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        self.values = finite
        self.ax.clear()
        _style_axes(self.ax)
        names = list(finite)[::-1]  # first metric on top
        bars = self.ax.barh(names, [finite[n] for n in names], color=ACCENT)
        upper = max([1.0, *finite.values()])
        self.ax.set_xlim(0, upper * 1.12)
        for bar, name in zip(bars, names):
            self.ax.text(bar.get_width() + upper * 0.01, bar.get_y() + bar.get_height() / 2,
                         f"{finite[name]:.3f}", va="center", color=FOREGROUND, fontsize=8)
        if title:
            self.ax.set_title(title, fontsize=9)
        self.redraw()

    def clear(self) -> None:
        self.show_values({})


class TrainingPlot(_Canvas):
    """Training loss per step (left axis) and the validation metric per epoch (right axis)."""

    #: live updates are drawn at most this often: each draw is GUI-thread time (see flush)
    MIN_REDRAW_INTERVAL_S = 1.0
    #: the constrained layout is recomputed on the first draw, after a resize and every this many draws
    LAYOUT_EVERY = 10

    def __init__(self, parent: QWidget | None = None, metric_name: str = "validation metric") -> None:
        from qtpy.QtCore import QTimer

        super().__init__(parent)
        self.metric_name = metric_name
        self.loss_points: list[tuple[float, float]] = []
        self.metric_points: list[tuple[float, float]] = []
        self.metric_ax = self.ax.twinx()
        self._last_draw = -math.inf
        self._draws_since_layout = math.inf
        self._pending = QTimer(self)
        self._pending.setSingleShot(True)
        self._pending.timeout.connect(self.flush)
        self._setup()

    def redraw(self) -> None:
        """Draw now, or once when the interval since the last draw is over (updates in between coalesce)."""
        wait = self._last_draw + self.MIN_REDRAW_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self.flush()
        elif not self._pending.isActive():
            self._pending.start(int(wait * 1000) + 1)

    def flush(self) -> None:
        """Draw the latest state now (e.g. when a job ended).

        The constrained layout is half the cost of a draw (66 vs 31 ms of CPU, measured under Xvfb), so
        it runs only now and then; in between the axes keep their place."""
        self._pending.stop()
        self._last_draw = time.monotonic()
        if self._draws_since_layout >= self.LAYOUT_EVERY:
            self.figure.set_layout_engine("constrained")
            self.canvas.draw()
            self.figure.set_layout_engine("none")
            self._draws_since_layout = 0
        else:
            self.canvas.draw()
            self._draws_since_layout += 1

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self._draws_since_layout = math.inf  # the next draw lays the axes out for the new size
        super().resizeEvent(event)

    def _setup(self) -> None:
        for ax in (self.ax, self.metric_ax):
            ax.clear()
            _style_axes(ax)
        # clear() puts a twin axis' ticks and label back on the left
        self.metric_ax.yaxis.tick_right()
        self.metric_ax.yaxis.set_label_position("right")
        self.ax.set_xlabel("epoch", fontsize=8)
        self.ax.set_ylabel("training loss", fontsize=8, color=ACCENT)
        self.metric_ax.set_ylabel(self.metric_name, fontsize=8, color=SECOND)
        (self._loss_line,) = self.ax.plot([], [], color=ACCENT, lw=1.2)
        (self._metric_line,) = self.metric_ax.plot([], [], color=SECOND, marker="o", ms=4, lw=1.2)

    def reset(self, metric_name: str | None = None) -> None:
        if metric_name:
            self.metric_name = metric_name
        self.loss_points.clear()
        self.metric_points.clear()
        self._setup()
        self._draws_since_layout = math.inf  # new labels: lay out again
        self.flush()

    def add_loss(self, epoch_position: float, loss: float) -> None:
        if math.isfinite(loss):
            self.loss_points.append((epoch_position, loss))
            self._loss_line.set_data(*zip(*self.loss_points))
            self.ax.relim()
            self.ax.autoscale_view()
            self.redraw()

    def add_metric(self, epoch_position: float, value: float) -> None:
        if math.isfinite(value):
            self.metric_points.append((epoch_position, value))
            self._metric_line.set_data(*zip(*self.metric_points))
            self.metric_ax.relim()
            self.metric_ax.autoscale_view()
            self.redraw()
