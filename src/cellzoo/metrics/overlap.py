"""One contingency table per image: every pairing metric is derived from it.

``overlap_table(gt, pred)`` makes one pass over the pixels and records, for each
GT object and each predicted object that share pixels, how many they share,
plus every object's area. AJI, AJI+, PQ, detection scores, GlaS object scores
and per-class PQ then pair objects from that table with vectorised NumPy (or a
linear assignment where a unique maximal pairing is needed) instead of looping
over object masks, which is what makes them ~100x faster than per-object code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Largest dense (n_gt+1)*(n_pred+1) table counted with np.bincount; above it
# the pairs are counted by sorting (np.unique), which needs no dense table.
_DENSE_TABLE_LIMIT = 1 << 22


def check_label_pair(gt: np.ndarray, pred: np.ndarray, what: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """Validate two instance maps (same shape, integer ids >= 0) and return them as arrays."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    for name, arr in (("ground-truth", gt), ("predicted", pred)):
        if arr.dtype == bool:
            raise ValueError(f"the {name} {what} map is boolean; pass an instance map with one id per "
                             "object (e.g. skimage.measure.label(mask))")
        integral_floats = np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0))
        if not (np.issubdtype(arr.dtype, np.integer) or integral_floats):
            raise ValueError(f"the {name} {what} map must hold integer ids (0 = background), "
                             f"got dtype {arr.dtype}; convert it with labels.astype('int32')")
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in shape: {gt.shape} vs {pred.shape}; "
                         "they must cover the same pixels")
    out = []
    for arr in (gt, pred):  # native int dtypes are kept: a 1000x1000 int64 copy costs more than the metrics
        if arr.dtype.kind == "f" or arr.dtype == np.uint64:
            arr = arr.astype(np.int64)
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise ValueError(f"{what} ids must be >= 0 (0 = background); found negative ids")
        out.append(arr)
    return out[0], out[1]


