"""Measure how long the Qt event loop stalls: a QTimer asks to tick every few milliseconds and
records how late each tick comes. Late ticks are the freezes a user feels (no repaint, no click).

    from benchmarks._stall_probe import StallProbe

    with StallProbe(interval_ms=10) as probe:
        ...  # drive the GUI, e.g. qtbot.waitUntil(...) or app.processEvents() loops
    print(probe.summary())          # {'ticks': ..., 'max_ms': ..., 'over_100ms': ..., ...}
    probe.stalls(100)               # [(t_start_s, length_ms), ...] of every stall over 100 ms

A stall is the gap between two ticks minus the interval. The probe only measures while the event
loop runs (``QApplication.exec``, ``qtbot.wait``/``waitUntil``, ``processEvents``); code that blocks
the main thread between such calls shows up as one long gap, which is exactly what a user sees.
``mark(label)`` stores a labelled time so stalls can be matched with what the program was doing.
"""
from __future__ import annotations

import time
from typing import Any


class StallProbe:
    """QTimer-based event-loop latency probe (see the module docstring)."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = int(interval_ms)
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(self.interval_ms)
        self._timer.timeout.connect(self._tick)
        self.ticks: list[float] = []  # perf_counter of each tick
        self.marks: list[tuple[float, str]] = []
        self.started = 0.0

    # ------------------------------------------------------------------ control
    def start(self) -> "StallProbe":
        self.ticks.clear()
        self.marks.clear()
        self.started = time.perf_counter()
        self.ticks.append(self.started)
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.stop()
        self._tick()  # a stall still going on at the end counts too

    def __enter__(self) -> "StallProbe":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())

    def mark(self, label: str) -> None:
        self.marks.append((time.perf_counter() - self.started, label))

    # ------------------------------------------------------------------ results
    def lateness_ms(self) -> list[float]:
        """How late each tick came (gap to the previous tick minus the interval), in ms."""
        return [max(0.0, (b - a) * 1000 - self.interval_ms) for a, b in zip(self.ticks, self.ticks[1:])]

    def stalls(self, threshold_ms: float = 100.0) -> list[tuple[float, float]]:
        """(start in s since ``start()``, length in ms) of every gap longer than ``threshold_ms``."""
        out = []
        for a, b in zip(self.ticks, self.ticks[1:]):
            late = (b - a) * 1000 - self.interval_ms
            if late > threshold_ms:
                out.append((a - self.started, late))
        return out

    def summary(self, threshold_ms: float = 100.0) -> dict[str, float]:
        late = sorted(self.lateness_ms())
        if not late:
            return {"ticks": 0, "seconds": 0.0, "max_ms": 0.0, "p99_ms": 0.0, "median_ms": 0.0,
                    f"over_{int(threshold_ms)}ms": 0}
        return {"ticks": len(late), "seconds": self.ticks[-1] - self.started, "max_ms": late[-1],
                "p99_ms": late[min(len(late) - 1, int(0.99 * len(late)))], "median_ms": late[len(late) // 2],
                f"over_{int(threshold_ms)}ms": sum(v > threshold_ms for v in late)}

    def marks_near(self, at_s: float, window_s: float = 0.5) -> list[str]:
        """Labels marked within ``window_s`` of a time (to explain a stall)."""
        return [label for t, label in self.marks if abs(t - at_s) <= window_s]
