"""The dock widgets fit a 1280×800 screen: the window is not pushed taller and Run can be reached."""
from __future__ import annotations

import pytest

from cellzoo._napari.evaluate_widget import EvaluateWidget
from cellzoo._napari.finetune_widget import FinetuneWidget
from cellzoo._napari.segment_widget import SegmentWidget

SCREEN = (1280, 800)


def _reachable(qtbot, widget, child) -> bool:
    """Scrolled into view if needed, ``child`` shows on screen (a part of it is not covered or clipped)."""
    from qtpy.QtWidgets import QScrollArea

    area = child.parentWidget()
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parentWidget()
    if area is not None:
        area.ensureWidgetVisible(child, 0, 0)
    qtbot.wait(50)
    shown = child.visibleRegion().boundingRect()
    # on screen, and not cut at the sides (the dock is as wide as the content needs)
    return child.isVisible() and not shown.isEmpty() and shown.width() == child.width()


@pytest.fixture
def small_window(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(*SCREEN)
    qtbot.wait(100)
    return viewer


def test_segment_finetune_and_evaluate_fit_1280x800(small_window, qtbot):
    viewer = small_window
    window = viewer.window._qt_window
    segment, finetune, evaluate = SegmentWidget(viewer), FinetuneWidget(viewer), EvaluateWidget(viewer)
    for widget, name in ((segment, "Segment"), (finetune, "Fine-tune"), (evaluate, "Evaluate")):
        viewer.window.add_dock_widget(widget, name=name, area="right")
    segment.advanced.expand(animate=False)  # the tallest state of the Segment form
    window.resize(*SCREEN)
    qtbot.wait(300)
    assert window.height() <= SCREEN[1] and window.width() <= SCREEN[0]
    for widget in (segment, finetune, evaluate):
        assert _reachable(qtbot, widget, widget.run_button), type(widget).__name__
    assert _reachable(qtbot, segment, segment.refresh_button)  # the right end of the model row
    assert _reachable(qtbot, segment, segment.tta_check)
    # Fine-tune docked under Segment: its plot and status can be scrolled to as well
    assert _reachable(qtbot, finetune, finetune.status)
    assert _reachable(qtbot, finetune, finetune.plot)
    assert _reachable(qtbot, evaluate, evaluate.table)


@pytest.mark.parametrize("make", [SegmentWidget, FinetuneWidget, EvaluateWidget])
def test_each_widget_alone_keeps_run_on_screen(small_window, qtbot, make):
    viewer = small_window
    window = viewer.window._qt_window
    widget = make(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    window.resize(*SCREEN)
    qtbot.wait(200)
    assert window.height() <= SCREEN[1]
    assert _reachable(qtbot, widget, widget.run_button)


def test_finetune_docked_under_segment_gets_a_fair_share(small_window, qtbot):
    """Qt gave a dock added under another only its minimum height (Fine-tune: 160 of ~800 px)."""
    viewer = small_window
    segment, finetune = SegmentWidget(viewer), FinetuneWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    viewer.window.add_dock_widget(finetune, name="Fine-tune", area="right")
    qtbot.wait(300)
    column = segment.height() + finetune.height()
    assert finetune.height() >= 0.4 * column and segment.height() >= 0.4 * column
    assert _reachable(qtbot, segment, segment.run_button) and _reachable(qtbot, finetune, finetune.run_button)
