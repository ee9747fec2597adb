"""Per-instance feature table (the ``features`` of the instances Labels layer)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .index import COLUMNS, InstanceIndex

__all__ = ["COLUMNS", "instance_table"]


def instance_table(labels: np.ndarray, classes: np.ndarray | None = None,
                   class_names: Sequence[str] | None = None,
                   scores: Mapping[int, float] | None = None) -> dict[str, np.ndarray]:
    """Columns label, class, class_name, area, centroid_y, centroid_x, score for a 2-D instance map.

    ``class`` is the majority non-zero class inside each instance (0 where it covers none; 1 for
    every instance when ``classes`` is None); ``score`` comes from ``scores`` (NaN for instances
    without one, e.g. drawn by hand). One pass over the pixels (:class:`InstanceIndex`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"instance_table needs a 2-D instance map, got shape {labels.shape}.")
    index = InstanceIndex.build(labels, classes, default_class=0 if classes is not None else 1)
    return index.table(class_names, scores)
