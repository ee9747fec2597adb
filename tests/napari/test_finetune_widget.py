"""Fine-tune widget in a real napari window: a real RepSNet trained a few steps on real DSB data."""
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


def _quick_settings(widget, epochs=1, steps=2):
    widget.base_model.setCurrentIndex(widget.base_model.findData(BASE))
    widget.epochs.setValue(epochs)
    widget.steps.setValue(steps)
    widget.batch_size.setValue(1)
    widget.crop.setValue(64)
    widget.val_fraction.setValue(0.5)
    widget.learning_rate.setText("1e-3")


def test_threaded_finetune_saves_new_model_listed_by_segment_widget(make_napari_viewer, qtbot, monkeypatch,
                                                                   models_dir, tmp_path):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    from cellzoo._napari.segment_widget import SegmentWidget
    from cellzoo.zoo import list_models, read_metadata

    viewer, widget = _setup(make_napari_viewer)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", tabify=True)
    _add_dsb_pairs(viewer)
    assert [p[:2] for p in widget.checked_pairs()] == [("dsb 0", "dsb 0 labels"), ("dsb 1", "dsb 1 labels")]
    _quick_settings(widget)
    assert widget.new_name.text() == f"{BASE}-finetuned"
    assert widget.run_button.isEnabled(), widget.run_button.toolTip()
    layers_before = [layer.name for layer in viewer.layers]

    job = widget.run()
    assert job.worker is not None  # a real thread
    qtbot.waitUntil(lambda: not job.running, timeout=240_000)
    assert job.state == "done", widget.status.text()

    saved = models_dir / f"{BASE}-finetuned.safetensors"
    assert sorted(p.name for p in models_dir.iterdir()) == [saved.name, f"{BASE}.safetensors"]
    assert widget.outcome.saved_path == saved and widget.outcome.n_train == 1 and widget.outcome.n_val == 1
    info = {i.name: i for i in list_models()}[f"{BASE}-finetuned"]
    assert info.status == "user" and info.family == "repsnet"
    meta = read_metadata(saved)
    assert "pq" in meta["metrics"]["validation_before"] and "pq" in meta["metrics"]["validation_after"]
    assert meta["training"]["config"]["steps_per_epoch"] == 2
    # the Segment widget lists the new model at once
    assert segment.model_combo.findData(f"{BASE}-finetuned") >= 0
    # live plot: 2 training steps and 1 validation point; before/after table shown
    assert len(widget.plot.loss_points) == 2 and len(widget.plot.metric_points) == 1
    assert "before" in widget.comparison.text() and "PQ" in widget.comparison.text()
    # nothing left behind: no new layers, no temporary training folder
    assert [layer.name for layer in viewer.layers] == layers_before
    assert not list(Path(tempfile.tempdir).glob("cellzoo-finetune-*"))
    # the name is taken now: the next suggestion is free, and the old name is refused
    widget.new_name.setText(f"{BASE}-finetuned")
    assert not widget.run_button.isEnabled() and "already have" in widget.new_name.toolTip()

    widget.new_name.setText(f"{BASE}-finetuned-2")
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


def test_cancel_during_finetune_leaves_no_model_layers_or_files(make_napari_viewer, qtbot, monkeypatch,
                                                               models_dir):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    viewer, widget = _setup(make_napari_viewer)
    _add_dsb_pairs(viewer)
    _quick_settings(widget, epochs=5, steps=50)
    layers_before = [layer.name for layer in viewer.layers]
    job = widget.run()
    qtbot.waitUntil(lambda: len(widget.plot.loss_points) >= 1, timeout=120_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)
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
    assert widget.run_button.isEnabled()

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


def test_cancel_after_an_epoch_keeps_its_best_checkpoint(models_dir):
    """Engine side of Cancel: the job stops between steps and still saves the best finished epoch."""
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
        if isinstance(event, Validation):
            token.cancel()  # the user presses Cancel once epoch 1 is validated

    config = {"epochs": 4, "steps_per_epoch": 1, "batch_size": 1, "crop": 64, "val_fraction": 0.5,
              "lr": 1e-3, "augment": "none", "scheduler": "none", "device": "cpu"}
    outcome = run_to_end(finetune_job(BASE, samples, [], config, "kept", token), on_event)
    assert outcome.cancelled and outcome.epochs_done == 1 and outcome.best_epoch == 1
    assert outcome.saved_path == models_dir / "kept.safetensors"
    meta = read_metadata(outcome.saved_path)
    assert meta["training"]["cancelled"] is True and meta["training"]["epochs_done"] == 1
    assert sum(isinstance(e, Validation) for e in events) == 1
    assert not list(Path(tempfile.tempdir).glob("cellzoo-finetune-*"))
