"""Dock widgets that fit small screens: the content scrolls instead of making the window taller."""
from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

#: the dock may shrink to this height; below the content's own height it scrolls
MIN_SCROLL_HEIGHT = 160


class FittingScrollArea(QScrollArea):
    """A scroll area that asks for its content's full size but can shrink to a small height.

    QScrollArea's own size hint is capped at about 24 text lines, which squeezes docks that have room;
    its minimum is the frame only, which lets the content be cut sideways. Here the width never drops
    below what the content needs (no horizontal scrolling) and only the height gives way.
    """

    _balanced = False

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802 (Qt name)
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        # the content sits in the viewport, outside the dock's layout chain: without this the dock keeps
        # the size hints of the empty content and cuts the filled one off at the right
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        if not self._balanced:
            self._balanced = True
            QTimer.singleShot(0, self._share_dock_column)

    def _share_dock_column(self) -> None:
        """Once, when docked: share the dock column's height with the docks above and below.

        Qt gives a dock added under another only its minimum height (Fine-tune under Segment: 160 of
        800 px); here each dock gets its content's height if all fit, else the short ones theirs and
        the others equal parts of the rest. The user's later dragging is left alone.
        """
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        window = dock.parentWidget() if dock is not None else None
        if dock is None or not isinstance(window, QMainWindow) or dock.isFloating():
            return
        area = window.dockWidgetArea(dock)
        column = [d for d in window.findChildren(QDockWidget)
                  if d.isVisible() and not d.isFloating() and window.dockWidgetArea(d) == area
                  and abs(d.x() - dock.x()) < 5 and not window.tabifiedDockWidgets(d)]
        if len(column) < 2:
            return
        column.sort(key=lambda d: d.y())
        available = sum(d.height() for d in column)
        wanted = {d: max(d.sizeHint().height(), d.minimumSizeHint().height()) for d in column}
        sizes: dict = {}
        left, pending = available, sorted(column, key=lambda d: wanted[d])
        while pending:  # water-filling: the smallest wishes are met first
            share = left // len(pending)
            d = pending.pop(0)
            sizes[d] = min(wanted[d], share)
            left -= sizes[d]
        window.resizeDocks(column, [sizes[d] for d in column], Qt.Orientation.Vertical)

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        content = self.widget()
        if content is None:
            return super().sizeHint()
        hint = content.sizeHint()
        return QSize(hint.width() + self._extra_width(), hint.height() + 2 * self.frameWidth())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        content = self.widget()
        if content is None:
            return super().minimumSizeHint()
        hint = content.minimumSizeHint()
        return QSize(hint.width() + self._extra_width(), min(hint.height(), MIN_SCROLL_HEIGHT))


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a scroll area filling it and return the layout to put the content in.

    Replaces ``layout = QVBoxLayout(widget)`` in a widget's constructor; the area is kept as
    ``widget.scroll_area``.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = FittingScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    content = QWidget()
    content.setObjectName("cellzoo_scroll_content")
    area.setWidget(content)
    outer.addWidget(area)
    widget.scroll_area = area
    return QVBoxLayout(content)