@dataclass(frozen=True)
class Overlaps:
    """Contingency table of one GT/prediction pair, stored sparsely.

    ``gt_ids``/``pred_ids`` are the original object ids, ``gt_area``/``pred_area`` their
    pixel counts; entry ``k`` says GT object ``rows[k]`` and predicted object ``cols[k]``
    (indices into those arrays) share ``inter[k]`` pixels. Only overlapping pairs are stored.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    inter: np.ndarray

    @property
    def n_gt(self) -> int:
        return int(self.gt_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def union(self) -> np.ndarray:
        return self.gt_area[self.rows] + self.pred_area[self.cols] - self.inter

    @property
    def iou(self) -> np.ndarray:
        return self.inter / self.union

    # ------------------------------------------------------------------ pairings
    def best_pred_per_gt(self) -> np.ndarray:
        """Entry index of each GT object's max-IoU prediction (GT objects without overlap are absent).

        Ties in IoU go to the larger intersection, then to the lower prediction id.
        """
        if self.rows.size == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.lexsort((self.cols, -self.inter, -self.iou, self.rows))
        sorted_rows = self.rows[order]
        first = np.ones(order.size, dtype=bool)
        first[1:] = sorted_rows[1:] != sorted_rows[:-1]
        return order[first]

    def best_gt_per_pred(self) -> np.ndarray:
        """Entry index of each predicted object's GT with the largest intersection (ties: lower GT id)."""
        if self.rows.size == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.lexsort((self.rows, -self.inter, self.cols))
        sorted_cols = self.cols[order]
        first = np.ones(order.size, dtype=bool)
        first[1:] = sorted_cols[1:] != sorted_cols[:-1]
        return order[first]

    def matched(self, iou_threshold: float = 0.5) -> np.ndarray:
        """Entry indices of a unique GT-prediction pairing with IoU > ``iou_threshold``.

        For thresholds >= 0.5 every pair above the threshold is unique (two objects cannot
        both overlap one object by more than half its union), so no assignment is needed.
        Below 0.5 the pairing maximises the number of pairs, then their summed IoU
        (the StarDist ``matching`` rule), solved per connected group of overlapping objects.
        """
        iou = self.iou
        candidates = np.flatnonzero(iou > iou_threshold)
        if iou_threshold >= 0.5 or candidates.size == 0:
            return candidates
        # 1 per pair (count first) plus a tie-breaking share of the IoU that cannot outweigh one pair
        weight = 1.0 + iou[candidates] / (2.0 * max(candidates.size, 1))
        return candidates[self._assign(candidates, weight)]

    def max_iou_assignment(self) -> np.ndarray:
        """Entry indices of the unique pairing that maximises the summed IoU (AJI+ / Munkres)."""
        entries = np.arange(self.rows.size)
        if entries.size == 0:
            return entries
        return entries[self._assign(entries, self.iou)]

    def _assign(self, entries: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Maximum-weight unique pairing among ``entries``; returns positions into ``entries``.

        Objects that overlap exactly one object which overlaps only them pair trivially; the
        rest is split into connected groups and each group is solved with linear_sum_assignment.
        """
        rows, cols = self.rows[entries], self.cols[entries]
        row_deg = np.bincount(rows, minlength=self.n_gt)
        col_deg = np.bincount(cols, minlength=self.n_pred)
        trivial = (row_deg[rows] == 1) & (col_deg[cols] == 1)
        chosen = [np.flatnonzero(trivial)]
        rest = np.flatnonzero(~trivial)
        if rest.size:
            r, c = rows[rest], cols[rest]
            graph = coo_matrix((np.ones(rest.size), (r, c + self.n_gt)),
                               shape=(self.n_gt + self.n_pred,) * 2)
            _, component = connected_components(graph, directed=False)
            group = component[r]
            order = np.argsort(group, kind="stable")
            bounds = np.flatnonzero(np.diff(group[order])) + 1
            for members in np.split(rest[order], bounds):
                ur, ri = np.unique(rows[members], return_inverse=True)
                uc, ci = np.unique(cols[members], return_inverse=True)
                dense = np.zeros((ur.size, uc.size))
                dense[ri, ci] = weight[members]
                pos = np.full((ur.size, uc.size), -1, dtype=np.int64)
                pos[ri, ci] = members
                a, b = linear_sum_assignment(dense, maximize=True)
                picked = pos[a, b]
                chosen.append(picked[picked >= 0])
        return np.sort(np.concatenate(chosen))


def overlap_table(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Build the sparse GT x prediction contingency table in one pass over the pixels.

    Only pixels that are foreground in both maps are paired; their (gt id, pred id) keys
    are counted with np.bincount (or np.unique when the ids are too large for a dense
    count) and mapped to object indices afterwards, so no full-size relabelled copy is made.
    """
    gt, pred = check_label_pair(gt, pred)
    gflat, pflat = gt.ravel(), pred.ravel()
    g_fg, p_fg = gflat > 0, pflat > 0
    both = g_fg & p_fg
    g_top = int(gflat.max()) if gflat.size else 0
    p_top = int(pflat.max()) if pflat.size else 0
    stride = p_top + 1
    keys = gflat[both].astype(np.int64) * stride + pflat[both]
    if (g_top + 1) * stride <= _DENSE_TABLE_LIMIT:
        counts = np.bincount(keys, minlength=(g_top + 1) * stride)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
        g_raw, p_raw = np.divmod(keys, stride)
        # area = pixels shared with some prediction + pixels alone (two small bincounts, not a full-image one)
        g_area = np.bincount(gflat[g_fg & ~p_fg], minlength=g_top + 1)
        g_area += np.bincount(g_raw, weights=inter, minlength=g_top + 1).astype(np.int64)
        p_area = np.bincount(pflat[p_fg & ~g_fg], minlength=stride)
        p_area += np.bincount(p_raw, weights=inter, minlength=stride).astype(np.int64)
        gt_ids = np.flatnonzero(g_area[1:]) + 1
        pred_ids = np.flatnonzero(p_area[1:]) + 1
        gt_area, pred_area = g_area[gt_ids], p_area[pred_ids]
    else:  # ids too large for a dense count: sort instead
        keys, inter = np.unique(keys, return_counts=True)
        g_raw, p_raw = np.divmod(keys, stride)
        gt_ids, gt_area = np.unique(gflat[g_fg], return_counts=True)
        pred_ids, pred_area = np.unique(pflat[p_fg], return_counts=True)
    rows = np.searchsorted(gt_ids, g_raw)
    cols = np.searchsorted(pred_ids, p_raw)
    return Overlaps(gt_ids.astype(np.int64), pred_ids.astype(np.int64), gt_area.astype(np.int64),
                    pred_area.astype(np.int64), rows.astype(np.int64), cols.astype(np.int64),
                    inter.astype(np.int64))
