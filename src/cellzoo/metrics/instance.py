"""Instance-segmentation metrics for one image, all derived from one contingency table.

Every function takes ``(gt, pred)`` instance maps (integer ids, 0 = background, same
shape) or an :class:`~cellzoo.metrics.overlap.Overlaps` table already built with
:func:`~cellzoo.metrics.overlap.overlap_table` (pass it as ``gt`` and leave ``pred``
out), so several metrics of one image share a single pass over the pixels.

Empty-image conventions (the same everywhere unless a docstring says otherwise):
GT and prediction both empty -> 1.0 (nothing to find, nothing wrongly found);
exactly one of them empty -> 0.0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .overlap import Overlaps, check_label_pair, overlap_table


def _table(gt, pred) -> Overlaps:
    if isinstance(gt, Overlaps):
        if pred is not None:
            raise ValueError("pass either an Overlaps table or a (gt, pred) pair, not both")
        return gt
    if pred is None:
        raise ValueError("a predicted instance map is required next to the ground truth")
    return overlap_table(gt, pred)


def _both_empty(t: Overlaps) -> bool:
    return t.n_gt == 0 and t.n_pred == 0


def _aggregated_jaccard(t: Overlaps, entries: np.ndarray) -> float:
    """sum |G∩P| / (sum |G∪P| + unpaired GT areas + unpaired prediction areas) over ``entries``."""
    if _both_empty(t):
        return 1.0
    gt_paired = np.zeros(t.n_gt, dtype=bool)
    pred_paired = np.zeros(t.n_pred, dtype=bool)
    gt_paired[t.rows[entries]] = True
    pred_paired[t.cols[entries]] = True
    inter = t.inter[entries].sum()
    union = t.union[entries].sum() + t.gt_area[~gt_paired].sum() + t.pred_area[~pred_paired].sum()
    return float(inter / union)


def aji(gt, pred=None) -> float:
    """Aggregated Jaccard Index as distributed with MoNuSeg (Kumar et al. 2017).

    Each GT object is paired with the prediction of maximal IoU; a prediction may serve
    several GT objects (its pixels then count in each union). Predictions paired with no
    GT object and GT objects that overlap nothing add their area to the union.
    Equals HoVer-Net's ``get_fast_aji``. Both empty -> 1.0, one empty -> 0.0.
    """
    t = _table(gt, pred)
    return _aggregated_jaccard(t, t.best_pred_per_gt())


def aji_plus(gt, pred=None) -> float:
    """AJI+ (Graham et al. 2019): AJI with a unique pairing of maximal summed IoU (Munkres).

    Equals HoVer-Net's ``get_fast_aji_plus`` up to ties between equally good assignments.
    Both empty -> 1.0, one empty -> 0.0.
    """
    t = _table(gt, pred)
    return _aggregated_jaccard(t, t.max_iou_assignment())


def aji_no_reuse(gt, pred=None) -> float:
    """FullNet's AJI variant: GT objects in id order take the max-IoU prediction *not yet used*.

    A used prediction is removed, so it cannot be paired twice; a GT object whose overlapping
    predictions are all used adds only its own area to the union. The result depends on the
    GT id order by definition, so this one walks the table's rows in order (a loop over table
    entries, not over pixels). Both empty -> 1.0, one empty -> 0.0.
    """
    t = _table(gt, pred)
    if _both_empty(t):
        return 1.0
    order = np.lexsort((t.cols, t.rows))
    rows, cols = t.rows[order].tolist(), t.cols[order].tolist()
    inters, unions = t.inter[order].tolist(), t.union[order].tolist()
    used = np.zeros(t.n_pred, dtype=bool)
    inter_sum = union_sum = 0
    k, n = 0, len(rows)
    for row in range(t.n_gt):
        best, best_iou = -1, 0.0
        while k < n and rows[k] == row:
            if not used[cols[k]]:
                iou = inters[k] / unions[k]
                if iou > best_iou:
                    best, best_iou = k, iou
            k += 1
        if best < 0:
            union_sum += int(t.gt_area[row])
        else:
            used[cols[best]] = True
            inter_sum += inters[best]
            union_sum += unions[best]
    union_sum += int(t.pred_area[~used].sum())
    return float(inter_sum / union_sum)


def dice(gt, pred=None) -> float:
    """Pixel (binary foreground) Dice 2|G∩P| / (|G|+|P|). Both empty -> 1.0, one empty -> 0.0."""
    if isinstance(gt, Overlaps):
        if pred is not None:
            raise ValueError("pass either an Overlaps table or a (gt, pred) pair, not both")
        both, total = gt.inter.sum(), gt.gt_area.sum() + gt.pred_area.sum()
    else:  # pixel Dice needs no pairing, so no table either
        if pred is None:
            raise ValueError("a predicted instance map is required next to the ground truth")
        g, p = check_label_pair(gt, pred)
        g, p = g > 0, p > 0
        both, total = np.count_nonzero(g & p), np.count_nonzero(g) + np.count_nonzero(p)
    if total == 0:
        return 1.0
    return float(2.0 * both / total)


def panoptic_quality(gt, pred=None, iou_threshold: float = 0.5) -> dict[str, float]:
    """DQ, SQ and PQ (Kirillov et al.; HoVer-Net's per-image form) with pairs at IoU > 0.5.

    DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the pairs, PQ = DQ * SQ.
    Returns ``{"dq", "sq", "pq", "tp", "fp", "fn", "iou_sum"}``. Both empty -> 1.0 for
    DQ/SQ/PQ; no pair at all (including one side empty) -> 0.0. HoVer-Net's
    ``get_fast_pq`` adds 1e-6 to SQ's denominator, so it differs from this by < 1e-6·SQ.
    """
    t = _table(gt, pred)
    pairs = t.matched(iou_threshold)
    tp = int(pairs.size)
    fp, fn = t.n_pred - tp, t.n_gt - tp
    iou_sum = float(t.iou[pairs].sum())
    if _both_empty(t):
        dq = sq = 1.0
    else:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = iou_sum / tp if tp else 0.0
    return {"dq": dq, "sq": sq, "pq": dq * sq, "tp": tp, "fp": fp, "fn": fn, "iou_sum": iou_sum}


def detection_scores(gt, pred=None, thresholds: Sequence[float] = (0.5, 0.75, 0.9)) -> dict[float, dict[str, float]]:
    """Object detection counts and scores at each IoU threshold (pairs need IoU > threshold).

    Per threshold: ``tp, fp, fn, precision, recall, f1`` and ``dsb_ap`` = TP / (TP + FP + FN),
    the score StarDist's paper and the DSB 2018 challenge call "AP". Below 0.5 the unique
    pairing maximises the number of pairs (StarDist's rule). StarDist counts IoU >= τ, we
    count IoU > τ (as PQ and the DSB challenge do); they differ only when an IoU equals τ.
    Both empty -> all scores 1.0; one empty -> all scores 0.0.
    """
    t = _table(gt, pred)
    out: dict[float, dict[str, float]] = {}
    for thr in thresholds:
        tp = int(t.matched(float(thr)).size)
        fp, fn = t.n_pred - tp, t.n_gt - tp
        if _both_empty(t):
            precision = recall = f1 = ap = 1.0
        else:
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * tp / (2 * tp + fp + fn)
            ap = tp / (tp + fp + fn)
        out[float(thr)] = {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall,
                           "f1": f1, "dsb_ap": ap}
    return out


def dsb_ap(gt, pred=None, iou_threshold: float = 0.5) -> float:
    """StarDist/DSB-2018 "AP" at one IoU threshold: TP / (TP + FP + FN). See :func:`detection_scores`."""
    return detection_scores(gt, pred, (iou_threshold,))[float(iou_threshold)]["dsb_ap"]


def dsb_map(gt, pred=None, thresholds: Sequence[float] = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))) -> float:
    """DSB 2018 challenge score: mean of :func:`dsb_ap` over IoU 0.5, 0.55, ..., 0.95."""
    t = _table(gt, pred)
    scores = detection_scores(t, thresholds=thresholds)
    return float(np.mean([s["dsb_ap"] for s in scores.values()]))
