"""COCO mask AP / AP50 / AP75 for instance maps, computed by faster-coco-eval (pycocotools' algorithm in C++).

Dense nuclei images hold hundreds to thousands of objects, so ``maxDets`` defaults to
``(1, 100, 10000)`` instead of COCO's ``(1, 10, 100)``, which would silently drop all but
100 predictions per image. AP is class-agnostic (one category, "nucleus").

Instance maps carry no confidence; unless scores are given every prediction scores 1.0,
and COCO then ranks tied detections in their id order.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

DEFAULT_MAX_DETS: tuple[int, ...] = (1, 100, 10000)
CATEGORY = {"id": 1, "name": "nucleus"}


def label_rles(labels: np.ndarray) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """COCO compressed RLEs of every instance of a 2-D label map, in one pass.

    Returns ``(ids, rles, areas)``. pycocotools only encodes stacks of binary masks (H x W x N,
    which is gigabytes for thousands of nuclei), so the column-major runs of the whole
    label map are found with NumPy here and handed to pycocotools as uncompressed RLE.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"COCO AP needs 2-D instance maps, got shape {labels.shape}")
    h, w = labels.shape
    flat = labels.ravel(order="F")  # COCO RLE runs down the columns
    n = flat.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.r_[0, change]
    lengths = np.diff(np.r_[starts, n])
    run_label = flat[starts]
    keep = run_label != 0
    starts, lengths, run_label = starts[keep], lengths[keep], run_label[keep]
    if run_label.size == 0:
        return np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.int64)
    order = np.argsort(run_label, kind="stable")  # stable: runs stay in pixel order within a label
    starts, lengths, run_label = starts[order], lengths[order], run_label[order]
    first = np.r_[True, run_label[1:] != run_label[:-1]]
    previous_end = np.r_[0, (starts + lengths)[:-1]]
    previous_end[first] = 0
    counts = np.empty(2 * starts.size, dtype=np.int64)
    counts[0::2] = starts - previous_end  # background pixels before the run
    counts[1::2] = lengths
    bounds = np.flatnonzero(first)
    ends = np.r_[bounds[1:], starts.size]
    uncompressed = []
    for b, e in zip(bounds, ends):
        c = counts[2 * b:2 * e].tolist()
        c.append(n - int(starts[e - 1] + lengths[e - 1]))  # trailing background
        uncompressed.append({"size": [h, w], "counts": c})
    rles = mask_utils.frPyObjects(uncompressed, h, w)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    # areas from the runs: pycocotools' mask.area overflows (uint8 buffer) above 255 objects with NumPy 2
    areas = np.add.reduceat(lengths, bounds)
    return run_label[first].astype(np.int64), rles, areas.astype(np.int64)


@dataclass
class CocoImage:
    """COCO annotations of one image: GT objects and scored predictions."""

    height: int
    width: int
    gt: list[dict] = field(default_factory=list)
    dt: list[dict] = field(default_factory=list)


def coco_image(gt: np.ndarray, pred: np.ndarray, scores: Mapping[int, float] | None = None) -> CocoImage:
    """Encode one GT/prediction pair; ``scores`` maps predicted ids to confidences (default 1.0)."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in shape: {gt.shape} vs {pred.shape}")
    image = CocoImage(int(gt.shape[0]), int(gt.shape[1]))
    for target, labels, is_gt in ((image.gt, gt, True), (image.dt, pred, False)):
        ids, rles, areas = label_rles(labels)
        if not rles:
            continue
        boxes = mask_utils.toBbox(rles)
        for lab, rle, area, box in zip(ids.tolist(), rles, areas.tolist(), boxes.tolist()):
            ann = {"category_id": 1, "segmentation": rle, "area": float(area), "bbox": box}
            if is_gt:
                ann["iscrowd"] = 0
            else:
                ann["score"] = float(scores.get(lab, 1.0)) if scores else 1.0
            target.append(ann)
    return image


def coco_datasets(images: Sequence[CocoImage]) -> tuple[dict, list[dict]]:
    """COCO GT dataset dict and detection list for ``images`` (image ids 1..N)."""
    gt = {"images": [], "annotations": [], "categories": [dict(CATEGORY)]}
    dets: list[dict] = []
    next_id = 1
    for image_id, image in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "height": image.height, "width": image.width})
        for ann in image.gt:
            gt["annotations"].append({**ann, "id": next_id, "image_id": image_id})
            next_id += 1
        for ann in image.dt:
            dets.append({**ann, "image_id": image_id})
    return gt, dets


def _stats_from_precision(precision: np.ndarray, iou_thresholds: np.ndarray) -> dict[str, float]:
    """AP, AP50, AP75 from COCOeval's precision array [T, R, K, A, M] (area 'all', largest maxDets),
    exactly as ``COCOeval.summarize`` averages it (entries of -1 are left out)."""
    def mean_valid(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(np.mean(p)) if p.size else float("nan")

    p = precision[:, :, :, 0, -1]
    out = {"ap": mean_valid(p)}
    for name, thr in (("ap50", 0.5), ("ap75", 0.75)):
        hit = np.flatnonzero(np.isclose(iou_thresholds, thr))
        out[name] = mean_valid(p[hit]) if hit.size else float("nan")
    return out


def coco_ap_images(images: Sequence[CocoImage], max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> dict[str, float]:
    """COCO segm AP / AP50 / AP75 over ``images`` (one evaluation over all of them).

    NaN when no image holds a GT object (COCO reports -1 there); 0.0 when GT objects exist
    but nothing was predicted.
    """
    max_dets = sorted(int(m) for m in max_dets)
    if not max_dets or max_dets[-1] < 1:
        raise ValueError(f"max_dets must hold positive detection limits, got {max_dets}")
    gt_dict, dets = coco_datasets(images)
    if not gt_dict["annotations"]:
        return {"ap": float("nan"), "ap50": float("nan"), "ap75": float("nan")}
    if not dets:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:  # same algorithm in plain pycocotools, several times slower
            from pycocotools.coco import COCO as COCO_plain
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO_plain()
            coco_gt.dataset = gt_dict
            coco_gt.createIndex()
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), "segm")
        else:
            coco_gt = COCO(gt_dict)
            evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), iouType="segm", rle_iou_max_workers=1)
        evaluator.params.maxDets = max_dets
        evaluator.evaluate()
        evaluator.accumulate()
    return _stats_from_precision(np.asarray(evaluator.eval["precision"]), np.asarray(evaluator.params.iouThrs))


def coco_ap(gt, pred, scores=None, max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> dict[str, float]:
    """COCO mask ``{"ap", "ap50", "ap75"}`` of one instance map pair or of lists of them.

    ``gt``/``pred`` are 2-D instance maps or equally long lists of them; ``scores`` is an
    optional id->confidence mapping (or a list of them). See the module doc for conventions.
    """
    if isinstance(gt, np.ndarray) and gt.ndim == 2:
        gt, pred, scores = [gt], [pred], [scores]
    gt, pred = list(gt), list(pred)
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth maps but {len(pred)} predictions; pass one per image")
    scores = list(scores) if scores is not None else [None] * len(gt)
    return coco_ap_images([coco_image(g, p, s) for g, p, s in zip(gt, pred, scores)], max_dets)
