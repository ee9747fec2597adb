"""Every failure inside a widget's job ends in a napari notification and a ready widget.

Faults are injected where the widget's job calls the engine (``segment_iter``, ``evaluate_iter``,
``finetune_iter``): a generator that yields a few real events and then raises. Everything else is real:
napari viewer under Xvfb, the widgets, their threads, the napari notification manager. After each
failure the same widget is run again (the next fault, and at the end a real, successful run).
The Correct widget has no jobs (its edits run on the main thread), so it is not part of this.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity, notification_manager

from cellzoo.types import Progress


class SurpriseError(Exception):
    """A custom exception type the widgets know nothing about."""


#: (exception to raise, text the notification and the status line must contain)
FAULTS = [
    (ValueError("the image is empty; open another one"), "the image is empty; open another one"),
    (RuntimeError("a torch kernel failed"), "RuntimeError: a torch kernel failed"),
    (MemoryError(), "ran out of memory"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "ran out of memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB"), "ran out of memory"),
    (OSError("No space left on device"), "No space left on device"),
    (KeyError("prob"), "prob"),
    (SurpriseError("nobody expected this"), "SurpriseError: nobody expected this"),
    (KeyboardInterrupt(), "interrupted"),
]


def failing_generator(exc: BaseException, events: int = 2):
    """Stands in for an engine generator: a few real progress events, then the fault."""

    def fake(*_args, **_kwargs):
        for i in range(events):
            yield Progress("tiles", i + 1, events + 2)
            time.sleep(0.01)
        raise exc

    return fake


def inject(monkeypatch, name: str, replacement) -> None:
    """Replace the engine function ``name`` wherever a cellzoo module holds it (packages re-export it)."""
    import cellzoo.infer
    import cellzoo.metrics
    import cellzoo.train  # noqa: F401 - loaded, so that their names can be replaced

    originals = set()
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("cellzoo") and not module_name.startswith("cellzoo._napari") \
                and callable(getattr(module, name, None)):
            originals.add(getattr(module, name))
            monkeypatch.setattr(module, name, replacement)
    assert originals, f"no cellzoo module defines {name}"


def new_errors(before: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[before:]
            if n.severity == NotificationSeverity.ERROR]


def run_and_wait(qtbot, widget) -> None:
    assert widget.run_button.isEnabled(), widget.run_button.toolTip()
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)


def assert_ready_after_failure(widget, status_text: str, expected: str, before: int) -> None:
    errors = new_errors(before)
    assert len(errors) == 1, errors
    assert expected in errors[0]
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert expected in status_text and status_text == errors[0]  # the status keeps the error
    assert widget.jobs.progress_bar.format() == "failed"


# ----------------------------------------------------------------------------- the widgets
@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    from cellzoo.models import build_model
    from cellzoo.zoo import register_model

    monkeypatch.setenv("CELLZOO_MODELS", str(tmp_path / "models"))
    torch.manual_seed(0)
    model = build_model("repsnet", {"variant": "S", "filters": [4, 8, 16, 32]})
    register_model(model, "tiny", {"licence": "BSD-3-Clause (test)", "training_data": "none (random init)"})
    return tmp_path / "models"


def segment_setup(viewer, shared_data):
    from cellzoo._napari.segment_widget import SegmentWidget
    from cellzoo.data.io import read_image

    image = read_image(sorted((shared_data / "dsb2018" / "test" / "images").iterdir())[0])
    viewer.add_image(np.asarray(image)[:96, :96], name="cells")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("tiny"))
    return widget, "segment_iter", lambda: widget.status_label.text(), \
        lambda: "instances in" in widget.status_label.text() and "cells instances" in viewer.layers


def evaluate_setup(viewer, shared_data):
    from cellzoo._napari.evaluate_widget import EvaluateWidget
    from cellzoo.data.io import read_labels

    labels = read_labels(sorted((shared_data / "dsb2018" / "test" / "masks").glob("*.tif"))[0])
    viewer.add_labels(labels, name="ground truth")
    viewer.add_labels(labels.copy(), name="prediction")
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.gt_layer.setCurrentText("ground truth")
    widget.pred_layer.setCurrentText("prediction")
    return widget, "evaluate_iter", lambda: widget.status.text(), \
        lambda: widget.result is not None and "Evaluated 1 image" in widget.status.text()


def finetune_setup(viewer, shared_data):
    from cellzoo._napari.finetune_widget import FinetuneWidget
    from cellzoo.data.io import read_image, read_labels
    from cellzoo.data.samples import sample_image_path, sample_labels_path

    image, labels = read_image(sample_image_path()), read_labels(sample_labels_path())
    for k, (y, x) in enumerate([(0, 0), (256, 300)]):
        viewer.add_image(image[y:y + 128, x:x + 128], name=f"dsb {k}")
        viewer.add_labels(labels[y:y + 128, x:x + 128], name=f"dsb {k} labels")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.base_model.setCurrentIndex(widget.base_model.findData("tiny"))
    widget.steps.setValue(2)
    widget.batch_size.setValue(1)
    widget.crop.setValue(64)
    widget.val_fraction.setValue(0.5)
    return widget, "finetune_iter", lambda: widget.status.text(), \
        lambda: widget.outcome is not None and widget.outcome.saved_path is not None


SETUPS = {"segment": segment_setup, "evaluate": evaluate_setup, "finetune": finetune_setup}


@pytest.mark.parametrize("threads", ["sync", "threaded"])
@pytest.mark.parametrize("which", list(SETUPS))
def test_each_fault_ends_in_a_notification_and_a_ready_widget(make_napari_viewer, qtbot, monkeypatch,
                                                              models_dir, shared_data, which, threads):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1" if threads == "sync" else "0")
    # the injected faults live in this process: fine-tuning runs in the job thread here (its own process,
    # the default, is tested below with a real failure inside the child)
    monkeypatch.setenv("CELLZOO_JOB_PROCESS", "0")
    viewer = make_napari_viewer()
    widget, engine_function, status, succeeded = SETUPS[which](viewer, shared_data)
    for exc, expected in FAULTS:
        with monkeypatch.context() as patch:
            inject(patch, engine_function, failing_generator(exc))
            before = len(notification_manager.records)
            run_and_wait(qtbot, widget)
            assert_ready_after_failure(widget, status(), expected, before)
            if which == "finetune":
                assert widget.run_button.isEnabled()  # the base model list was refreshed, still valid
    # the same widget still works for real afterwards
    before = len(notification_manager.records)
    run_and_wait(qtbot, widget)
    assert new_errors(before) == [] and succeeded(), status()
    assert widget.jobs.progress_bar.format() == "done" and widget.run_button.isEnabled()


def test_out_of_memory_tells_the_segment_user_to_pick_smaller_tiles(make_napari_viewer, qtbot, monkeypatch,
                                                                   models_dir, shared_data):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    viewer = make_napari_viewer()
    widget, engine_function, status, _ = segment_setup(viewer, shared_data)
    widget.tile_spin.setValue(512)
    inject(monkeypatch, engine_function,
           failing_generator(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")))
    before = len(notification_manager.records)
    run_and_wait(qtbot, widget)
    (message,) = new_errors(before)
    assert "tiles of 512 px" in message and "smaller tile size" in message and "CPU" in message
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_downloadable_model_offline_ends_with_how_to_get_it(make_napari_viewer, qtbot, monkeypatch, models_dir,
                                                            shared_data, tmp_path):
    """The reported hang: repsnet-l-conic [download] picked offline. The download really runs and
    fails (a mirror on a closed local port stands for "offline"); the message says how to get the file."""
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    monkeypatch.setenv("CELLZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLZOO_MIRROR", "http://127.0.0.1:9")
    viewer = make_napari_viewer()
    widget, _, status, _ = segment_setup(viewer, shared_data)
    index = widget.model_combo.findData("repsnet-l-conic")
    assert index >= 0 and "[download]" in widget.model_combo.itemText(index)
    widget.model_combo.setCurrentIndex(index)
    before = len(notification_manager.records)
    run_and_wait(qtbot, widget)
    (message,) = new_errors(before)
    assert "could not download" in message and "put it in" in message
    assert status() == message and widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_stale_progress_never_overwrites_the_final_status(make_napari_viewer, qtbot, monkeypatch, models_dir,
                                                          shared_data):
    """Cancel while the job is still yielding: the widget says "Cancelled" and keeps saying it."""
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    viewer = make_napari_viewer()
    widget, engine_function, status, _ = segment_setup(viewer, shared_data)

    def chatty(*_args, **_kwargs):
        for i in range(10_000):
            yield Progress("tiles", i, 10_000)
            time.sleep(0.001)
        raise AssertionError("should have been stopped")

    inject(monkeypatch, engine_function, chatty)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.jobs.progress_bar.value() > 5, timeout=30_000)
    widget.cancel_button.click()
    assert not widget.jobs.running and widget.run_button.isEnabled()
    final = status()
    value = widget.jobs.progress_bar.value()
    qtbot.wait(300)  # queued events of the cancelled job arrive now
    assert status() == final == "Cancelled; no layers were changed."
    assert widget.jobs.progress_bar.value() == value and widget.jobs.progress_bar.format() == "cancelled"


def test_a_damaged_user_model_is_listed_as_broken_with_the_reason(make_napari_viewer, models_dir):
    """A truncated model file must not vanish from the model lists without a word."""
    from qtpy.QtCore import Qt

    from cellzoo._napari.finetune_widget import FinetuneWidget
    from cellzoo._napari.segment_widget import SegmentWidget

    good = (models_dir / "tiny.safetensors").read_bytes()
    (models_dir / "half-saved.safetensors").write_bytes(good[:20])  # cut inside the header
    viewer = make_napari_viewer()
    segment, finetune = SegmentWidget(viewer), FinetuneWidget(viewer)
    for combo in (segment.model_combo, finetune.base_model):
        texts = [combo.itemText(i) for i in range(combo.count())]
        assert "half-saved  [broken]" in texts, texts
        index = texts.index("half-saved  [broken]")
        reason = combo.itemData(index, Qt.ItemDataRole.ToolTipRole)
        assert "half-saved cannot be used" in reason and "delete" in reason
        assert not combo.model().item(index).isEnabled()  # cannot be picked
        assert combo.currentData() is not None and combo.model().item(combo.currentIndex()).isEnabled()
        assert any("tiny" in t and "broken" not in t for t in texts)


def test_finetune_cancel_is_ready_within_a_second_and_the_thread_still_ends_cleanly(
        make_napari_viewer, qtbot, monkeypatch, models_dir, shared_data):
    """Steps of a real training take longer than the cancel grace here (256-px tiles, batch 4): the
    widget is ready at once, the abandoned thread stops after its step and leaves no model."""
    import tempfile
    from pathlib import Path

    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    scratch = Path(tempfile.mkdtemp())
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    viewer = make_napari_viewer()
    widget, _, status, _ = finetune_setup(viewer, shared_data)
    widget.steps.setValue(200)
    widget.crop.setValue(256)
    widget.batch_size.setValue(4)
    job = widget.run()
    qtbot.waitUntil(lambda: widget.jobs.progress_bar.format().startswith("step"), timeout=300_000)
    clicked = time.perf_counter()
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: not job.running, timeout=5_000)
    assert time.perf_counter() - clicked < 1.0
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert job.state in ("cancelled", "done") and "Cancel" in status() + widget.jobs.progress_bar.format()
    qtbot.waitUntil(lambda: job.thread_done, timeout=300_000)
    assert [p.name for p in models_dir.iterdir()] == ["tiny.safetensors"]  # no evaluation finished: no model
    assert not list(scratch.glob("cellzoo-finetune-*"))


def test_segmenting_the_same_image_again_warns_nothing(make_napari_viewer, monkeypatch, models_dir, shared_data):
    """The second result replaces the layers' data and clears their undo history without napari's
    FutureWarning about private attributes (Labels._reset_history)."""
    import warnings

    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    from napari.utils._proxies import PublicOnlyProxy

    viewer = make_napari_viewer()
    # napari hands plugin widgets this proxy: private attributes read through it warn
    widget, _, status, succeeded = segment_setup(PublicOnlyProxy(viewer), shared_data)
    widget.run_button.click()
    assert succeeded(), status()
    layer = viewer.layers["cells instances"]
    layer.paint((5, 5), 99)  # an undo step that the new result makes meaningless
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        widget.run_button.click()
    assert succeeded(), status()
    before = np.asarray(layer.data).copy()
    layer.undo()  # nothing to undo: the history was cleared
    np.testing.assert_array_equal(np.asarray(layer.data), before)


def test_finetune_in_its_own_process_reports_the_childs_failure_and_then_trains(
        make_napari_viewer, qtbot, monkeypatch, models_dir, shared_data, tmp_path):
    """The default: the fine-tuning job runs in a child process (its own GIL). A real failure there — a
    training-set entry whose labels vanished after the folder was added — reaches the widget as the same
    error with its message, the widget is ready again, and the next run trains in a child and registers
    the model."""
    from cellzoo._napari._worker import job_processes
    from cellzoo.annotate.training_set import TrainingSetWriter
    from cellzoo.data.io import read_image, read_labels
    from cellzoo.data.samples import sample_image_path, sample_labels_path

    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    monkeypatch.delenv("CELLZOO_JOB_PROCESS", raising=False)
    assert job_processes()
    viewer = make_napari_viewer()
    widget, _, status, succeeded = finetune_setup(viewer, shared_data)
    image, labels = read_image(sample_image_path()), read_labels(sample_labels_path())
    folder = tmp_path / "set"
    name = TrainingSetWriter(folder).add(image[128:256, :128], labels[128:256, :128])
    assert widget.add_folder(folder)
    (folder / "labels" / f"{name}.tif").unlink()
    before = len(notification_manager.records)
    run_and_wait(qtbot, widget)
    assert_ready_after_failure(widget, status(), "is missing", before)
    widget.folders.clear()
    before = len(notification_manager.records)
    run_and_wait(qtbot, widget)
    assert new_errors(before) == [] and succeeded(), status()
    assert widget.outcome.saved_path.parent == models_dir and widget.outcome.steps_done == 2
