"""Checks that stop an evaluation from giving wrong numbers without a word.

Metrics happily compare anything of the same shape: a class map as "ground truth" gives Dice 1.000
with AJI near 0, a prediction of another image gives numbers near 0 that look like a bad model. These
checks look at the inputs before the numbers are shown and say, in words, what looks wrong.
"""
from __future__ import annotations

import numpy as np

from cellzoo.data.label_kind import LabelMapStats, raster_kind

#: two maps of different images still overlap by chance (MoNuSeg/CoNSeP test maps paired with the next
#: image: foreground Dice 0.14-0.26, 0.91-1.12 times the chance level 2pq/(p+q) of their object
#: fractions p, q); a prediction of the same image overlaps far more (a model at Dice 0.8: ~4 times)
MAX_CHANCE_RATIO = 1.5


def map_kind(array: np.ndarray) -> LabelMapStats:
    """:func:`raster_kind` of a label map; a 3-D stack is judged by its first non-empty plane."""
    data = np.asarray(array)
    if data.ndim > 2 and data.dtype.kind in "iub":
        planes = data.reshape((-1, *data.shape[-2:]))
        plane = next((p for p in planes if p.any()), planes[0])
        return raster_kind(plane)
    return raster_kind(data)


def foreground_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice of the object pixels (any id) of two maps of the same shape; 1.0 when both are empty."""
    gt_fg, pred_fg = np.asarray(gt) != 0, np.asarray(pred) != 0
    total = int(np.count_nonzero(gt_fg)) + int(np.count_nonzero(pred_fg))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(gt_fg & pred_fg)) / total


def chance_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Foreground Dice expected from two maps that share nothing but their object fractions."""
    p, q = float(np.mean(np.asarray(gt) != 0)), float(np.mean(np.asarray(pred) != 0))
    return 0.0 if p + q == 0 else 2.0 * p * q / (p + q)


def evaluation_warnings(gt: np.ndarray, pred: np.ndarray, name: str = "") -> list[str]:
    """What looks wrong about comparing ``pred`` with ``gt`` (instance maps); empty when nothing does."""
    where = f"{name}: " if name else ""
    gt, pred = np.asarray(gt), np.asarray(pred)
    warnings: list[str] = []
    for what, array in (("ground truth", gt), ("prediction", pred)):
        stats = map_kind(array)
        if stats.kind == "classes":
            warnings.append(f"{where}the {what} looks like a class map ({stats.values} value(s) spread over "
                            f"{stats.regions} separate regions), not one id per nucleus; choose the "
                            f"instance map (the class map goes in the class field).")
        elif stats.kind == "image":
            warnings.append(f"{where}the {what} does not look like a label map ({stats.reason}).")
    if gt.shape != pred.shape:
        return warnings  # shapes are refused elsewhere with their own message
    gt_empty, pred_empty = not gt.any(), not pred.any()
    if gt_empty and not pred_empty:
        warnings.append(f"{where}the ground truth has no objects; every predicted nucleus counts as false.")
    elif pred_empty and not gt_empty:
        warnings.append(f"{where}the prediction has no objects; every nucleus counts as missed.")
    elif not gt_empty:
        dice, chance = foreground_dice(gt, pred), chance_dice(gt, pred)
        if dice < MAX_CHANCE_RATIO * chance:
            warnings.append(f"{where}prediction and ground truth overlap no more than by chance (foreground "
                            f"Dice {dice:.3f}, chance level {chance:.3f}); are they of the same image?")
    return warnings
