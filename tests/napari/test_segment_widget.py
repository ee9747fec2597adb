"""Segment widget in a real napari viewer (Xvfb) with a real (tiny, untrained) RepSNet from the user zoo."""
import time

import numpy as np
import pytest
import torch
from qtpy.QtCore import QTimer
from skimage import io

from cellzoo._napari.segment_widget import SegmentWidget
from cellzoo.annotate import instance_table
from cellzoo.infer import segment
from cellzoo.models import build_model

CONSEP_NAMES = ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]
CONSEP_COLORS = ["#000000", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """A small RepSNet saved as the user model 'tiny-he' in a private model folder."""
    from cellzoo.zoo.catalog import register_model

    monkeypatch.setenv("CELLZOO_MODELS", str(tmp_path / "models"))
    torch.manual_seed(0)
    model = build_model("repsnet", {"variant": "S", "filters": [8, 16, 32, 64], "num_classes": 5,
                                    "class_names": CONSEP_NAMES})
    register_model(model, "tiny-he", {"class_colors": CONSEP_COLORS})
    return model.eval()


def foreground_params(model, image):
    """Thresholds under which the untrained net yields objects (the 70th percentile of its
    foreground probability), typed into the advanced fields like a user tuning them would."""
    with torch.no_grad():
        prob = model(model.preprocess(image.astype(np.float32))[None])["nucleus"].softmax(1)[0, 1].numpy()
    return {"foreground_threshold": float(np.percentile(prob, 70)), "boundary_threshold": 100.0, "min_size": 10}


@pytest.fixture
def patch(shared_data):
    return io.imread(shared_data / "consep" / "test" / "images" / "test_1_000.jpg")


def make_widget(viewer, model_name="tiny-he"):
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(model_name))
    return widget


def type_params(widget, params):
    for key, value in params.items():
        widget._param_fields[key].setText(repr(value))


def test_threaded_run_outputs_both_layers(make_napari_viewer, qtbot, tiny_model, patch, monkeypatch):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    viewer = make_napari_viewer()
    image = viewer.add_image(patch, name="patch", scale=(0.25, 0.25), translate=(10.0, 20.0))
    widget = make_widget(viewer)
    assert "tiny-he  [your model]" in [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    params = foreground_params(tiny_model, patch)
    type_params(widget, params)
    assert widget.run_button.isEnabled()
    widget.run_button.click()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()  # UI stays live meanwhile
    qtbot.waitUntil(lambda: "patch instances" in viewer.layers, timeout=120_000)
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)

    inst, cls = viewer.layers["patch instances"], viewer.layers["patch classes"]
    for layer in (inst, cls):
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        assert layer.data.shape == patch.shape[:2]
    # same result as calling the engine directly with the same settings
    expected = segment(tiny_model, patch, device="cpu", params=params)
    assert "scale" not in widget.status_label.text()  # scale 1: nothing to report
    assert expected.count > 0
    np.testing.assert_array_equal(inst.data, expected.labels)
    # features: one row per instance, the documented columns, values from the label map itself
    table = inst.features
    assert {"label", "class", "class_name", "area", "centroid_y", "centroid_x", "score"} <= set(table.columns)
    reference = instance_table(np.asarray(inst.data), np.asarray(cls.data), CONSEP_NAMES, expected.scores)
    for column in ("label", "class", "area"):
        np.testing.assert_array_equal(table[column].to_numpy(), reference[column])
    np.testing.assert_allclose(table["centroid_x"], reference["centroid_x"])
    np.testing.assert_allclose(table["score"], [expected.scores[i] for i in reference["label"]])
    assert set(table["class_name"]) <= set(CONSEP_NAMES[1:])
    # the class layer: one class per instance, fixed colours from the model's metadata
    for label, klass in zip(table["label"], table["class"]):
        assert set(np.unique(cls.data[inst.data == label])) == {klass}
    np.testing.assert_allclose(cls.colormap.map(2), [214 / 255, 39 / 255, 40 / 255, 1.0], atol=1e-6)
    np.testing.assert_allclose(cls.colormap.map(0)[3], 0.0)
    legend = [w.text() for w in widget.legend_box.findChildren(type(widget.status_label)) if w.objectName()]
    assert legend == [f"{k}  {name}" for k, name in enumerate(CONSEP_NAMES[1:], start=1)]
    # what ran, precision included (bf16 only on CPUs with native bf16)
    assert widget.device_label.text() == f"device used: cpu, {widget.last_result['results'][0].meta['precision']}"
    assert widget.device_label.text() in ("device used: cpu, bf16", "device used: cpu, fp32")
    assert f"{expected.count} instances" in widget.status_label.text()


