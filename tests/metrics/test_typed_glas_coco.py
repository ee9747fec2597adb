"""Per-class PQ / mPQ+ / per-class F1, GlaS object metrics and COCO AP (cross-checked with pycocotools)."""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cellzoo.data.io import read_labels
from cellzoo.metrics import (class_f1_counts, class_pq_counts, coco_ap, f1_from_counts, glas_object_metrics,
                             instance_classes, label_rles, multi_pq_plus, perturb_labels, pq_from_counts)
from cellzoo.metrics.coco import coco_datasets, coco_image
from test_instance_metrics import GT_A, PRED_A

# classes of case A: g1, g3 class 1, g2 class 2; p1, p2 class 1 (p2 wrong), p4 class 2
GT_CLS_A = np.select([GT_A == 1, GT_A == 2, GT_A == 3], [1, 2, 1], 0)
PRED_CLS_A = np.select([PRED_A == 1, PRED_A == 2, PRED_A == 4], [1, 1, 2], 0)


def test_class_pq_hand_case():
    counts = class_pq_counts(GT_A, PRED_A, GT_CLS_A, PRED_CLS_A, n_classes=2)
    # class 1: g1-p1 paired (IoU 3/4); p2 (class 1) overlaps only class-2 GT -> FP; g3 -> FN
    np.testing.assert_allclose(counts[0], [1, 1, 1, 0.75])
    # class 2: g2 (its class-1 prediction does not count) -> FN; p4 -> FP
    np.testing.assert_allclose(counts[1], [0, 1, 1, 0])
    np.testing.assert_allclose(pq_from_counts(counts), [0.5 * 0.75, 0.0])


def test_mpq_plus_sums_counts_over_images_before_pq():
    image1 = class_pq_counts(GT_A, PRED_A, GT_CLS_A, PRED_CLS_A, 2)
    only_class2 = np.where(GT_A == 2, 2, 0)
    image2 = class_pq_counts(GT_A, GT_A, only_class2, only_class2, 2)  # one perfect class-2 nucleus
    np.testing.assert_allclose(image2, [[0, 0, 0, 0], [1, 0, 0, 1]])
    mpq, per_class = multi_pq_plus([image1, image2])
    # class 2 summed: TP 1, FP 1, FN 1, IoU 1 -> DQ 1/2, SQ 1
    np.testing.assert_allclose(per_class, [0.375, 0.5])
    assert mpq == pytest.approx(0.4375)
    # averaging per-image PQ instead would give a different number (image 2 has no class 1 -> NaN)
    assert np.nanmean([np.nanmean(pq_from_counts(image1)), np.nanmean(pq_from_counts(image2))]) != pytest.approx(mpq)


def test_absent_class_is_nan_and_left_out():
    counts = class_pq_counts(GT_A, GT_A, GT_CLS_A, GT_CLS_A, n_classes=3)
    pq = pq_from_counts(counts)
    assert pq[0] == pq[1] == 1.0 and math.isnan(pq[2])
    assert multi_pq_plus([counts])[0] == 1.0


def test_majority_class_and_per_class_f1():
    classes = GT_CLS_A.copy()
    classes[0, 0] = 2  # one class-2 pixel in g1 does not change its majority class
    ids, cls = instance_classes(GT_A, classes)
    assert ids.tolist() == [1, 2, 3] and cls.tolist() == [1, 2, 1]
    counts = class_f1_counts(GT_A, PRED_A, GT_CLS_A, PRED_CLS_A, n_classes=2)
    # pairs g1-p1 (1/1 correct), g2-p2 (2 vs 1 wrong)
    np.testing.assert_allclose(counts, [[1, 1, 1], [0, 1, 1]])
    np.testing.assert_allclose(f1_from_counts(counts), [0.5, 0.0])


def test_class_map_shape_is_checked():
    with pytest.raises(ValueError, match="class map has shape"):
        class_pq_counts(GT_A, PRED_A, GT_CLS_A[:2], PRED_CLS_A, 2)


