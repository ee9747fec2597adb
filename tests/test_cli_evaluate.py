"""`cellzoo evaluate` on real MoNuSeg test labels against a perturbed copy, checked against
the per-object reference implementation in tests/metrics/metrics_reference.py."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from cellzoo.cli import main
from cellzoo.data.io import read_labels, write_labels
from cellzoo.metrics import perturb_labels

sys.path.insert(0, str(Path(__file__).parent / "metrics"))
from metrics_reference import ref_aji, ref_aji_plus, ref_dice, ref_pq  # noqa: E402

N_IMAGES = 3  # of the 14 MoNuSeg test images; the benchmark runs all 14


@pytest.fixture(scope="module")
def perturbed_folder(tmp_path_factory, shared_data: Path):
    gt_dir = tmp_path_factory.mktemp("gt")
    pred_dir = tmp_path_factory.mktemp("pred")
    files = sorted((shared_data / "monuseg2018" / "labels" / "test").glob("*.png"))[:N_IMAGES]
    for seed, f in enumerate(files):
        gt = read_labels(f)
        write_labels(gt_dir / f.name, gt)
        write_labels(pred_dir / f"{f.stem}_instances.tif", perturb_labels(gt, seed))
    return gt_dir, pred_dir


def _printed(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and line.startswith("  "):
            values[parts[0]] = float("nan") if parts[1] == "n/a" else float(parts[1])
    return values


def test_cli_values_equal_reference(perturbed_folder, tmp_path: Path, capsys):
    gt_dir, pred_dir = perturbed_folder
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(out), "--quiet"]) == 0
    printed = _printed(capsys.readouterr().out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_IMAGES
    assert list(rows[0]) == ["image", "aji", "aji_plus", "dice", "dq", "sq", "pq", "f1_50", "dsb_ap50",
                             "ap", "ap50", "ap75", "tp_50", "fp_50", "fn_50", "iou_sum_50"]
    expected = {k: [] for k in ("aji", "aji_plus", "dice", "dq", "sq", "pq")}
    for row in rows:
        gt = read_labels(gt_dir / f"{row['image']}.png")
        pred = read_labels(pred_dir / f"{row['image']}_instances.tif")
        dq, sq, pq, *_ = ref_pq(gt, pred)
        ref = {"aji": ref_aji(gt, pred), "aji_plus": ref_aji_plus(gt, pred), "dice": ref_dice(gt, pred),
               "dq": dq, "sq": sq, "pq": pq}
        for key, value in ref.items():
            assert float(row[key]) == pytest.approx(value, abs=1e-9), (row["image"], key)
            expected[key].append(value)
        assert float(row["f1_50"]) == pytest.approx(dq, abs=1e-9)  # F1 at IoU 0.5 is DQ
    for key, values in expected.items():
        assert printed[key] == pytest.approx(np.mean(values), abs=1e-6), key
    assert 0.5 < printed["aji"] < 0.95 and 0.3 < printed["ap"] < 0.9


def test_cli_reports_missing_predictions(perturbed_folder, tmp_path: Path, capsys):
    gt_dir, _ = perturbed_folder
    empty = tmp_path / "empty_pred"
    empty.mkdir()
    write_labels(empty / "other_instances.tif", np.zeros((4, 4), np.int32))
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "have no prediction" in err and "Traceback" not in err
