"""Slow reference metrics written straight from the definitions, one object mask at a time.

Deliberately independent of cellzoo.metrics (no contingency table, no shared helpers) so the
fast engine can be checked against it. Per-object loops over bounding-box crops keep it
usable on 1000x1000 images.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


def pairwise(gt: np.ndarray, pred: np.ndarray):
    """Per-object intersections: (gt ids, pred ids, gt areas, pred areas, {(g, p): inter})."""
    gt_ids = [int(i) for i in np.unique(gt) if i != 0]
    pred_ids = [int(i) for i in np.unique(pred) if i != 0]
    gt_area = dict(zip(*(v.tolist() for v in np.unique(gt[gt > 0], return_counts=True))))
    pred_area = dict(zip(*(v.tolist() for v in np.unique(pred[pred > 0], return_counts=True))))
    boxes = ndimage.find_objects(gt)
    inter = {}
    for g in gt_ids:
        box = boxes[g - 1]
        mask = gt[box] == g
        for p in np.unique(pred[box][mask]):
            if p == 0:
                continue
            inter[(g, int(p))] = int(np.logical_and(mask, pred[box] == p).sum())
    return gt_ids, pred_ids, gt_area, pred_area, inter


def _iou(g, p, ga, pa, inter):
    i = inter.get((g, p), 0)
    return i / (ga[g] + pa[p] - i) if i else 0.0


def ref_aji(gt, pred):
    gt_ids, pred_ids, ga, pa, inter = pairwise(gt, pred)
    if not gt_ids and not pred_ids:
        return 1.0
    c = u = 0
    used = set()
    for g in gt_ids:
        best, best_iou, best_inter = None, 0.0, 0
        for p in pred_ids:
            iou = _iou(g, p, ga, pa, inter)
            if iou > best_iou or (iou == best_iou and iou > 0 and inter[(g, p)] > best_inter):
                best, best_iou, best_inter = p, iou, inter[(g, p)]
        if best is None:
            u += ga[g]
        else:
            c += inter[(g, best)]
            u += ga[g] + pa[best] - inter[(g, best)]
            used.add(best)
    u += sum(pa[p] for p in pred_ids if p not in used)
    return c / u


def ref_aji_no_reuse(gt, pred):
    gt_ids, pred_ids, ga, pa, inter = pairwise(gt, pred)
    if not gt_ids and not pred_ids:
        return 1.0
    c = u = 0
    left = set(pred_ids)
    for g in gt_ids:
        best, best_iou = None, 0.0
        for p in sorted(left):
            iou = _iou(g, p, ga, pa, inter)
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            u += ga[g]
        else:
            c += inter[(g, best)]
            u += ga[g] + pa[best] - inter[(g, best)]
            left.discard(best)
    return c / (u + sum(pa[p] for p in left))


def ref_aji_plus(gt, pred):
    gt_ids, pred_ids, ga, pa, inter = pairwise(gt, pred)
    if not gt_ids and not pred_ids:
        return 1.0
    iou = np.array([[_iou(g, p, ga, pa, inter) for p in pred_ids] for g in gt_ids]).reshape(len(gt_ids), len(pred_ids))
    rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
    c = u = 0
    paired_g, paired_p = set(), set()
    for r, k in zip(rows, cols):
        if iou[r, k] > 0:
            g, p = gt_ids[r], pred_ids[k]
            c += inter[(g, p)]
            u += ga[g] + pa[p] - inter[(g, p)]
            paired_g.add(g)
            paired_p.add(p)
    u += sum(ga[g] for g in gt_ids if g not in paired_g) + sum(pa[p] for p in pred_ids if p not in paired_p)
    return c / u


def ref_dice(gt, pred):
    a, b = gt > 0, pred > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * np.logical_and(a, b).sum() / total


def ref_pq(gt, pred, thr=0.5):
    """(dq, sq, pq, tp, fp, fn) with pairs at IoU > thr (thr >= 0.5)."""
    gt_ids, pred_ids, ga, pa, inter = pairwise(gt, pred)
    if not gt_ids and not pred_ids:
        return 1.0, 1.0, 1.0, 0, 0, 0
    ious = [_iou(g, p, ga, pa, inter) for (g, p) in inter]
    hits = [v for v in ious if v > thr]
    tp = len(hits)
    fp, fn = len(pred_ids) - tp, len(gt_ids) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum(hits) / tp if tp else 0.0
    return dq, sq, dq * sq, tp, fp, fn
