"""GlaS-challenge object-level F1, object Dice and object Hausdorff (Sirinukunwattana et al. 2017).

Pairings come from the contingency table; the Hausdorff distance of a pair is computed
on the pair's bounding-box crop with ``skimage.metrics.hausdorff_distance``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import hausdorff_distance

from .overlap import check_label_pair, overlap_table


def _object_f1(t) -> float:
    if t.n_gt == 0 and t.n_pred == 0:
        return 1.0
    best = t.best_gt_per_pred()
    # TP: a segmented object covering at least half of the GT object it overlaps most
    hits = best[t.inter[best] >= 0.5 * t.gt_area[t.rows[best]]]
    tp = np.unique(t.rows[hits]).size
    fp, fn = t.n_pred - tp, t.n_gt - tp
    return float(2 * tp / (2 * tp + fp + fn))


def _pair_hausdorff(a_lab, a_box, b_lab, b_box, a_map, b_map) -> float:
    y0 = min(a_box[0].start, b_box[0].start)
    y1 = max(a_box[0].stop, b_box[0].stop)
    x0 = min(a_box[1].start, b_box[1].start)
    x1 = max(a_box[1].stop, b_box[1].stop)
    return float(hausdorff_distance(a_map[y0:y1, x0:x1] == a_lab, b_map[y0:y1, x0:x1] == b_lab))


def _box_gap(a_box, b_box) -> float:
    """Distance between two bounding boxes: a lower bound of the objects' Hausdorff distance."""
    dy = max(0, b_box[0].start - a_box[0].stop + 1, a_box[0].start - b_box[0].stop + 1)
    dx = max(0, b_box[1].start - a_box[1].stop + 1, a_box[1].start - b_box[1].stop + 1)
    return float(np.hypot(dy, dx))


def glas_object_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """GlaS object-level scores of one 2-D image: ``{"f1", "dice", "hausdorff"}``.

    * F1: a segmented object is a TP when it covers at least 50 % of the GT object it
      overlaps most; FP = segmented - TP, FN = GT - TP.
    * object Dice: ½ [Σ_i γ_i D(G_i, S*(G_i)) + Σ_j σ_j D(G*(S_j), S_j)], γ/σ = area shares,
      S*(G_i) the segmented object overlapping G_i most (Dice 0 when none overlaps).
    * object Hausdorff: the same weighting of Hausdorff distances; an object that overlaps
      nothing is measured against the nearest object (smallest Hausdorff distance) of the other set.

    Both empty -> f1 = dice = 1.0, hausdorff = 0.0; one empty -> f1 = dice = 0.0, hausdorff = inf.
    """
    gt, pred = check_label_pair(gt, pred)
    if gt.ndim != 2:
        raise ValueError(f"GlaS object metrics need 2-D label maps, got shape {gt.shape}")
    t = overlap_table(gt, pred)
    if t.n_gt == 0 and t.n_pred == 0:
        return {"f1": 1.0, "dice": 1.0, "hausdorff": 0.0}
    if t.n_gt == 0 or t.n_pred == 0:
        return {"f1": 0.0, "dice": 0.0, "hausdorff": float("inf")}

    dice_of_entry = 2.0 * t.inter / (t.gt_area[t.rows] + t.pred_area[t.cols])
    gt_weight = t.gt_area / t.gt_area.sum()
    pred_weight = t.pred_area / t.pred_area.sum()
    # most-overlapping partner of each object, by intersection (the GlaS definition)
    by_gt = np.lexsort((t.cols, -t.inter, t.rows))
    first = np.r_[True, t.rows[by_gt][1:] != t.rows[by_gt][:-1]] if by_gt.size else np.zeros(0, bool)
    gt_best = by_gt[first]
    pred_best = t.best_gt_per_pred()
    gt_dice = np.zeros(t.n_gt)
    gt_dice[t.rows[gt_best]] = dice_of_entry[gt_best]
    pred_dice = np.zeros(t.n_pred)
    pred_dice[t.cols[pred_best]] = dice_of_entry[pred_best]
    obj_dice = 0.5 * (gt_weight @ gt_dice + pred_weight @ pred_dice)

    gt_boxes = ndimage.find_objects(gt)
    pred_boxes = ndimage.find_objects(pred)

    def nearest(lab, box, own_map, other_ids, other_boxes, other_map) -> float:
        gaps = np.array([_box_gap(box, other_boxes[o - 1]) for o in other_ids])
        best = np.inf
        for k in np.argsort(gaps):
            if gaps[k] >= best:
                break
            o = int(other_ids[k])
            best = min(best, _pair_hausdorff(lab, box, o, other_boxes[o - 1], own_map, other_map))
        return best

    gt_haus = np.empty(t.n_gt)
    gt_partner = np.full(t.n_gt, -1)
    gt_partner[t.rows[gt_best]] = t.cols[gt_best]
    for i, g in enumerate(t.gt_ids):
        g = int(g)
        if gt_partner[i] >= 0:
            p = int(t.pred_ids[gt_partner[i]])
            gt_haus[i] = _pair_hausdorff(g, gt_boxes[g - 1], p, pred_boxes[p - 1], gt, pred)
        else:
            gt_haus[i] = nearest(g, gt_boxes[g - 1], gt, t.pred_ids, pred_boxes, pred)
    pred_haus = np.empty(t.n_pred)
    pred_partner = np.full(t.n_pred, -1)
    pred_partner[t.cols[pred_best]] = t.rows[pred_best]
    for j, p in enumerate(t.pred_ids):
        p = int(p)
        if pred_partner[j] >= 0:
            g = int(t.gt_ids[pred_partner[j]])
            pred_haus[j] = _pair_hausdorff(p, pred_boxes[p - 1], g, gt_boxes[g - 1], pred, gt)
        else:
            pred_haus[j] = nearest(p, pred_boxes[p - 1], pred, t.gt_ids, gt_boxes, gt)
    obj_haus = 0.5 * (gt_weight @ gt_haus + pred_weight @ pred_haus)
    return {"f1": _object_f1(t), "dice": float(obj_dice), "hausdorff": float(obj_haus)}