def test_glas_hand_case():
    m = glas_object_metrics(GT_A, PRED_A)
    assert m["f1"] == pytest.approx(2 / 3)  # p1, p2 cover >= half their GT; p4 FP; g3 FN
    gt_part = (8 * 12 / 14 + 4 * 8 / 10 + 4 * 0) / 16
    pred_part = (6 * 12 / 14 + 6 * 8 / 10 + 2 * 0) / 14
    assert m["dice"] == pytest.approx(0.5 * (gt_part + pred_part))
    # paired Hausdorff distances are 1; g3's nearest prediction is p1 (sqrt 17), p4's nearest GT is g2 (sqrt 10)
    expected = 0.5 * ((8 * 1 + 4 * 1 + 4 * math.sqrt(17)) / 16 + (6 * 1 + 6 * 1 + 2 * math.sqrt(10)) / 14)
    assert m["hausdorff"] == pytest.approx(expected)
    perfect = glas_object_metrics(GT_A, GT_A)
    assert perfect == {"f1": 1.0, "dice": 1.0, "hausdorff": 0.0}
    empty = np.zeros_like(GT_A)
    assert glas_object_metrics(empty, empty) == {"f1": 1.0, "dice": 1.0, "hausdorff": 0.0}
    assert glas_object_metrics(GT_A, empty)["hausdorff"] == math.inf


def test_label_rles_decode_to_the_objects(shared_data: Path):
    labels = read_labels(sorted((shared_data / "dsb2018" / "test" / "masks").glob("*.tif"))[0])
    ids, rles, areas = label_rles(labels)
    assert ids.tolist() == [i for i in np.unique(labels) if i]
    decoded = mask_utils.decode(rles)  # H x W x N
    for k, lab in enumerate(ids):
        np.testing.assert_array_equal(decoded[:, :, k], labels == lab)
    assert areas.tolist() == [int((labels == i).sum()) for i in ids]


def test_coco_ap_hand_case_and_conventions():
    gt = np.zeros((20, 20), np.int32)
    gt[2:6, 2:6] = 1
    gt[10:15, 10:15] = 2
    pred = np.where(gt == 1, 1, 0)
    # recall 0.5 at precision 1 for every IoU threshold: 51 of COCO's 101 recall points
    ap = coco_ap(gt, pred)
    assert ap == pytest.approx({"ap": 51 / 101, "ap50": 51 / 101, "ap75": 51 / 101})
    assert coco_ap(gt, gt) == pytest.approx({"ap": 1.0, "ap50": 1.0, "ap75": 1.0})
    assert coco_ap(gt, np.zeros_like(gt)) == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    assert all(math.isnan(v) for v in coco_ap(np.zeros_like(gt), gt).values())


def test_coco_ap_keeps_more_than_100_detections():
    gt = np.zeros((64, 64), np.int32)
    for k in range(256):  # 256 objects of 2x2 px
        y, x = divmod(k, 16)
        gt[4 * y:4 * y + 2, 4 * x:4 * x + 2] = k + 1
    assert coco_ap(gt, gt)["ap"] == pytest.approx(1.0)
    assert coco_ap(gt, gt, max_dets=(1, 10, 100))["ap"] < 0.5  # COCO's default limit drops most


def test_coco_ap_equals_plain_pycocotools_on_dsb2018(shared_data: Path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    files = sorted((shared_data / "dsb2018" / "test" / "masks").glob("*.tif"))[:12]
    gts = [read_labels(f) for f in files]
    preds = [perturb_labels(g, seed) for seed, g in enumerate(gts)]
    rng = np.random.default_rng(0)
    scores = [{int(i): float(rng.random()) for i in np.unique(p) if i} for p in preds]
    ours = coco_ap(gts, preds, scores)

    gt_dict, dets = coco_datasets([coco_image(g, p, s) for g, p, s in zip(gts, preds, scores)])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        reference = COCOeval(coco_gt, coco_dt, "segm")
        reference.params.maxDets = [1, 100, 10000]
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert 0.2 < ours["ap"] < 0.95
    assert ours["ap"] == pytest.approx(reference.stats[0], abs=1e-9)
    assert ours["ap50"] == pytest.approx(reference.stats[1], abs=1e-9)
    assert ours["ap75"] == pytest.approx(reference.stats[2], abs=1e-9)


def test_coco_ap_without_faster_coco_eval_gives_the_same(monkeypatch, shared_data: Path):
    gt = read_labels(sorted((shared_data / "dsb2018" / "test" / "masks").glob("*.tif"))[1])
    pred = perturb_labels(gt, 5)
    fast = coco_ap(gt, pred)
    monkeypatch.setitem(__import__("sys").modules, "faster_coco_eval", None)  # import now fails
    plain = coco_ap(gt, pred)
    assert 0 < fast["ap"] < 1
    assert plain == pytest.approx(fast, abs=1e-9)
