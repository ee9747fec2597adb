"""The whole loop in one real napari window (Xvfb) on a real CoNSeP patch:
segment -> correct with each tool -> add to training set -> fine-tune a few steps -> re-segment -> evaluate,
plus: cancelling the fine-tuning leaves no model file behind."""

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt
from scipy import ndimage
from skimage import io

from cellzoo._napari.correct_widget import CorrectWidget
from cellzoo._napari.evaluate_widget import EvaluateWidget
from cellzoo._napari.finetune_widget import FinetuneWidget
from cellzoo._napari.segment_widget import SegmentWidget
from cellzoo.annotate import instance_table, next_free_id, read_training_set
from cellzoo.metrics import image_metrics
from cellzoo.models import build_model
from viewer_input import click, deepest, press

NAMES = ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]
COLORS = ["#000000", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]


def largest(labels, n):
    areas = np.bincount(np.asarray(labels).ravel())
    areas[0] = 0
    return [int(i) for i in np.argsort(areas)[::-1][:n]]


def assert_consistent(inst, cls):
    labels, classes = np.asarray(inst.data), np.asarray(cls.data)
    assert not classes[labels == 0].any()
    reference = instance_table(labels, classes, NAMES)
    table = inst.features.sort_values("label")
    np.testing.assert_array_equal(table["label"], reference["label"])
    np.testing.assert_array_equal(table["area"], reference["area"])
    np.testing.assert_array_equal(table["class"], reference["class"])
    for label, klass in zip(reference["label"], reference["class"]):
        assert np.unique(classes[labels == label]).tolist() == [klass]


@pytest.fixture
def env(tmp_path, monkeypatch, shared_data):
    from cellzoo.zoo import register_model

    monkeypatch.setenv("CELLZOO_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")  # real threads, waited for with qtbot
    torch.manual_seed(0)
    model = build_model("repsnet", {"variant": "S", "filters": [8, 16, 32, 64], "num_classes": 5,
                                    "class_names": NAMES})
    register_model(model, "tiny-he", {"class_colors": COLORS})
    root = shared_data / "consep" / "test"
    image = io.imread(root / "images" / "test_1_000.jpg")
    gt = io.imread(root / "inst" / "test_1_000.png").astype(np.int32)
    with torch.no_grad():  # thresholds under which the untrained net yields objects (a user tuning them)
        prob = model.eval()(model.preprocess(image.astype(np.float32))[None])["nucleus"].softmax(1)[0, 1].numpy()
    params = {"foreground_threshold": float(np.percentile(prob, 70)), "boundary_threshold": 100.0, "min_size": 10}
    return tmp_path, image, gt, params


def run_segment(widget, qtbot, viewer):
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget._job is not None and not widget._job.running, timeout=180_000)
    assert widget._job.state == "done", widget.status_label.text()
    return viewer.layers["patch instances"], viewer.layers["patch classes"]


