"""evaluate_iter / evaluate / EvaluationResult: rows, summary, events, cancel, CSV, file pairing."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from cellzoo.data.io import read_labels, write_class_map, write_labels
from cellzoo.metrics import COLUMNS, EvalPair, evaluate, evaluate_iter, image_metrics, pair_files
from cellzoo.types import CancelToken, Cancelled, Instances, Progress, run_to_end
from test_instance_metrics import GT_A, PRED_A
from test_typed_glas_coco import GT_CLS_A, PRED_CLS_A


def test_image_metrics_row_has_the_csv_columns():
    row = image_metrics(GT_A, PRED_A, name="a")
    assert tuple(row) == COLUMNS
    assert row["image"] == "a"
    assert row["aji"] == pytest.approx(0.5) and row["dice"] == pytest.approx(2 / 3)
    assert row["f1_50"] == pytest.approx(2 / 3) and row["dsb_ap50"] == pytest.approx(0.5)
    typed = image_metrics(GT_A, PRED_A, GT_CLS_A, PRED_CLS_A, class_names=["background", "tumour", "immune cell"])
    assert typed["pq_tumour"] == pytest.approx(0.375) and typed["pq_immune_cell"] == 0.0
    with pytest.raises(ValueError, match="both class maps"):
        image_metrics(GT_A, PRED_A, GT_CLS_A, None)


def test_evaluate_iter_events_summary_and_dataset_level_values():
    pairs = [("a", GT_A, PRED_A, GT_CLS_A, PRED_CLS_A), ("b", GT_A, GT_A, GT_CLS_A, GT_CLS_A)]
    events = []
    result = run_to_end(evaluate_iter(pairs, class_names=["background", "x", "y"]), events.append)
    assert events == [Progress("evaluate", 1, 2, "a"), Progress("evaluate", 2, 2, "b")]
    assert [r["image"] for r in result.per_image] == ["a", "b"]
    s = result.summary
    assert s["n_images"] == 2
    assert s["aji"] == pytest.approx((0.5 + 1.0) / 2)  # per-image values averaged over images
    assert s["pq"] == pytest.approx((2 / 3 * 17 / 24 + 1.0) / 2)
    # dataset level: class x counts summed (1+2 TP, 1 FP, 1 FN, IoU 0.75+2) -> DQ 3/4, SQ 2.75/3
    assert s["pq_x"] == pytest.approx(0.75 * 2.75 / 3)
    assert s["pq_y"] == pytest.approx(1 / (1 + 1) * 1.0)  # TP 1 (image b), FP 1, FN 1
    assert s["mpq_plus"] == pytest.approx((s["pq_x"] + s["pq_y"]) / 2)
    assert s["f1_x"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert 0 < s["ap"] < 1 and "ap50" in s and "ap75" in s
    text = result.format_table()
    assert "mean over images" in text and "dataset level" in text and "mpq_plus" in text


def test_cancel_between_images():
    token = CancelToken()
    gen = evaluate_iter([(GT_A, PRED_A)] * 3, cancel=token)
    assert next(gen) == Progress("evaluate", 1, 3, "image_0")
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)


def test_evaluate_accepts_arrays_stacks_and_instances(tmp_path: Path):
    one = evaluate(GT_A, PRED_A)
    stack = evaluate(np.stack([GT_A, GT_A]), np.stack([PRED_A, GT_A]))
    assert one.per_image[0]["aji"] == stack.per_image[0]["aji"] == pytest.approx(0.5)
    assert stack.per_image[1]["pq"] == 1.0
    inst = evaluate([GT_A], [Instances(labels=PRED_A, scores={1: 0.9, 2: 0.8, 4: 0.1})])
    assert inst.per_image[0]["aji"] == pytest.approx(0.5)
    typed = Instances(labels=PRED_A, class_of={1: 1, 2: 1, 4: 2}, class_names=["background", "x", "y"])
    assert "pq_1" not in evaluate([GT_A], [typed]).per_image[0]  # GT without classes: class metrics skipped
    assert evaluate([GT_A], [typed], [GT_CLS_A]).per_image[0]["pq_1"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="one prediction per GT"):
        evaluate([GT_A, GT_A], [PRED_A])


def test_csv_is_written_with_nan_as_empty(tmp_path: Path):
    empty = np.zeros_like(GT_A)
    result = evaluate([GT_A, empty], [PRED_A, empty])
    path = result.to_csv(tmp_path / "out" / "metrics.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS
    assert float(rows[0]["aji"]) == pytest.approx(0.5)
    assert rows[1]["aji"] == "1.0" and rows[1]["ap"] == ""  # empty image: AJI 1, COCO AP undefined
    assert not list((tmp_path / "out").glob(".*part"))


def test_folder_pairing_by_stem(tmp_path: Path, shared_data: Path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for name in ("img1", "img2"):
        write_labels(gt_dir / f"{name}.png", GT_A)
        write_labels(pred_dir / f"{name}_instances.tif", PRED_A)
        write_class_map(gt_dir / f"{name}_classes.png", GT_CLS_A)
        write_class_map(pred_dir / f"{name}_classes.tif", PRED_CLS_A)
    write_labels(pred_dir / "extra_instances.tif", PRED_A)
    pairs, notes = pair_files(gt_dir, pred_dir, gt_dir, pred_dir)
    assert [p.name for p in pairs] == ["img1", "img2"]
    assert pairs[0].pred.name == "img1_instances.tif" and pairs[0].pred_classes.name == "img1_classes.tif"
    assert pairs[0].gt.name == "img1.png" and pairs[0].gt_classes.name == "img1_classes.png"
    assert notes and "extra" in notes[0]
    result = evaluate(gt_dir, pred_dir, gt_dir, pred_dir)
    assert result.per_image[0]["pq_1"] == pytest.approx(0.375)
    (pred_dir / "img2_instances.tif").unlink()
    with pytest.raises(ValueError, match="no prediction.*img2"):
        pair_files(gt_dir, pred_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pair_files(tmp_path / "nope", pred_dir)
    with pytest.raises(ValueError, match="both"):
        pair_files(gt_dir, pred_dir, gt_dir, None)


def test_real_folder_against_itself_is_perfect(shared_data: Path):
    folder = shared_data / "monuseg2018" / "labels" / "test"
    files = sorted(folder.glob("*.png"))[:2]
    result = run_to_end(evaluate_iter([EvalPair(f.stem, f, read_labels(f)) for f in files]))
    assert [r["image"] for r in result.per_image] == [f.stem for f in files]
    for key in ("aji", "aji_plus", "dice", "dq", "sq", "pq", "f1_50", "dsb_ap50", "ap", "ap50", "ap75"):
        assert result.summary[key] == pytest.approx(1.0), key
    assert not any(math.isnan(v) for v in result.per_image[0].values() if isinstance(v, float))


def test_pooled_figures_sum_the_counts_over_images_before_dividing():
    """Pooled DSB AP@0.5 = ΣTP / Σ(TP + FP + FN) (StarDist's protocol) differs from the per-image mean when
    images hold different numbers of objects; both are in the summary and the printed table."""
    from cellzoo.metrics.evaluate import evaluate

    def disks(n, missing):
        gt = np.zeros((64, 64 * n), np.int32)
        for k in range(n):
            gt[20:40, 64 * k + 20:64 * k + 40] = k + 1
        pred = gt.copy()
        for k in range(missing):
            pred[pred == k + 1] = 0
        return gt, pred

    big_gt, big_pred = disks(9, 0)     # 9 of 9 found: AP 1.0
    small_gt, small_pred = disks(1, 1)  # 0 of 1 found: AP 0.0
    result = evaluate([big_gt, small_gt], [big_pred, small_pred])
    s = result.summary
    assert s["dsb_ap50"] == pytest.approx(0.5)          # mean of 1.0 and 0.0
    assert s["pooled_dsb_ap50"] == pytest.approx(9 / 10)  # 9 TP, 1 FN
    assert s["pooled_f1_50"] == pytest.approx(2 * 9 / (2 * 9 + 1))
    assert s["pooled_sq"] == pytest.approx(1.0) and s["pooled_pq"] == pytest.approx(9 / 9.5)
    assert [r["tp_50"] for r in result.per_image] == [9, 0] and [r["fn_50"] for r in result.per_image] == [0, 1]
    text = result.format_table()
    assert "pooled over images" in text and "pooled_dsb_ap50" in text