def test_cancel_during_segmentation_leaves_no_layers(make_napari_viewer, qtbot, tiny_model, shared_data, monkeypatch):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    viewer = make_napari_viewer()
    big = io.imread(shared_data / "monuseg2018" / "images" / "test" /
                    sorted(p.name for p in (shared_data / "monuseg2018" / "images" / "test").iterdir())[0])
    viewer.add_image(np.tile(big, (2, 2, 1)), name="slide")  # 2000² in 128-px tiles: hundreds of tiles
    widget = make_widget(viewer)
    widget.tile_spin.setValue(128)  # many tiles, so there is time to cancel between them
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget._job is not None and widget._job.running))
    timer.start(20)
    widget.run_button.click()
    # the Qt event loop keeps running while the model works (the UI stays responsive): the timer ticks
    bar = widget.jobs.progress_bar
    qtbot.waitUntil(lambda: "tiles" in bar.format() and bar.value() >= 1 and sum(ticks) >= 3, timeout=120_000)
    clicked = time.perf_counter()
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget._job is not None and not widget._job.running, timeout=120_000)
    assert time.perf_counter() - clicked < 1.0  # ready again at once; the thread stops at its next tile
    timer.stop()
    qtbot.waitUntil(lambda: widget._job.thread_done, timeout=120_000)
    assert widget._job.state == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["slide"]
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert "Cancelled" in widget.status_label.text()


def test_invalid_fields_block_run(make_napari_viewer, tiny_model, monkeypatch):
    viewer = make_napari_viewer()
    widget = make_widget(viewer)
    assert not widget.run_button.isEnabled()  # no image yet
    assert "Open an image" in widget.image_combo.toolTip() and widget.image_combo.styleSheet()
    viewer.add_image(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), name="noise")
    assert widget.run_button.isEnabled() and not widget.image_combo.styleSheet()

    widget.tile_spin.setValue(32)
    assert not widget.run_button.isEnabled() and "too small" in widget.tile_spin.toolTip()
    widget.tile_spin.setValue(0)
    field = widget._param_fields["foreground_threshold"]
    field.setText("high")
    assert not widget.run_button.isEnabled() and "not a number" in field.toolTip()
    field.setText("1.5")
    assert not widget.run_button.isEnabled() and "between 0 and 1" in field.toolTip()
    widget.restore_button.click()
    assert field.text() == "0.5" and widget.run_button.isEnabled() and not field.styleSheet()
    widget.scale_combo.setCurrentText("twice")
    assert not widget.run_button.isEnabled() and "not a number" in widget.scale_combo.toolTip()
    widget.scale_combo.setCurrentText("50")
    assert not widget.run_button.isEnabled() and "out of range" in widget.scale_combo.toolTip()
    widget.scale_combo.setCurrentText("1.5")
    assert widget.run_button.isEnabled() and widget.settings()["scale"] == "1.5"
    widget.scale_combo.setCurrentText("model default")
    assert widget.settings()["scale"] is None
    if not torch.cuda.is_available():
        widget.device_combo.setCurrentText("cuda")
        assert not widget.run_button.isEnabled() and "CUDA" in widget.device_combo.toolTip()
        widget.device_combo.setCurrentText("auto")
    missing = [widget.model_combo.itemData(i) for i in range(widget.model_combo.count())
               if widget.model_combo.itemText(i).endswith("[missing]")]
    if missing:  # registry models whose weights are not shipped in this checkout
        widget.model_combo.setCurrentIndex(widget.model_combo.findData(missing[0]))
        assert not widget.run_button.isEnabled() and "not available" in widget.model_combo.toolTip()
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("tiny-he"))
    assert widget.run_button.isEnabled()


def test_engine_error_becomes_a_notification(make_napari_viewer, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    shown = []
    monkeypatch.setattr("cellzoo._napari._worker.notify_error", shown.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), name="noise")
    widget = make_widget(viewer)
    (tmp_path / "models" / "tiny-he.safetensors").write_bytes(b"not a model any more")
    widget.run_button.click()
    assert len(shown) == 1 and shown[0].startswith("Segmenting noise failed")
    assert [layer.name for layer in viewer.layers] == ["noise"]
    assert widget.run_button.isEnabled()


def test_stack_whole_and_current_plane(make_napari_viewer, tiny_model, shared_data, monkeypatch):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    root = shared_data / "dsb2018" / "test" / "images"
    plane = io.imread(sorted(root.iterdir())[0])
    plane = plane if plane.ndim == 2 else plane[..., 0]
    plane = plane[:128, :128]
    stack = np.stack([plane, np.flipud(plane), np.fliplr(plane)])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    widget = make_widget(viewer)
    assert widget.scope_combo.isEnabled() and widget.channel_combo.currentText() == "single channel"
    params = foreground_params(tiny_model, np.repeat(plane[..., None], 3, axis=2))
    type_params(widget, params)
    widget.scope_combo.setCurrentIndex(widget.scope_combo.findData("stack"))
    widget.run_button.click()
    inst = viewer.layers["stack instances"]
    assert inst.data.shape == stack.shape
    offset = 0
    for k in range(3):
        expected = segment(tiny_model, stack[k], device="cpu", params=params).labels
        got = np.asarray(inst.data[k])
        np.testing.assert_array_equal(got > 0, expected > 0)
        if expected.any():
            assert got[got > 0].min() == offset + 1  # ids continue across planes
            offset = int(got.max())
    assert sorted(set(inst.features["plane"])) == [k for k in range(3) if inst.data[k].any()]
    assert inst.features["label"].is_unique

    before = np.asarray(inst.data).copy()
    viewer.dims.set_current_step(0, 2)
    widget.scope_combo.setCurrentIndex(widget.scope_combo.findData("plane"))
    type_params(widget, {"min_size": 100_000})  # nothing survives: plane 2 becomes empty
    widget.run_button.click()
    assert not inst.data[2].any()
    np.testing.assert_array_equal(inst.data[:2], before[:2])
