"""Evaluate widget in a real napari window (Xvfb): layers and folders, threaded run, cancel, CSV, screenshot."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from cellzoo._napari.evaluate_widget import NONE, EvaluateWidget
from cellzoo.data.io import read_labels

REPO = Path(__file__).resolve().parents[2]
#: screenshots go to docs/screenshots only when asked (CELLZOO_SCREENSHOTS=docs/screenshots), so a
#: test run does not modify tracked files
SCREENSHOT_NAME = "evaluate.png"
CONSEP = ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]


def _screenshot_path(tmp_path: Path) -> Path:
    folder = os.environ.get("CELLZOO_SCREENSHOTS")
    return (REPO / folder if folder else tmp_path) / SCREENSHOT_NAME


def _dsb(shared_data, index=0):
    mask = sorted((shared_data / "dsb2018" / "test" / "masks").glob("*.tif"))[index]
    return read_labels(mask), mask


def _without_objects(labels, count):
    """Prediction = ground truth minus its first ``count`` objects: PQ is known in closed form."""
    ids = np.unique(labels)[1:]
    pred = labels.copy()
    pred[np.isin(pred, ids[:count])] = 0
    return pred, len(ids)


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w, name="Evaluate")
    return viewer, w


def test_threaded_layer_evaluation_matches_hand_computed_pq(widget, qtbot, monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    viewer, w = widget
    gt, _ = _dsb(shared_data)
    pred, n = _without_objects(gt, 10)
    viewer.add_labels(gt, name="ground truth")
    viewer.add_labels(pred, name="prediction")
    assert w.gt_layer.currentText() == "ground truth" and w.pred_layer.currentText() == "prediction"
    assert w.run_button.isEnabled()

    job = w.run()
    assert job.worker is not None  # a real thread
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert job.state == "done", w.status.text()
    # 10 of n objects missed, every other one exact: TP = n-10, FN = 10, FP = 0, SQ = 1
    tp = n - 10
    expected_pq = tp / (tp + 0.5 * 10)
    row = w.result.per_image[0]
    assert row["pq"] == pytest.approx(expected_pq) and row["sq"] == pytest.approx(1.0)
    # table: one image row + the bold mean and pooled rows; the chart shows the mean
    assert w.table.rowCount() == 3 and w.table.item(1, 0).text() == "mean over images"
    assert w.table.item(2, 0).text() == "pooled"
    headers = [w.table.horizontalHeaderItem(c).text() for c in range(w.table.columnCount())]
    assert not any(h.startswith("pooled_") for h in headers)  # pooled figures sit in their metric's column
    assert float(w.table.item(2, headers.index("dsb_ap50")).text()) == pytest.approx(tp / n, abs=1e-4)
    assert float(w.table.item(0, headers.index("pq")).text()) == pytest.approx(expected_pq, abs=1e-4)
    assert w.chart.values["pq"] == pytest.approx(expected_pq)
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()

    out = w.export_csv(tmp_path / "metrics")
    assert out.name == "metrics.csv"
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["pq"]) == pytest.approx(expected_pq)


def test_invalid_layers_are_marked_and_block_the_run(widget, shared_data):
    viewer, w = widget
    assert not w.run_button.isEnabled()  # no layers yet
    assert "ground truth" in w.gt_layer.toolTip()
    gt, _ = _dsb(shared_data)
    viewer.add_labels(gt, name="ground truth")
    viewer.add_labels(gt[:100, :100], name="crop")
    w.pred_layer.setCurrentText("crop")
    assert not w.run_button.isEnabled()
    assert "differs from ground truth" in w.pred_layer.toolTip() and "border" in w.pred_layer.styleSheet()
    assert w.run() is None
    viewer.layers["crop"].data = gt.copy()
    w.validate()
    assert w.run_button.isEnabled() and w.pred_layer.styleSheet() == ""


def test_folders_with_classes_give_per_class_pq(widget, monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    viewer, w = widget
    split = shared_data / "consep" / "test"
    names = [p.stem for p in sorted((split / "inst").glob("*.png"))[:3]]
    folders = {}
    for kind in ("gt", "pred", "gt_cls", "pred_cls"):
        folders[kind] = tmp_path / kind
        folders[kind].mkdir()
    for name in names:
        (folders["gt"] / f"{name}.png").symlink_to(split / "inst" / f"{name}.png")
        (folders["gt_cls"] / f"{name}.png").symlink_to(split / "class" / f"{name}.png")
        (folders["pred_cls"] / f"{name}_classes.png").symlink_to(split / "class" / f"{name}.png")
    # prediction: GT with the first object of every patch removed
    removed = {}
    for name in names:
        gt = read_labels(split / "inst" / f"{name}.png")
        pred, n = _without_objects(gt, 1)
        removed[name] = n
        from cellzoo.data.io import write_labels
        write_labels(folders["pred"] / f"{name}_instances.tif", pred)

    w.source.setCurrentText("Folders")
    w.gt_folder.edit.setText(str(folders["gt"]))
    w.pred_folder.edit.setText(str(folders["pred"]))
    w.gt_class_folder.edit.setText(str(folders["gt_cls"]))
    assert not w.run_button.isEnabled()  # one class folder alone is not enough
    assert "both class folders" in w.pred_class_folder.edit.toolTip()
    w.pred_class_folder.edit.setText(str(folders["pred_cls"]))
    w.class_names.setText("other, inflammatory, epithelial, spindle")
    assert w.run_button.isEnabled(), w.run_button.toolTip()

    job = w.run()
    assert job.state == "done", w.status.text()
    assert [r["image"] for r in w.result.per_image] == names
    for r in w.result.per_image:
        tp = removed[r["image"]] - 1
        assert r["pq"] == pytest.approx(tp / (tp + 0.5))
    assert 0.9 < w.result.summary["mpq_plus"] < 1.0
    assert "pq_epithelial" in w.result.summary and w.table.rowCount() == 5  # 3 images, mean, pooled


def test_missing_prediction_files_are_reported_before_run(widget, tmp_path, shared_data):
    _, w = widget
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    _, mask = _dsb(shared_data)
    (gt_dir / mask.name).symlink_to(mask)
    (pred_dir / "other.tif").symlink_to(mask)
    w.source.setCurrentText("Folders")
    w.gt_folder.edit.setText(str(gt_dir))
    w.pred_folder.edit.setText(str(pred_dir))
    assert not w.run_button.isEnabled()
    assert "have no prediction" in w.pred_folder.edit.toolTip()


def test_cancel_during_folder_run_leaves_no_result(widget, qtbot, monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    _, w = widget
    masks = shared_data / "dsb2018" / "test" / "masks"
    w.source.setCurrentText("Folders")
    w.gt_folder.edit.setText(str(masks))
    w.pred_folder.edit.setText(str(masks))
    assert w.run_button.isEnabled()
    seen = []
    job = w.run()
    original = w.job
    assert original is job and w.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: job._pbar is None or job._pbar.n >= 1 or not job.running, timeout=30_000)
    seen.append(job._pbar.n if job._pbar is not None else None)
    w.cancel()
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    assert job.state == "cancelled"
    assert w.result is None and w.table.rowCount() == 0 and not w.export_button.isEnabled()
    assert "Cancelled" in w.status.text()
    assert w.run_button.isEnabled()
    with pytest.raises(ValueError, match="run Evaluate first"):
        w.export_csv(tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_screenshot_shows_the_widget_with_results(widget, qtbot, monkeypatch, shared_data, tmp_path):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    viewer, w = widget
    from cellzoo.data.io import read_image

    gt, mask = _dsb(shared_data)
    viewer.add_image(read_image(mask.parent.parent / "images" / mask.name), name=mask.stem)
    pred, _ = _without_objects(gt, 25)
    viewer.add_labels(gt, name="ground truth", visible=False)
    viewer.add_labels(pred, name="prediction")
    w.run()
    assert w.result is not None
    viewer.window._qt_window.resize(1400, 900)
    qtbot.wait(200)
    grab = w.grab()
    image = grab.toImage()
    pixels = np.array([[image.pixelColor(x, y).value() for x in range(0, image.width(), 4)]
                       for y in range(0, image.height(), 4)])
    # a drawn widget has text, table and bars: many distinct grey levels, not one flat colour
    assert image.width() > 200 and image.height() > 300
    assert pixels.std() > 10 and len(np.unique(pixels)) > 20
    screenshot = _screenshot_path(tmp_path)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from cellzoo.data.io import write_image

    write_image(screenshot, shot)
    assert screenshot.stat().st_size > 10_000


def test_3d_layers_are_evaluated_plane_by_plane(widget, monkeypatch, shared_data):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    viewer, w = widget
    first, _ = _dsb(shared_data, 0)
    second = first[::-1, ::-1].copy()
    pred_second, n = _without_objects(second, 3)
    viewer.add_labels(np.stack([first, second]), name="gt stack")
    viewer.add_labels(np.stack([first, pred_second]), name="pred stack")
    w.gt_layer.setCurrentText("gt stack")
    w.pred_layer.setCurrentText("pred stack")
    job = w.run()
    assert job.state == "done"
    rows = w.result.per_image
    assert [r["image"] for r in rows] == ["gt stack [0]", "gt stack [1]"]
    assert rows[0]["pq"] == pytest.approx(1.0)
    assert rows[1]["pq"] == pytest.approx((n - 3) / (n - 3 + 1.5))
    assert w.result.summary["pq"] == pytest.approx((rows[0]["pq"] + rows[1]["pq"]) / 2)


def test_confidences_from_layer_features_rank_detections_for_coco_ap(widget, monkeypatch):
    """Two predictions for one nucleus: AP depends on which the scores rank first."""
    import pandas as pd

    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    viewer, w = widget
    gt = np.zeros((64, 64), np.int32)
    gt[10:30, 10:30] = 1
    pred = np.zeros_like(gt)
    pred[10:30, 10:30] = 1  # exact match
    pred[40:50, 40:50] = 2  # false positive
    viewer.add_labels(gt, name="ground truth")
    layer = viewer.add_labels(pred, name="prediction")
    aps = {}
    for case, scores in (("good first", [0.9, 0.1]), ("bad first", [0.1, 0.9])):
        layer.features = pd.DataFrame({"label": [1, 2], "score": scores})
        assert w.run().state == "done"
        aps[case] = w.result.per_image[0]["ap50"]
    assert aps["good first"] == pytest.approx(1.0)
    assert aps["bad first"] == pytest.approx(0.5)  # FP ranked first: precision 1/2 at full recall


# ----------------------------------------------------------------------------- layer roles and warnings
def _consep_tile(shared_data, index=0):
    folder = shared_data / "consep" / "stitched" / "test"
    name = sorted((folder / "inst").glob("*.png"))[index].name
    return read_labels(folder / "inst" / name), read_labels(folder / "class" / name)


def _items(combo):
    return [combo.itemText(i) for i in range(combo.count())]


def test_segment_outputs_and_a_later_ground_truth_get_the_right_fields(widget, qtbot, shared_data):
    """The walkthrough: GT defaulted to '<image> classes' and kept it after 'ground truth' was added."""
    from cellzoo._napari._layers import show_segmentation
    from cellzoo.data.io import read_image

    viewer, w = widget
    inst, classes = _consep_tile(shared_data)
    image = viewer.add_image(read_image(shared_data / "consep/stitched/test/images/test_1.png"), name="tile")
    pred, _ = _without_objects(inst, 20)
    show_segmentation(viewer, image, pred, np.where(pred > 0, classes, 0), class_names=CONSEP, class_colors=None,
                      model="cellzoo-he")
    qtbot.wait(10)  # the late refresh sees the links set after the layers were added
    assert _items(w.gt_layer) == _items(w.pred_layer) == ["tile instances"]
    assert _items(w.gt_class_layer) == [NONE, "tile classes"]
    assert w.pred_class_layer.currentText() == "tile classes"  # linked to the chosen prediction

    viewer.add_labels(inst, name="ground truth")
    viewer.add_labels(classes, name="ground truth types")  # no links: a class map by its pixels
    qtbot.wait(10)
    assert w.gt_layer.currentText() == "ground truth" and w.pred_layer.currentText() == "tile instances"
    assert "ground truth types" not in _items(w.gt_layer) and "ground truth types" in _items(w.gt_class_layer)
    assert (w.gt_class_layer.currentText(), w.pred_class_layer.currentText()) == ("ground truth types", "tile classes")
    assert w.run_button.isEnabled() and not w.warning_label.isVisibleTo(w)

    viewer.layers["ground truth"].name = "annotation"  # renaming refreshes the choices
    assert w.gt_layer.currentText() == "annotation"
    w.pred_layer.setCurrentText("tile instances")
    del viewer.layers["annotation"]
    assert "annotation" not in _items(w.gt_layer) and w.gt_layer.currentText() == "tile instances"
    assert not w.run_button.isEnabled()  # GT and prediction are the same layer now


def test_a_choice_made_by_hand_survives_new_layers(widget, shared_data):
    viewer, w = widget
    inst, _ = _consep_tile(shared_data)
    viewer.add_labels(inst, name="A")
    viewer.add_labels(inst.copy(), name="B")
    w.gt_layer.setCurrentText("B")
    w.gt_layer.activated.emit(w.gt_layer.currentIndex())  # what a click on the item sends
    viewer.add_labels(inst.copy(), name="ground truth")
    assert w.gt_layer.currentText() == "B"


def test_a_prediction_of_another_image_is_warned_about_before_any_number(widget, monkeypatch, shared_data):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    viewer, w = widget
    first, _ = _consep_tile(shared_data, 0)
    second, _ = _consep_tile(shared_data, 1)
    viewer.add_labels(first, name="ground truth")
    viewer.add_labels(second, name="prediction")
    assert w.gt_layer.currentText() == "ground truth" and w.pred_layer.currentText() == "prediction"
    assert w.warning_label.isVisibleTo(w) and "no more than by chance" in w.warning_label.text()
    assert w.result is None  # the warning is up before Evaluate is pressed
    viewer.layers["prediction"].data = _without_objects(first, 5)[0]
    w.validate()
    assert not w.warning_label.isVisibleTo(w) and w.warnings == []


def test_folders_with_a_class_map_as_ground_truth_are_warned_about(widget, tmp_path, shared_data):
    _, w = widget
    folder = shared_data / "consep" / "stitched" / "test"
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt" / "test_1.png").symlink_to(folder / "class" / "test_1.png")
    (tmp_path / "pred" / "test_1.png").symlink_to(folder / "inst" / "test_1.png")
    w.source.setCurrentText("Folders")
    w.gt_folder.edit.setText(str(tmp_path / "gt"))
    w.pred_folder.edit.setText(str(tmp_path / "pred"))
    assert w.warning_label.isVisibleTo(w)
    assert "ground truth looks like a class map" in w.warning_label.text()


def test_an_integer_image_layer_holding_instances_can_be_the_ground_truth(widget, shared_data):
    """napari's own reader opens monuseg labels/*.png as an Image layer; its pixels make it usable."""
    viewer, w = widget
    from cellzoo.data.io import read_image

    path = sorted((shared_data / "monuseg2018" / "labels" / "test").glob("*.png"))[0]
    viewer.add_image(read_image(path), name=path.stem)
    viewer.add_image(read_image(shared_data / "monuseg2018" / "images" / "test" / path.name), name="H&E")
    assert _items(w.gt_layer) == [path.stem]
