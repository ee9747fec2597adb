"""Helpers shared by the tests of cellzoo.data: object matching between two instance maps."""
from __future__ import annotations

import numpy as np


def best_iou_per_object(reference: np.ndarray, other: np.ndarray) -> dict[int, float]:
    """For each object of ``reference``, the IoU with the ``other`` object it overlaps most."""
    ref_ids, ref_area = np.unique(reference[reference > 0], return_counts=True)
    oth_ids, oth_area = np.unique(other[other > 0], return_counts=True)
    areas_ref, areas_oth = dict(zip(ref_ids.tolist(), ref_area.tolist())), dict(zip(oth_ids.tolist(), oth_area.tolist()))
    both = (reference > 0) & (other > 0)
    pairs, overlap = np.unique(np.stack([reference[both], other[both]]), axis=1, return_counts=True)
    best = {int(i): 0.0 for i in ref_ids}
    for (r, o), n in zip(pairs.T.tolist(), overlap.tolist()):
        best[r] = max(best[r], n / (areas_ref[r] + areas_oth[o] - n))
    return best


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` split the pixels into the same objects (ids may differ)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))
