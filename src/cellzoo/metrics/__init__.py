"""Instance-segmentation metrics: one contingency table per image, every pairing derived from it.

- :func:`overlap_table` -> :class:`Overlaps` (the table; pass it instead of ``(gt, pred)``
  to any metric to share one pass over the pixels).
- Per image: :func:`aji` (MoNuSeg), :func:`aji_no_reuse` (FullNet), :func:`aji_plus`,
  :func:`dice`, :func:`panoptic_quality` (DQ/SQ/PQ), :func:`detection_scores` (P/R/F1/DSB AP at
  IoU thresholds), :func:`dsb_ap`, :func:`dsb_map`, :func:`glas_object_metrics`.
- Typed nuclei: :func:`class_pq_counts`, :func:`multi_pq_plus` (CoNIC mPQ+), :func:`class_f1_counts`.
- COCO: :func:`coco_ap` (faster-coco-eval, maxDets up to 10000).
- Many images: :func:`image_metrics`, :func:`evaluate_iter`, :func:`evaluate` -> :class:`EvaluationResult`.
"""
from cellzoo.metrics.overlap import Overlaps, overlap_table
from cellzoo.metrics.instance import (aji, aji_no_reuse, aji_plus, detection_scores, dice, dsb_ap, dsb_map,
                                      panoptic_quality)
from cellzoo.metrics.glas import glas_object_metrics
from cellzoo.metrics.classes import (class_f1_counts, class_pq_counts, f1_from_counts, instance_classes,
                                     multi_pq_plus, pq_from_counts)
from cellzoo.metrics.coco import DEFAULT_MAX_DETS, coco_ap, label_rles
from cellzoo.metrics.synthetic import perturb_labels
from cellzoo.metrics.evaluate import (COLUMNS, EvalPair, EvaluationResult, evaluate, evaluate_iter, image_metrics,
                                      pair_files)

__all__ = [
    "Overlaps", "overlap_table", "aji", "aji_no_reuse", "aji_plus", "dice", "panoptic_quality",
    "detection_scores", "dsb_ap", "dsb_map", "glas_object_metrics", "class_pq_counts", "class_f1_counts",
    "multi_pq_plus", "pq_from_counts", "f1_from_counts", "instance_classes", "coco_ap", "label_rles",
    "DEFAULT_MAX_DETS", "perturb_labels", "COLUMNS", "EvalPair", "EvaluationResult", "evaluate",
    "evaluate_iter", "image_metrics", "pair_files",
]
