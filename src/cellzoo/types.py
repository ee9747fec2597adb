"""Shared value types: segmentation results, job events and cancellation.

Every long job (segment, train, evaluate, fetch) is a generator that yields the
events below and *returns* its result; :func:`run_to_end` drains one.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Generator, Iterable, TypeVar

import numpy as np

#: Default class names used when a model gives no class information.
BACKGROUND = "background"


@dataclass
class Instances:
    """Instance segmentation of one 2-D image.

    ``labels`` holds instance ids (0 = background), ``classes`` the per-pixel
    class id (0 = background) or ``None`` for class-agnostic models.
    ``class_of`` and ``scores`` are keyed by instance id.
    ``class_names[k]`` names class id ``k`` (``class_names[0]`` is background).
    """

    labels: np.ndarray
    classes: np.ndarray | None = None
    class_of: dict[int, int] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=lambda: [BACKGROUND, "nucleus"])
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(len(np.unique(self.labels))) - int((self.labels == 0).any())

    def class_map(self) -> np.ndarray:
        """Per-pixel class map, built from ``class_of`` when ``classes`` is absent."""
        if self.classes is not None:
            return self.classes
        lut = np.zeros(int(self.labels.max()) + 1, dtype=np.uint8)
        for lab, cls in self.class_of.items():
            if lab < lut.size:
                lut[lab] = cls
        if not self.class_of:
            lut[1:] = 1
        return lut[self.labels]

    def table(self) -> dict[str, np.ndarray]:
        """Per-instance features (label, class, class_name, area, centroid, score).

        Column layout matches what napari's ``Labels.features`` expects.
        """
        from scipy import ndimage

        ids = np.unique(self.labels)
        ids = ids[ids != 0]
        if ids.size == 0:
            return {k: np.array([]) for k in
                    ("label", "class", "class_name", "area", "centroid_y", "centroid_x", "score")}
        area = ndimage.sum_labels(np.ones_like(self.labels, dtype=np.int64), self.labels, ids)
        cy, cx = np.array(ndimage.center_of_mass(np.ones_like(self.labels), self.labels, ids)).T
        if self.class_of:
            cls = np.array([self.class_of.get(int(i), 0) for i in ids], dtype=np.int64)
        elif self.classes is not None:
            # majority class inside each instance
            cls = np.array([np.bincount(self.classes[self.labels == i]).argmax() for i in ids])
        else:
            cls = np.ones(ids.size, dtype=np.int64)
        names = np.array([self.class_names[c] if c < len(self.class_names) else str(c) for c in cls])
        score = np.array([self.scores.get(int(i), np.nan) for i in ids], dtype=float)
        return {"label": ids, "class": cls, "class_name": names, "area": area.astype(np.int64),
                "centroid_y": cy, "centroid_x": cx, "score": score}


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of ``stage`` (e.g. tiles, images, steps)."""

    stage: str
    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class TrainStep:
    epoch: int
    step: int
    steps_per_epoch: int
    losses: dict[str, float]
    lr: float = float("nan")


@dataclass(frozen=True)
class Validation:
    """Validation metrics after an epoch; ``best`` is True when this epoch became the best checkpoint."""

    epoch: int
    metrics: dict[str, float]
    best: bool = False


@dataclass(frozen=True)
class Message:
    text: str
    level: str = "info"  # info | warning


class Cancelled(Exception):
    """Raised inside a job when its :class:`CancelToken` was cancelled."""


class CancelToken:
    """Thread-safe flag checked by jobs between tiles, steps and images."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def check_cancel(token: CancelToken | None) -> None:
    if token is not None:
        token.raise_if_cancelled()


R = TypeVar("R")


def run_to_end(gen: Generator[Any, Any, R], on_event=None) -> R:
    """Drain a job generator, optionally passing each event to ``on_event``; return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def as_list(x: Iterable | None) -> list:
    return [] if x is None else list(x)
