"""Fine-tune widget in a real napari window: a real RepSNet fine-tuned a few steps on real DSB data through
cellzoo.train.finetune (de-duplication, held-out before/after, the guard), the pairs list, the "Save as"
names, Keep anyway / Discard."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cellzoo._napari.finetune_widget import FinetuneWidget
from cellzoo.data.io import read_image, read_labels
from cellzoo.data.samples import sample_image_path, sample_labels_path

REPO = Path(__file__).resolve().parents[2]
#: screenshots go to docs/screenshots only when asked (CELLZOO_SCREENSHOTS=docs/screenshots), so a
#: test run does not modify tracked files
SCREENSHOT_NAME = "finetune.png"


def _screenshot_path(tmp_path: Path) -> Path:
    folder = os.environ.get("CELLZOO_SCREENSHOTS")
    return (REPO / folder if folder else tmp_path) / SCREENSHOT_NAME
BASE = "tiny-base"


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """A user model directory holding one small, real RepSNet to start from."""
    from cellzoo.models import build_model
    from cellzoo.zoo import register_model

    folder = tmp_path / "models"
    monkeypatch.setenv("CELLZOO_MODELS", str(folder))
    model = build_model("repsnet", {"variant": "S", "filters": [4, 8, 16, 32]})
    register_model(model, BASE, {"licence": "BSD-3-Clause (test)", "training_data": "none (random init)"})
    # every temporary training folder goes here, so the test can see that none is left behind
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return folder


def _add_dsb_pairs(viewer):
    """The bundled DSB image cut into two 256² image + labels layer pairs (train one, validate one)."""
    image, labels = read_image(sample_image_path()), read_labels(sample_labels_path())
    for k, (y, x) in enumerate([(0, 0), (256, 300)]):
        viewer.add_image(image[y:y + 256, x:x + 256], name=f"dsb {k}")
        viewer.add_labels(labels[y:y + 256, x:x + 256], name=f"dsb {k} labels")


def _setup(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    return viewer, widget


def _quick_settings(widget, steps=2, lr="1e-3"):
    widget.base_model.setCurrentIndex(widget.base_model.findData(BASE))
    widget.steps.setValue(steps)
    widget.batch_size.setValue(1)
    widget.crop.setValue(64)
    widget.learning_rate.setText(lr)
    widget.device.setCurrentText("cpu")


def _run(widget, qtbot):
    job = widget.run()
    assert job is not None, widget.run_button.toolTip()
    qtbot.waitUntil(lambda: not job.running, timeout=240_000)
    assert job.state == "done", widget.status.text()
    return job


def _segment_widget(viewer):
    from cellzoo._napari.segment_widget import SegmentWidget

    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", tabify=True)
    return segment


def test_not_improved_run_is_not_selected_then_kept_or_discarded(make_napari_viewer, qtbot, monkeypatch,
                                                                  models_dir, tmp_path):
    """A random-init base fine-tuned 2 steps does not beat itself on held-out data: the guard says so in
    red, the Segment widget keeps its model, the user keeps (run 1) or discards (run 2) the tuned model.
    The same image as a layer pair and in a training-set folder trains once (de-duplicated)."""
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    from cellzoo.annotate.training_set import TrainingSetWriter
    from cellzoo.zoo import list_models, read_metadata

    viewer, widget = _setup(make_napari_viewer)
    segment = _segment_widget(viewer)
    chosen_before = segment.model_combo.currentData()
    _add_dsb_pairs(viewer)
    assert [p[:2] for p in widget.checked_pairs()] == [("dsb 0", "dsb 0 labels"), ("dsb 1", "dsb 1 labels")]
    # the same pixels as layer "dsb 0", in a training-set folder
    TrainingSetWriter(tmp_path / "set").add(np.asarray(viewer.layers["dsb 0"].data),
                                            np.asarray(viewer.layers["dsb 0 labels"].data), source_layer="copy")
    assert widget.add_folder(tmp_path / "set")
    _quick_settings(widget)
    assert widget.new_name.text() == f"{BASE}-ft1"
    assert "region is held out" in widget.data_note.text()
    layers_before = [layer.name for layer in viewer.layers]

    job = _run(widget, qtbot)
    assert job.worker is not None  # a real thread
    outcome = widget.outcome
    assert outcome.duplicates_removed == 1 and outcome.n_train == 2 and outcome.holdout_region
    assert any("duplicate" in note for note in outcome.notes) and "duplicate" in widget.comparison.text()
    assert not outcome.improved and outcome.saved_path == models_dir / f"{BASE}-ft1.safetensors"
    assert outcome.saved_path.is_file() and read_metadata(outcome.saved_path)["finetune"]["improved"] is False
    assert set(outcome.before) >= {"pq", "aji"} and set(outcome.after) >= {"pq", "aji"}
    text = widget.comparison.text()
    assert "Not better than" in text and "#d62728" in text and "before" in text
    assert widget.decision.isVisibleTo(widget) and "NOT selected" in widget.status.text()
    # listed in Segment, but its selection did not move to the worse model
    assert segment.model_combo.findData(f"{BASE}-ft1") >= 0
    assert segment.model_combo.currentData() == chosen_before
    # live plot: the base's score, 2 steps, the evaluation at the end
    assert len(widget.plot.loss_points) == 2 and len(widget.plot.metric_points) == 2
    # the "Save as" field offers the next free name at once and is not marked red
    assert widget.new_name.text() == f"{BASE}-ft2" and widget.new_name.styleSheet() == ""
    assert widget.run_button.isEnabled(), widget.run_button.toolTip()
    assert [layer.name for layer in viewer.layers] == layers_before
    assert not list(Path(tempfile.tempdir).glob("cellzoo-finetune-*"))

    # the screenshot of the README shows the guard's verdict (docs/screenshots only with CELLZOO_SCREENSHOTS)
    viewer.window._qt_window.resize(1400, 1150)
    viewer.window._dock_widgets["Fine-tune"].raise_()  # Segment shares its tab area
    qtbot.wait(200)
    image = widget.grab().toImage()
    pixels = np.array([[image.pixelColor(x, y).value() for x in range(0, image.width(), 4)]
                       for y in range(0, image.height(), 4)])
    assert pixels.std() > 10 and len(np.unique(pixels)) > 20  # drawn: text, lists, curve
    from cellzoo.data.io import write_image

    screenshot = _screenshot_path(tmp_path)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    write_image(screenshot, viewer.screenshot(canvas_only=False, flash=False))
    assert screenshot.stat().st_size > 10_000

    widget.keep_anyway()
    assert not widget.decision.isVisibleTo(widget) and "Kept" in widget.status.text()
    assert outcome.saved_path.is_file()

    _run(widget, qtbot)  # a second run: this time discard it
    second = widget.outcome
    assert not second.improved and second.saved_path == models_dir / f"{BASE}-ft2.safetensors"
    widget.discard()
    assert not (models_dir / f"{BASE}-ft2.safetensors").exists() and "Discarded" in widget.status.text()
    assert f"{BASE}-ft2" not in {info.name for info in list_models()}
    assert segment.model_combo.findData(f"{BASE}-ft2") < 0
    assert segment.model_combo.currentData() == chosen_before
    assert (models_dir / f"{BASE}-ft1.safetensors").is_file()  # the kept one stays


def test_improved_outcome_is_kept_and_selected(make_napari_viewer, models_dir):
    """What the widget does with a run that beat its base: green verdict, the model selected in Segment.
    (A run that really improves takes minutes on 2 cores; the guard itself is tested in tests/train.)"""
    from cellzoo._napari.finetune_widget import FinetuneOutcome
    from cellzoo.models import build_model
    from cellzoo.zoo import register_model

    viewer, widget = _setup(make_napari_viewer)
    segment = _segment_widget(viewer)
    image, labels = read_image(sample_image_path()), read_labels(sample_labels_path())
    viewer.add_image(image, name="dsb")
    viewer.add_labels(labels, name="dsb labels")
    assert "With one image, a region is held out" in widget.data_note.text()
    widget.base_model.setCurrentIndex(widget.base_model.findData(BASE))
    path = register_model(build_model("repsnet", {"variant": "S", "filters": [4, 8, 16, 32]}), f"{BASE}-ft1", {})
    outcome = FinetuneOutcome(path, f"{BASE}-ft1", before={"pq": 0.40, "aji": 0.45}, after={"pq": 0.47, "aji": 0.50},
                              best_step=20, steps_done=30, n_train=1, n_val=1, improved=True, holdout_region=True,
                              notes=["one image: held out the last 25 % of each image"], base_name=BASE)
    widget._on_returned(outcome)
    text = widget.comparison.text()
    assert "Better than" in text and "#2ca02c" in text and "held-out stripe" in text and "+0.070" in text
    assert not widget.decision.isVisibleTo(widget) and "selected in Segment" in widget.status.text()
    assert segment.model_combo.currentData() == f"{BASE}-ft1"


def test_pairs_offer_only_labels_of_their_image(make_napari_viewer, models_dir):
    viewer, widget = _setup(make_napari_viewer)
    image = read_image(sample_image_path())[:256, :256]
    labels = read_labels(sample_labels_path())[:256, :256]
    viewer.add_image(image, name="a")
    viewer.add_image(image[::-1].copy(), name="b")
    viewer.add_labels(labels, name="a labels")
    viewer.add_labels(labels, name="b instances")
    viewer.add_labels(labels, name="segmentation", metadata={"cellzoo": {"image_layer": "b"}})
    viewer.add_labels(labels, name="Labels")  # names no image, and two images have its size: not offered
    viewer.add_labels(labels[:128], name="a small")  # named after a, but not its size
    pairs = [p[:2] for p in widget._pair_candidates()]
    assert pairs == [("a", "a labels"), ("b", "b instances"), ("b", "segmentation")]
    # a labels layer naming no image pairs with the only image of its size
    viewer.add_image(np.zeros((100, 120), np.uint8), name="c")
    viewer.add_labels(np.zeros((100, 120), np.int32), name="Labels [1]")
    assert ("c", "Labels [1]") in [p[:2] for p in widget._pair_candidates()]


def test_save_as_offers_the_next_free_name(make_napari_viewer, models_dir):
    from cellzoo.models import build_model
    from cellzoo.zoo import register_model

    _, widget = _setup(make_napari_viewer)
    widget.base_model.setCurrentIndex(widget.base_model.findData(BASE))
    assert widget.new_name.text() == f"{BASE}-ft1"
    model = build_model("repsnet", {"variant": "S", "filters": [4, 8, 16, 32]})
    register_model(model, f"{BASE}-ft1", {})
    widget.refresh_models()
    assert widget.new_name.text() == f"{BASE}-ft2" and widget.run_button.toolTip() != ""
    # a tuned model as the base: no "-ft1-ft1" chains
    widget.base_model.setCurrentIndex(widget.base_model.findData(f"{BASE}-ft1"))
    assert widget.new_name.text() == f"{BASE}-ft2"
    widget.new_name.setText("my-model")  # the user's own name stays
    widget.refresh_models()
    assert widget.new_name.text() == "my-model"


def test_cancel_during_finetune_leaves_no_model_layers_or_files(make_napari_viewer, qtbot, monkeypatch,
                                                               models_dir):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    viewer, widget = _setup(make_napari_viewer)
    _add_dsb_pairs(viewer)
    _quick_settings(widget, steps=50)
    layers_before = [layer.name for layer in viewer.layers]
    job = widget.run()
    qtbot.waitUntil(lambda: len(widget.plot.loss_points) >= 1, timeout=120_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)
    # the thread ends its step (maybe after the cancel grace: the outcome then arrives late)
    qtbot.waitUntil(lambda: widget.outcome is not None, timeout=120_000)
    # the first evaluation comes at step 10: nothing evaluated, nothing saved
    assert widget.outcome is not None and widget.outcome.cancelled and widget.outcome.saved_path is None
    assert "no model was saved" in widget.status.text()
    assert [p.name for p in models_dir.iterdir()] == [f"{BASE}.safetensors"]
    assert not list(Path(tempfile.tempdir).glob("cellzoo-finetune-*"))
    assert [layer.name for layer in viewer.layers] == layers_before
    assert len(widget.plot.loss_points) < 50 and widget.run_button.isEnabled()


def test_fields_are_validated_before_run(make_napari_viewer, tmp_path, models_dir):
    from cellzoo.annotate.training_set import TrainingSetWriter

    viewer, widget = _setup(make_napari_viewer)
    widget.base_model.setCurrentIndex(widget.base_model.findData(BASE))
    assert not widget.run_button.isEnabled()
    assert "Tick an image" in widget.pairs.toolTip()

    # a training-set folder (as the Correct widget writes it) is enough data
    image, labels = read_image(sample_image_path()), read_labels(sample_labels_path())
    writer = TrainingSetWriter(tmp_path / "set")
    writer.add(image[:256, :256], labels[:256, :256], source_layer="a")
    writer.add(image[256:, :256], labels[256:, :256], source_layer="b")
    assert widget.add_folder(tmp_path / "set")
    assert widget.n_images() == 2 and widget.run_button.isEnabled(), widget.run_button.toolTip()
    assert not widget.add_folder(tmp_path / "nothing-here")
    assert widget.folders.count() == 1

    for bad, reason in (("abc", "Learning rate"), ("0", "Learning rate"), ("2", "Learning rate")):
        widget.learning_rate.setText(bad)
        assert not widget.run_button.isEnabled() and reason in widget.learning_rate.toolTip()
    widget.learning_rate.setText("1e-4")
    assert widget.run_button.isEnabled() and widget.config_values()["recipe"]["lr"] == 1e-4
    widget.learning_rate.setText("auto")  # the recipe's: from the base's held-out score
    assert widget.run_button.isEnabled() and "lr" not in widget.config_values()["recipe"]

    widget.new_name.setText("cellzoo-he")  # a zoo model: never overwritten
    assert not widget.run_button.isEnabled() and "zoo model" in widget.new_name.toolTip()
    widget.new_name.setText("has space")
    assert not widget.run_button.isEnabled() and "letters, digits" in widget.new_name.toolTip()
    widget.new_name.setText("my-model")
    assert widget.run_button.isEnabled()


def test_unavailable_device_is_marked(make_napari_viewer, models_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the check needs a machine without it")
    _, widget = _setup(make_napari_viewer)
    widget.device.setCurrentText("cuda")
    assert not widget.run_button.isEnabled() and "no CUDA GPU" in widget.device.toolTip()
    widget.device.setCurrentText("cpu")
    assert widget.device.styleSheet() == ""


def test_cancel_after_an_evaluation_keeps_its_best_state(models_dir):
    """Engine side of Cancel: the job stops between steps and still saves the best evaluated state."""
    from cellzoo._napari.finetune_widget import finetune_job
    from cellzoo.data.sample import Sample
    from cellzoo.types import CancelToken, Validation, run_to_end
    from cellzoo.zoo import read_metadata

    image, labels = read_image(sample_image_path()), read_labels(sample_labels_path())
    samples = [Sample(f"s{k}", image[y:y + 128, :128], labels[y:y + 128, :128]) for k, y in enumerate((0, 200))]
    token = CancelToken()
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, Validation) and event.epoch == 1:
            token.cancel()  # the user presses Cancel once step 1 is evaluated

    settings = {"recipe": {"steps": 4, "eval_every": 1, "batch_size": 1, "crop": 64, "lr": 1e-3,
                           "augment": "none"}, "device": "cpu"}
    outcome = run_to_end(finetune_job(BASE, samples, [], settings, "kept", token), on_event)
    assert outcome.cancelled and outcome.steps_done == 1 and outcome.best_step == 1
    assert outcome.saved_path == models_dir / "kept.safetensors"
    meta = read_metadata(outcome.saved_path)
    assert meta["training"]["cancelled"] is True and meta["training"]["steps_done"] == 1
    assert [e.epoch for e in events if isinstance(e, Validation)] == [0, 1]  # the base, then step 1
    assert not list(Path(tempfile.tempdir).glob("cellzoo-finetune-*"))


def test_suggest_puts_ranked_rectangles_in_a_shapes_layer(make_napari_viewer, qtbot, monkeypatch, models_dir,
                                                          shared_data):
    """Suggest (background job) with the embedded H&E model on a real MoNuSeg test image."""
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    from napari.layers import Shapes

    viewer, widget = _setup(make_napari_viewer)
    path = sorted((shared_data / "monuseg2018/images/test").glob("*.png"))[0]
    image = read_image(path)[:512, :768]
    viewer.add_image(image, name="slide", rgb=True, scale=(0.5, 0.5))
    assert widget.suggest_image.currentText() == "slide" and widget.suggest_button.isEnabled()
    widget.base_model.setCurrentIndex(widget.base_model.findData("cellzoo-he"))
    widget.suggest_n.setValue(3)
    job = widget.suggest()
    assert job.worker is not None  # a real thread
    qtbot.waitUntil(lambda: not job.running, timeout=180_000)
    layer = viewer.layers["slide suggestions"]
    assert isinstance(layer, Shapes) and len(layer.data) == 3 and set(layer.shape_type) == {"rectangle"}
    assert list(layer.features["rank"]) == [1, 2, 3]
    assert list(layer.text.values) == ["1", "2", "3"]
    assert tuple(layer.scale) == (0.5, 0.5)
    for corners, patch in zip(layer.data, widget.suggestions):
        assert corners.min(axis=0).tolist() == [patch.y, patch.x]
        assert (corners.max(axis=0) - corners.min(axis=0)).tolist() == [256, 256]
    assert np.allclose(layer.features["inconsistency"], [p.inconsistency for p in widget.suggestions])
    assert "3 patch(es) to correct first" in widget.suggest_status.text() and widget.suggest_button.isEnabled()
    # new suggestions replace the layer
    widget._show_suggestions(viewer.layers["slide"], widget.suggestions[:2])
    assert [layer.name for layer in viewer.layers].count("slide suggestions") == 1
    assert len(viewer.layers["slide suggestions"].data) == 2


def test_pseudo_labels_from_the_open_unlabelled_images(make_napari_viewer, qtbot, models_dir):
    """The pseudo-label option: the open 2-D images outside the ticked pairs go to the job, whose base
    pseudo-labels them (the run's notes say how many instances it kept)."""
    viewer, widget = _setup(make_napari_viewer)
    _add_dsb_pairs(viewer)
    image = read_image(sample_image_path())
    viewer.add_image(image[256:512, :256], name="unlabelled")
    _quick_settings(widget)
    assert widget.pseudo_image_names() == ["unlabelled"]
    widget.pseudo.setChecked(True)
    _run(widget, qtbot)
    notes = widget.outcome.notes
    assert any(note.startswith("pseudo-labels: ") and "on 1 unlabelled image" in note for note in notes), notes