def test_round_trip(make_napari_viewer, qtbot, env):
    tmp_path, image, gt, params = env
    viewer = make_napari_viewer()
    viewer.add_image(image, name="patch")
    viewer.add_labels(gt, name="ground truth", visible=False)

    # 1. segment (threaded) ------------------------------------------------------------------
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    segment.image_combo.setCurrentText("patch")
    segment.model_combo.setCurrentIndex(segment.model_combo.findData("tiny-he"))
    for key, value in params.items():
        segment._param_fields[key].setText(repr(value))
    inst, cls = run_segment(segment, qtbot, viewer)
    first = np.asarray(inst.data).copy()
    assert len(np.unique(first)) - 1 >= 5 and inst.metadata["cellzoo"]["model"] == "tiny-he"
    assert_consistent(inst, cls)

    # 2. correct with each tool ----------------------------------------------------------------
    correct = CorrectWidget(viewer)
    viewer.window.add_dock_widget(correct)
    correct.layer_combo.setCurrentText("patch instances")
    assert correct.layer is inst and correct.classes_layer is cls and correct.image_layer.name == "patch"
    n = lambda: len(np.unique(inst.data)) - 1  # noqa: E731

    a, b, c = largest(inst.data, 3)
    count = n()
    click(inst, deepest(np.asarray(inst.data), c), ["Shift"])                      # delete
    assert c not in inst.data and n() == count - 1
    click(inst, deepest(np.asarray(inst.data), a), ["Control"])                    # select two, merge
    click(inst, deepest(np.asarray(inst.data), b), ["Control"])
    press(inst, "Shift-M")
    assert n() == count - 2 and min(a, b) in inst.data and max(a, b) not in inst.data
    merged = min(a, b)
    rows, cols = np.nonzero(np.asarray(inst.data) == merged)                       # split it again
    order = np.argsort(cols * 1000 + rows)
    for k in (order[len(order) // 10], order[-len(order) // 10]):
        click(inst, (rows[k], cols[k]), ["Alt"])
    new_id = next_free_id(np.asarray(inst.data))
    press(inst, "Shift-S")
    assert (inst.data == new_id).any() and (inst.data == merged).any() and n() == count - 1
    correct.class_combo.setCurrentIndex(correct.class_combo.findData(3))           # class for the split part
    correct.clear_selection()
    click(inst, deepest(np.asarray(inst.data), new_id), ["Control"])
    press(inst, "Shift-C")
    assert (cls.data[inst.data == new_id] == 3).all()
    drawn = next_free_id(np.asarray(inst.data))                                    # draw a new instance
    press(inst, "Shift-N")
    assert inst.selected_label == drawn
    free = np.argwhere(ndimage.binary_erosion(np.asarray(inst.data) == 0, iterations=4))
    inst.brush_size = 7
    inst.paint(tuple(free[len(free) // 2]), drawn)
    qtbot.waitUntil(lambda: (cls.data[inst.data == drawn] == 3).all() and (inst.data == drawn).any(), timeout=5000)
    hole = deepest(np.asarray(inst.data), drawn)                                   # punch a hole, fill it
    inst.brush_size = 1
    inst.paint(hole, 0)
    qtbot.waitUntil(lambda: inst.data[hole] == 0 and cls.data[hole] == 0, timeout=5000)  # class layer follows
    correct.fill_holes()
    assert inst.data[hole] == drawn
    correct.min_size_spin.setValue(15)                                              # remove small objects
    correct.remove_small()
    assert np.bincount(np.asarray(inst.data).ravel())[1:][np.bincount(np.asarray(inst.data).ravel())[1:] > 0].min() >= 15
    before_relabel = np.asarray(inst.data).copy()
    correct.relabel_sequential()                                                   # relabel 1..N
    assert inst.data.max() == n() and np.array_equal(inst.data > 0, before_relabel > 0)
    correct.undo()                                                                 # undo / redo
    np.testing.assert_array_equal(inst.data, before_relabel)
    correct.redo()
    assert inst.data.max() == n()
    assert_consistent(inst, cls)
    scores = inst.features.set_index("label")["score"]
    assert np.isnan(scores).sum() >= 3  # merged/split and drawn objects lost their model score
    assert np.isfinite(scores).sum() >= n() - 4

    # 3. add to training set ------------------------------------------------------------------------
    folder = tmp_path / "training-set"
    correct.folder_edit.setText(str(folder))
    correct.buttons["add"].click()
    (sample,) = read_training_set(folder)
    np.testing.assert_array_equal(sample.labels, inst.data)
    np.testing.assert_array_equal(sample.classes, cls.data)
    assert sample.meta["model"] == "tiny-he" and sample.meta["source_layer"] == "patch"

    # 4. fine-tune a few steps on the training-set folder ------------------------------------------------
    finetune = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(finetune)
    finetune.base_model.setCurrentIndex(finetune.base_model.findData("tiny-he"))
    for i in range(finetune.pairs.count()):  # train on the saved folder only
        finetune.pairs.item(i).setCheckState(Qt.CheckState.Unchecked)
    assert finetune.add_folder(folder)
    finetune.steps.setValue(2)
    finetune.batch_size.setValue(1)
    finetune.crop.setValue(64)
    finetune.val_fraction.setValue(0.0)
    finetune.device.setCurrentText("cpu")
    for box in finetune.augment_boxes.values():
        box.setChecked(False)
    finetune.new_name.setText("tiny-he-finetuned")
    assert finetune.run_button.isEnabled(), finetune.run_button.toolTip()
    finetune.run_button.click()
    qtbot.waitUntil(lambda: finetune.job is not None and not finetune.job.running, timeout=180_000)
    assert finetune.outcome is not None and finetune.outcome.saved_path is not None, finetune.status.text()
    assert finetune.outcome.n_train == 1 and (tmp_path / "models" / "tiny-he-finetuned.safetensors").is_file()

    # 5. re-segment with the fine-tuned model (it is listed in the Segment widget at once) --------------------
    index = segment.model_combo.findData("tiny-he-finetuned")
    assert index >= 0 and segment.model_combo.itemText(index).endswith("[your model]")
    segment.model_combo.setCurrentIndex(index)
    for key, value in params.items():
        segment._param_fields[key].setText(repr(value))
    correct.toggle_selection(int(np.unique(inst.data)[1]))
    inst2, cls2 = run_segment(segment, qtbot, viewer)
    assert inst2 is inst and inst.metadata["cellzoo"]["model"] == "tiny-he-finetuned"
    assert correct._undo == [] and correct.selection == set()  # a new result starts a new editing session
    assert not np.array_equal(inst.data, first) or not np.array_equal(inst.data, sample.labels)
    assert_consistent(inst, cls)

    # 6. evaluate against the ground truth ---------------------------------------------------------------
    evaluate = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(evaluate)
    evaluate.gt_layer.setCurrentText("ground truth")
    evaluate.pred_layer.setCurrentText("patch instances")
    assert evaluate.run_button.isEnabled()
    evaluate.run_button.click()
    qtbot.waitUntil(lambda: evaluate.result is not None, timeout=120_000)
    summary = dict(evaluate.result.summary)
    expected = image_metrics(gt, np.asarray(inst.data))
    for key in ("aji", "dice", "pq"):
        assert summary[key] == pytest.approx(expected[key])
        assert 0.0 <= summary[key] <= 1.0


def test_cancel_during_finetuning_leaves_no_model(make_napari_viewer, qtbot, env):
    tmp_path, image, gt, params = env
    from cellzoo.annotate import TrainingSetWriter

    TrainingSetWriter(tmp_path / "set").add(image, gt, source_layer="patch", model="ground truth")
    viewer = make_napari_viewer()
    finetune = FinetuneWidget(viewer)
    finetune.base_model.setCurrentIndex(finetune.base_model.findData("tiny-he"))
    assert finetune.add_folder(tmp_path / "set")
    finetune.steps.setValue(500)
    finetune.batch_size.setValue(1)
    finetune.crop.setValue(64)
    finetune.val_fraction.setValue(0.0)
    finetune.new_name.setText("never-saved")
    before = sorted(p.name for p in (tmp_path / "models").iterdir())
    finetune.run_button.click()
    qtbot.waitUntil(lambda: "step" in finetune.status.text(), timeout=120_000)
    finetune.cancel_button.click()
    qtbot.waitUntil(lambda: not finetune.job.running, timeout=120_000)
    qtbot.waitUntil(lambda: finetune.job.thread_done, timeout=120_000)  # the thread ends its step, then
    qtbot.wait(300)  # its late result (if any) reaches the widget
    after = sorted(p.name for p in (tmp_path / "models").iterdir())
    outcome = finetune.outcome
    if outcome is not None and outcome.best_step is not None:
        # on a loaded machine an evaluation can finish before the click lands: Cancel keeps that best state
        # (as documented), complete, under its own name, and nothing else
        assert after == sorted(before + ["never-saved.safetensors"])
        return
    assert after == before  # cancelled before any evaluation: no model, no temp file
    assert "never-saved" not in [finetune.base_model.itemData(i) for i in range(finetune.base_model.count())]
