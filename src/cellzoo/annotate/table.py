"""Per-instance feature table (the ``features`` of the instances Labels layer)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .ops import class_of_instances

COLUMNS = ("label", "class", "class_name", "area", "centroid_y", "centroid_x", "score")


def instance_table(labels: np.ndarray, classes: np.ndarray | None = None,
                   class_names: Sequence[str] | None = None,
                   scores: Mapping[int, float] | None = None) -> dict[str, np.ndarray]:
    """Columns label, class, class_name, area, centroid_y, centroid_x, score for a 2-D instance map.

    ``class`` is the majority class inside each instance (1 when ``classes`` is None);
    ``score`` comes from ``scores`` (NaN for instances without one, e.g. drawn by hand).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"instance_table needs a 2-D instance map, got shape {labels.shape}.")
    class_names = list(class_names or ["background", "nucleus"])
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return {"label": np.zeros(0, np.int64), "class": np.zeros(0, np.int64),
                "class_name": np.zeros(0, dtype=object), "area": np.zeros(0, np.int64),
                "centroid_y": np.zeros(0), "centroid_x": np.zeros(0), "score": np.zeros(0)}
    ones = np.ones(labels.shape, dtype=np.float64)
    area = ndimage.sum_labels(ones, labels, ids).astype(np.int64)
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    cy = ndimage.sum_labels(rows, labels, ids) / area
    cx = ndimage.sum_labels(cols, labels, ids) / area
    if classes is None:
        cls = np.ones(ids.size, dtype=np.int64)
    else:
        lookup = class_of_instances(labels, classes, default_class=0)
        cls = np.array([lookup[int(i)] for i in ids], dtype=np.int64)
    names = np.array([class_names[c] if c < len(class_names) else f"class {c}" for c in cls], dtype=object)
    scores = scores or {}
    score = np.array([scores.get(int(i), np.nan) for i in ids], dtype=float)
    return {"label": ids.astype(np.int64), "class": cls, "class_name": names, "area": area,
            "centroid_y": cy, "centroid_x": cx, "score": score}
