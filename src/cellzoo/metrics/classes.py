"""Metrics for typed nuclei: per-class PQ, CoNIC mPQ+ and per-class detection F1.

Class maps are per-pixel (uint8, 0 = background) as everywhere in cellzoo.
"""
from __future__ import annotations

import numpy as np

from .overlap import check_label_pair, overlap_table


def _check_classes(labels: np.ndarray, classes: np.ndarray, what: str) -> np.ndarray:
    classes = np.asarray(classes)
    if classes.shape != labels.shape:
        raise ValueError(f"the {what} class map has shape {classes.shape} but its instance map has "
                         f"{labels.shape}; both must cover the same pixels")
    if not np.issubdtype(classes.dtype, np.integer) or (classes.size and classes.min() < 0):
        raise ValueError(f"the {what} class map must hold class ids >= 0 (0 = background), got {classes.dtype}")
    return classes.astype(np.int64, copy=False)


def class_pq_counts(gt, pred, gt_classes, pred_classes, n_classes: int) -> np.ndarray:
    """Per-class PQ sums of one image, CoNIC style: array ``(n_classes, 4)`` of TP, FP, FN, sum IoU.

    Row ``c - 1`` is class ``c``. As in the CoNIC challenge code, class ``c`` compares the part
    of each GT instance whose pixels have class ``c`` with the same part of each predicted
    instance, paired at IoU > 0.5. All classes come from one contingency table over
    (instance, class) composite objects.
    """
    gt, pred = check_label_pair(gt, pred)
    gcls = _check_classes(gt, gt_classes, "ground-truth")
    pcls = _check_classes(pred, pred_classes, "predicted")
    k = n_classes + 1

    def composite(labels, classes):
        keep = (labels > 0) & (classes > 0) & (classes <= n_classes)
        return np.where(keep, labels.astype(np.int64) * k + classes, 0)

    t = overlap_table(composite(gt, gcls), composite(pred, pcls))
    gt_class, pred_class = t.gt_ids % k, t.pred_ids % k
    pairs = t.matched(0.5)
    pairs = pairs[gt_class[t.rows[pairs]] == pred_class[t.cols[pairs]]]
    pair_class = gt_class[t.rows[pairs]]
    tp = np.bincount(pair_class, minlength=k)
    iou_sum = np.bincount(pair_class, weights=t.iou[pairs], minlength=k)
    fp = np.bincount(pred_class, minlength=k) - tp
    fn = np.bincount(gt_class, minlength=k) - tp
    return np.stack([tp, fp, fn, iou_sum], axis=1)[1:].astype(float)


def pq_from_counts(counts: np.ndarray) -> np.ndarray:
    """PQ per row of (TP, FP, FN, sum IoU) counts; NaN where TP + FP + FN = 0 (class absent)."""
    counts = np.asarray(counts, dtype=float).reshape(-1, 4)
    tp, fp, fn, iou_sum = counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0.0)
    return dq * sq


def multi_pq_plus(counts_per_image) -> tuple[float, np.ndarray]:
    """CoNIC mPQ+: sum the per-class counts over all images first, then PQ per class, then the mean.

    Returns ``(mpq_plus, pq_per_class)``. A class absent from every GT and prediction gets NaN and
    is left out of the mean (all absent -> NaN).
    """
    total = np.sum([np.asarray(c, dtype=float) for c in counts_per_image], axis=0)
    per_class = pq_from_counts(total)
    mpq = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")
    return mpq, per_class


def instance_classes(labels: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, class) of each instance: the majority non-background class of its pixels (0 if none)."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    classes = _check_classes(labels, classes, "")
    t = overlap_table(labels, classes)  # instances x classes contingency table
    order = np.lexsort((t.cols, -t.inter, t.rows))
    first = np.r_[True, t.rows[order][1:] != t.rows[order][:-1]] if order.size else np.zeros(0, bool)
    winner = order[first]
    cls = np.zeros(t.n_gt, dtype=np.int64)
    cls[t.rows[winner]] = t.pred_ids[t.cols[winner]]
    return t.gt_ids, cls


def class_f1_counts(gt, pred, gt_classes, pred_classes, n_classes: int) -> np.ndarray:
    """Per-class detection counts ``(n_classes, 3)``: TP, FP, FN for typed nuclei.

    Objects pair class-agnostically at IoU > 0.5; each instance takes its majority pixel class.
    For class ``c``: TP = pairs where both are ``c``; FP = predicted ``c`` objects not paired with
    a GT ``c``; FN = GT ``c`` objects not paired with a predicted ``c``.
    """
    gt, pred = check_label_pair(gt, pred)
    t = overlap_table(gt, pred)
    _, gcls = instance_classes(gt, gt_classes)
    _, pcls = instance_classes(pred, pred_classes)
    k = n_classes + 1
    gcls = np.clip(gcls, 0, k)
    pcls = np.clip(pcls, 0, k)
    pairs = t.matched(0.5)
    pair_g, pair_p = gcls[t.rows[pairs]], pcls[t.cols[pairs]]
    tp = np.bincount(pair_g[pair_g == pair_p], minlength=k + 1)
    fp = np.bincount(pcls, minlength=k + 1) - tp
    fn = np.bincount(gcls, minlength=k + 1) - tp
    return np.stack([tp, fp, fn], axis=1)[1:k].astype(float)


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) per row; NaN where the class never occurs."""
    tp, fp, fn = np.asarray(counts, dtype=float).reshape(-1, 3).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn)
