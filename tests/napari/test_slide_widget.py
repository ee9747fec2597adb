"""Whole slides in a real napari window: opened lazily as a multiscale layer, a field of view / drawn
rectangle / the whole slide segmented in the background into an OME-Zarr store shown as multiscale Labels."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slide"))
from test_slide import write_pyramid  # noqa: E402

from cellzoo._napari._reader import get_reader  # noqa: E402
from cellzoo._napari.segment_widget import SegmentWidget  # noqa: E402
from cellzoo.data import load_shared_dataset  # noqa: E402
from cellzoo.slide import read_slide_labels  # noqa: E402


@pytest.fixture(scope="module")
def slide_file(shared_data, tmp_path_factory):
    data = load_shared_dataset("monuseg2018", "test", root=shared_data)
    tiles = [data[i].image[:512, :512] for i in range(4)]
    mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    return write_pyramid(tmp_path_factory.mktemp("gui_slide") / "biopsy.tif", mosaic)


def _run(widget, qtbot):
    widget.device_combo.setCurrentText("cpu")
    assert widget.validate(), widget.image_combo.toolTip()
    widget.run()
    qtbot.waitUntil(lambda: widget._job is not None and not widget._job.running, timeout=240_000)
    return widget.last_result


def test_a_slide_opens_lazily_and_a_drawn_rectangle_is_segmented(make_napari_viewer, qtbot, slide_file, tmp_path):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    layer = widget.open_slide(slide_file)
    assert layer.multiscale and [a.shape for a in layer.data] == [(1024, 1024, 3), (512, 512, 3), (256, 256, 3)]
    assert type(layer.data[0]).__name__ == "Array"  # dask: nothing read until drawn
    assert widget.image_combo.currentText() == "biopsy" and widget.slide_area.isVisibleTo(widget)
    widget.slide_out.setText(str(tmp_path / "results"))

    widget.slide_area.setCurrentIndex(widget.slide_area.findData("rect"))
    assert not widget.validate() and "rectangle" in widget.slide_area.toolTip()
    # a rectangle over the top-left 300×400 µm-scaled pixels (the layer's scale is 0.25 µm/px)
    viewer.add_shapes([np.array([[0, 0], [0, 100], [75, 100], [75, 0]])], shape_type="rectangle", name="area")
    result = _run(widget, qtbot)
    assert "nuclei in" in widget.status_label.text(), widget.status_label.text()
    labels_layer = viewer.layers["biopsy instances"]
    assert labels_layer.multiscale and tuple(labels_layer.scale) == tuple(layer.scale)
    labels = read_slide_labels(result["slide_result"].store)
    assert labels.shape == (1024, 1024) and result["count"] > 20
    ys, xs = np.nonzero(labels)
    # nuclei centred in the rectangle (300 × 400 px): none beyond it but their own extent
    assert ys.max() < 300 + 40 and xs.max() < 400 + 40 and labels[600:, 600:].max() == 0

    widget.slide_area.setCurrentIndex(widget.slide_area.findData("all"))
    inserted = []
    viewer.layers.events.inserted.connect(lambda event: inserted.append(event.value.name))
    whole = _run(widget, qtbot)
    # the store was shown while it was written, then replaced by the finished one
    assert inserted == ["biopsy instances (in progress)", "biopsy instances"]
    assert whole["count"] > 3 * result["count"]
    assert whole["slide_result"].store != result["slide_result"].store  # a new store per run: nothing overwritten
    assert [layer.name for layer in viewer.layers] == ["biopsy", "area", "biopsy instances"]


def test_the_field_of_view_is_what_the_canvas_shows(make_napari_viewer, qtbot, slide_file, tmp_path):
    from cellzoo._napari._slides import canvas_size, field_of_view

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    layer = widget.open_slide(slide_file)
    viewer.reset_view()
    assert field_of_view(layer, viewer) == (0, 0, 1024, 1024)  # all of it in view
    # centre on level-0 pixel (300, 700) (world = pixel × 0.25 µm), zoomed so that the canvas spans 200 px
    viewer.camera.center = (300 * 0.25, 700 * 0.25)
    height, width = canvas_size(viewer)
    viewer.camera.zoom = max(height, width) / (200 * 0.25)
    y0, x0, y1, x1 = field_of_view(layer, viewer)
    assert max(y1 - y0, x1 - x0) == pytest.approx(200, abs=2)
    assert (y0 + y1) / 2 == pytest.approx(300, abs=2) and (x0 + x1) / 2 == pytest.approx(700, abs=2)
    widget.slide_out.setText(str(tmp_path / "results"))
    result = _run(widget, qtbot)
    labels = read_slide_labels(result["slide_result"].store)
    ys, xs = np.nonzero(labels)
    assert result["count"] > 3 and ys.min() > y0 - 40 and ys.max() < y1 + 40 and xs.min() > x0 - 40


def test_the_reader_opens_a_pyramidal_tiff_as_a_slide(slide_file):
    reader = get_reader(str(slide_file))
    assert reader is not None
    (data, kwargs, kind), = reader(str(slide_file))
    assert kind == "image" and kwargs["multiscale"] and len(data) == 3 and kwargs["scale"] == (0.25, 0.25)


def test_cancel_leaves_no_layer_and_no_files(make_napari_viewer, qtbot, slide_file, tmp_path):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.open_slide(slide_file)
    out = tmp_path / "results"
    widget.slide_out.setText(str(out))
    widget.slide_area.setCurrentIndex(widget.slide_area.findData("all"))
    widget.device_combo.setCurrentText("cpu")
    widget.run()
    qtbot.waitUntil(lambda: any("in progress" in layer.name for layer in viewer.layers), timeout=120_000)
    widget.cancel()
    assert widget.run_button.isEnabled()  # ready at once
    qtbot.waitUntil(lambda: widget._job.thread_done, timeout=120_000)
    qtbot.wait(200)
    assert [layer.name for layer in viewer.layers] == ["biopsy"]
    assert not out.exists() or list(out.iterdir()) == []
