"""Hand-computed cases, edge conventions and a cross-check against per-object reference code."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cellzoo.data.io import read_labels
from cellzoo.metrics import (aji, aji_no_reuse, aji_plus, detection_scores, dice, dsb_ap, dsb_map,
                             overlap_table, panoptic_quality, perturb_labels)
from cellzoo.metrics import overlap as overlap_module
from metrics_reference import ref_aji, ref_aji_no_reuse, ref_aji_plus, ref_dice, ref_pq

# Case A: g1 (8 px) ⊃ p1 (6 px, IoU 3/4); p2 (6 px) ⊃ g2 (4 px, IoU 2/3); g3 missed; p4 spurious.
GT_A = np.array([
    [1, 1, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 2, 2, 0],
    [0, 0, 0, 0, 0, 2, 2, 0],
    [3, 3, 0, 0, 0, 0, 0, 0],
    [3, 3, 0, 0, 0, 0, 0, 0]])
PRED_A = np.array([
    [1, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 2, 2, 2],
    [0, 0, 0, 0, 0, 2, 2, 2],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 4, 4]])

# Case C (one row): g1 = cols 0-2, g2 = cols 3-4; p1 = col 0, p2 = cols 1-4.
# IoU(g1,p1)=1/3, IoU(g1,p2)=2/5, IoU(g2,p2)=1/2: the three AJI variants all differ.
GT_C = np.array([[1, 1, 1, 2, 2, 0]])
PRED_C = np.array([[1, 2, 2, 2, 2, 0]])


def test_overlap_table_hand_case():
    t = overlap_table(GT_A, PRED_A)
    assert t.gt_ids.tolist() == [1, 2, 3] and t.pred_ids.tolist() == [1, 2, 4]
    assert t.gt_area.tolist() == [8, 4, 4] and t.pred_area.tolist() == [6, 6, 2]
    pairs = {(int(t.gt_ids[r]), int(t.pred_ids[c])): int(i) for r, c, i in zip(t.rows, t.cols, t.inter)}
    assert pairs == {(1, 1): 6, (2, 2): 4}
    np.testing.assert_allclose(sorted(t.iou), [2 / 3, 3 / 4])


def test_case_a_hand_values():
    assert aji(GT_A, PRED_A) == pytest.approx(10 / 20)
    assert aji_plus(GT_A, PRED_A) == pytest.approx(10 / 20)
    assert aji_no_reuse(GT_A, PRED_A) == pytest.approx(10 / 20)
    assert dice(GT_A, PRED_A) == pytest.approx(20 / 30)
    pq = panoptic_quality(GT_A, PRED_A)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (2, 1, 1)
    assert pq["dq"] == pytest.approx(2 / 3)
    assert pq["sq"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert pq["pq"] == pytest.approx(2 / 3 * 17 / 24)
    det = detection_scores(GT_A, PRED_A, thresholds=(0.5, 0.7, 0.8))
    assert det[0.5]["precision"] == pytest.approx(2 / 3) and det[0.5]["recall"] == pytest.approx(2 / 3)
    assert det[0.5]["f1"] == pytest.approx(2 / 3) and det[0.5]["dsb_ap"] == pytest.approx(2 / 4)
    assert det[0.7]["tp"] == 1 and det[0.7]["f1"] == pytest.approx(1 / 3) and det[0.7]["dsb_ap"] == pytest.approx(1 / 5)
    assert det[0.8]["tp"] == 0 and det[0.8]["dsb_ap"] == 0.0
    assert dsb_ap(GT_A, PRED_A, 0.5) == pytest.approx(0.5)
    # DSB score over 0.5..0.95: tp = 2 up to 0.65 (IoU 2/3 > 0.65), tp = 1 at 0.7, 0 from 0.75 (not > 0.75)
    assert dsb_map(GT_A, PRED_A) == pytest.approx((4 * 2 / 4 + 1 / 5) / 10)


def test_aji_variants_differ_as_defined():
    assert aji(GT_C, PRED_C) == pytest.approx(4 / 10)      # g1->p2, g2->p2 (reused), p1 unpaired
    assert aji_plus(GT_C, PRED_C) == pytest.approx(3 / 7)  # unique optimum g1-p1, g2-p2
    assert aji_no_reuse(GT_C, PRED_C) == pytest.approx(2 / 8)  # g1 takes p2 first, g2 left alone


def test_merged_prediction_reused_by_aji_only():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [3, 3, 0, 0]])
    pred = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [2, 2, 0, 0]])
    assert aji(gt, pred) == pytest.approx(10 / 18)
    assert aji_plus(gt, pred) == pytest.approx(6 / 14)
    assert aji_no_reuse(gt, pred) == pytest.approx(6 / 14)
    # IoU exactly 0.5 is not a PQ pair (pairs need IoU > 0.5)
    assert panoptic_quality(gt, pred)["tp"] == 1


def test_low_threshold_matching_maximises_pair_count():
    # p2 overlaps g1 (IoU 0.4) and g2 (IoU 0.33); g1 also overlaps p1 (IoU 0.33).
    # Greedy by IoU would give one pair at 0.3; the maximal pairing gives two.
    assert detection_scores(GT_C, PRED_C, thresholds=(0.3,))[0.3]["tp"] == 2
    assert detection_scores(GT_C, PRED_C, thresholds=(0.35,))[0.35]["tp"] == 1  # g1-p2 0.4, g2-p2 0.5 share p2
    assert detection_scores(GT_C, PRED_C, thresholds=(0.45,))[0.45]["tp"] == 1


@pytest.mark.parametrize("labels", [GT_A, PRED_A, GT_C])
def test_perfect_prediction_scores_one(labels):
    assert aji(labels, labels) == 1.0
    assert aji_plus(labels, labels) == 1.0
    assert aji_no_reuse(labels, labels) == 1.0
    assert dice(labels, labels) == 1.0
    pq = panoptic_quality(labels, labels)
    assert pq["dq"] == pq["sq"] == pq["pq"] == 1.0
    assert detection_scores(labels, labels, thresholds=(0.5, 0.9))[0.9]["f1"] == 1.0
    # renumbering the prediction changes nothing
    permuted = np.where(labels > 0, labels * 7 + 1000, 0)
    assert aji(labels, permuted) == 1.0 and panoptic_quality(labels, permuted)["pq"] == 1.0


def test_empty_conventions():
    empty = np.zeros_like(GT_A)
    for both in (aji(empty, empty), aji_plus(empty, empty), aji_no_reuse(empty, empty), dice(empty, empty),
                 panoptic_quality(empty, empty)["pq"], detection_scores(empty, empty)[0.5]["f1"],
                 dsb_ap(empty, empty)):
        assert both == 1.0
    for gt, pred in ((GT_A, empty), (empty, PRED_A)):
        assert aji(gt, pred) == 0.0 and aji_plus(gt, pred) == 0.0 and aji_no_reuse(gt, pred) == 0.0
        assert dice(gt, pred) == 0.0
        pq = panoptic_quality(gt, pred)
        assert pq["dq"] == pq["sq"] == pq["pq"] == 0.0
        det = detection_scores(gt, pred)[0.5]
        assert det["precision"] == det["recall"] == det["f1"] == det["dsb_ap"] == 0.0


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="differ in shape"):
        aji(GT_A, PRED_A[:3])
    with pytest.raises(ValueError, match="boolean"):
        aji(GT_A > 0, PRED_A)
    with pytest.raises(ValueError, match="integer ids"):
        aji(GT_A + 0.5, PRED_A)
    with pytest.raises(ValueError, match="negative"):
        aji(GT_A, -PRED_A)


def test_sparse_and_dense_tables_agree(monkeypatch):
    gt = np.where(GT_A > 0, GT_A + 10_000_000, 0)  # huge, non-contiguous ids take the np.unique path
    dense = overlap_table(GT_A, PRED_A)
    monkeypatch.setattr(overlap_module, "_DENSE_TABLE_LIMIT", 0)
    sparse = overlap_table(gt, PRED_A)
    assert sparse.gt_ids.tolist() == [10_000_001, 10_000_002, 10_000_003]
    np.testing.assert_array_equal(np.sort(sparse.inter), np.sort(dense.inter))
    assert aji(sparse) == aji(dense) and panoptic_quality(sparse)["pq"] == panoptic_quality(dense)["pq"]


@pytest.fixture(scope="module")
def monuseg_crops(shared_data: Path):
    """Three real MoNuSeg test crops (400x400) and seeded perturbed copies."""
    files = sorted((shared_data / "monuseg2018" / "labels" / "test").glob("*.png"))[:3]
    out = []
    for seed, f in enumerate(files):
        gt = read_labels(f)[300:700, 300:700]
        out.append((gt, perturb_labels(gt, seed)))
    return out


def test_matches_per_object_reference_on_real_data(monuseg_crops):
    for gt, pred in monuseg_crops:
        assert len(np.unique(gt)) > 50 and not np.array_equal(gt > 0, pred > 0)
        t = overlap_table(gt, pred)
        assert aji(t) == pytest.approx(ref_aji(gt, pred), abs=1e-12)
        assert aji_plus(t) == pytest.approx(ref_aji_plus(gt, pred), abs=1e-12)
        assert aji_no_reuse(t) == pytest.approx(ref_aji_no_reuse(gt, pred), abs=1e-12)
        assert dice(t) == pytest.approx(ref_dice(gt, pred), abs=1e-12)
        dq, sq, pq, tp, fp, fn = ref_pq(gt, pred)
        ours = panoptic_quality(t)
        assert (ours["tp"], ours["fp"], ours["fn"]) == (tp, fp, fn)
        assert ours["dq"] == pytest.approx(dq, abs=1e-12) and ours["sq"] == pytest.approx(sq, abs=1e-12)
        assert ours["pq"] == pytest.approx(pq, abs=1e-12)
        assert 0.5 < aji(t) < 1.0 and not math.isclose(aji(t), aji_plus(t))
