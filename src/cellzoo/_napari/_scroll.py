"""Dock widgets that fit small screens: the content scrolls instead of making the window taller."""
from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

#: the dock may shrink to this height; below the content's own height it scrolls
MIN_SCROLL_HEIGHT = 160


class FittingScrollArea(QScrollArea):
    """A scroll area that asks for its content's full size but can shrink to a small height.

    QScrollArea's own size hint is capped at about 24 text lines, which squeezes docks that have room;
    its minimum is the frame only, which lets the content be cut sideways. Here the width never drops
    below what the content needs (no horizontal scrolling) and only the height gives way.
    """

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
