"""Segment widget in a real viewer: it follows the image the user opens or selects, warns about a
model/image mismatch and refuses images without content, all before Run."""
from __future__ import annotations

import numpy as np
import pytest

from cellzoo._napari.segment_widget import SegmentWidget
from cellzoo.data.io import read_image


@pytest.fixture
def viewer_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    return viewer, widget


def _choose_model(widget, name):
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(name))
    assert widget.model_combo.currentData() == name


def _he(shared_data):
    return sorted((shared_data / "monuseg2018" / "images" / "test").glob("*.png"))[0]


def _fluo(shared_data):
    return sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0]


def test_the_image_field_follows_opened_and_selected_images(viewer_widget, shared_data):
    viewer, widget = viewer_widget
    first = viewer.add_image(read_image(_fluo(shared_data)), name="first")
    viewer.add_image(read_image(_fluo(shared_data))[::-1], name="second")
    assert widget.image_combo.currentText() == "second"
    viewer.layers.selection.active = first  # a click in the layer list
    assert widget.image_combo.currentText() == "first"
    viewer.add_labels(np.zeros(first.data.shape, np.int32), name="labels")  # not an image: no change
    assert widget.image_combo.currentText() == "first"
    [opened] = viewer.open(str(_he(shared_data)))  # File > Open (napari's reader)
    assert widget.image_combo.currentText() == opened.name
    viewer.layers.selection.active = viewer.layers["labels"]
    assert widget.image_combo.currentText() == opened.name


def test_model_and_image_mismatch_is_warned_about_both_ways(viewer_widget, shared_data):
    viewer, widget = viewer_widget
    viewer.add_image(read_image(_he(shared_data)), name="H&E")
    _choose_model(widget, "cellzoo-fluo")
    assert widget.warning_label.isVisibleTo(widget)
    assert "trained on fluorescence" in widget.warning_label.text()
    assert widget.run_button.isEnabled()  # a warning, not a refusal
    _choose_model(widget, "cellzoo-he")
    assert not widget.warning_label.isVisibleTo(widget)
    viewer.add_image(read_image(_fluo(shared_data)), name="DAPI")
    assert widget.image_combo.currentText() == "DAPI"
    assert widget.warning_label.isVisibleTo(widget) and "looks like fluorescence" in widget.warning_label.text()
    _choose_model(widget, "cellzoo-fluo")
    assert not widget.warning_label.isVisibleTo(widget)


@pytest.mark.parametrize("data, words", [
    (np.zeros((64, 64), np.uint8), "every pixel is 0"),
    (np.ones((1, 1), np.uint8), "1×1 px"),
    (np.full((64, 64), np.nan, np.float32), "NaN"),
    (np.full((64, 64, 3), 200, np.uint8), "value 200"),
])
def test_images_without_content_are_refused_before_run(viewer_widget, data, words):
    viewer, widget = viewer_widget
    viewer.add_image(data, name="empty", rgb=data.ndim == 3)
    assert not widget.run_button.isEnabled()
    assert widget.warning_label.isVisibleTo(widget) and words in widget.warning_label.text()
    assert words in widget.image_combo.toolTip() and widget.image_combo.styleSheet()
    widget.run()  # nothing happens: no job, no layers
    assert widget._job is None and [layer.name for layer in viewer.layers] == ["empty"]


def test_a_blank_plane_of_a_stack_is_refused_only_on_its_own(viewer_widget, qtbot, shared_data):
    viewer, widget = viewer_widget
    fluo = read_image(_fluo(shared_data))
    viewer.add_image(np.stack([np.zeros_like(fluo), fluo]), name="stack")
    _choose_model(widget, "cellzoo-fluo")
    viewer.dims.set_current_step(0, 0)
    qtbot.wait(300)  # the checks run once the slider rests
    assert not widget.run_button.isEnabled() and "every pixel is 0" in widget.warning_label.text()
    widget.scope_combo.setCurrentIndex(widget.scope_combo.findData("stack"))
    assert widget.run_button.isEnabled()
    widget.scope_combo.setCurrentIndex(widget.scope_combo.findData("plane"))
    viewer.dims.set_current_step(0, 1)  # the checks follow the plane on screen
    qtbot.wait(300)
    assert widget.run_button.isEnabled() and not widget.warning_label.isVisibleTo(widget)
