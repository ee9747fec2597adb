"""Correct widget: edit an instances Labels layer and keep its class layer and features table in sync.

Mouse (on the instances layer, best in pan/zoom mode, key 6 or Z):
  Shift+click  delete the instance under the cursor
  Ctrl+click   add / remove the instance under the cursor to / from the selection
  Alt+click    place a split seed (a point in the ``<layer> split seeds`` Points layer)
Keys (instances layer active):
  Shift+M merge the selection · Shift+S split by the seeds · Shift+C give the selection the chosen class
  Shift+N draw a new instance (next free id, paint brush) · Ctrl+Z undo · Ctrl+Shift+Z redo

Every edit costs in proportion to the objects it touches, not to the image: an
:class:`~cellzoo.annotate.InstanceIndex` per plane (bounding box, area, centroid, class of each id;
made by the Segment job or once on first use) tells where each object is, :mod:`cellzoo.annotate`
plans the edit as patches of those boxes, and only the changed pixels are written with
``Labels.data_setitem`` (napari then redraws only that region). The widget keeps its own undo
history of the touched boxes (old and new values of both layers, so one undo reverts both); napari's
brush, eraser and fill strokes on the instances layer are taken into it as well. The features table
is rebuilt from the index, and the selection is outlined in an overlay layer, object by object.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QFrame, QGridLayout, QHBoxLayout, QLabel,
                            QLineEdit, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)
from scipy import ndimage
# skimage loads these lazily; loading them with the widget spares the first Split a 0.6 s stall
from skimage.filters import sobel  # noqa: F401
from skimage.segmentation import watershed  # noqa: F401

from cellzoo import annotate
from cellzoo.annotate.index import InstanceIndex, pad_window, union_window, window_size

from ._layers import META_KEY, class_colormap, class_colors_for, features_frame, set_plane_rows
from ._worker import mark_field

KEYS = {
    "Shift-M": "merge the selected instances",
    "Shift-S": "split the instance under the seed points",
    "Shift-C": "give the selected instances the chosen class",
    "Shift-N": "draw a new instance with the next free id",
    "Control-Z": "undo",
    "Control-Shift-Z": "redo",
}
HELP = ("<b>Mouse</b> (pan/zoom mode): ⇧click delete · Ctrl+click select · Alt+click split seed · "
        "<b>Keys</b>: Ctrl+Z undo · Ctrl+⇧Z redo")


#: an edit whose boxes cover more than this share of the plane re-indexes the whole plane
_REBUILD_SHARE = 0.25
#: pixels around the selection that the outline overlay covers, so that nearby selections do not move it
_OVERLAY_MARGIN = 192


@dataclass
class _Change:
    """The values of one box of one layer before and after an edit (``key`` indexes the layer's data)."""

    layer: Any
    key: tuple[slice, ...]
    old: np.ndarray
    new: np.ndarray


@dataclass
class _Edit:
    """One undo step: the plane, the boxes it changed in both layers, the score table around it."""

    plane: tuple[int, ...]
    changes: list[_Change]
    scores_before: dict[int, float]
    scores_after: dict[int, float]
    what: str = ""


class _PlaneView:
    """``view[window]`` reads just that window of one plane of a layer's data (no copy of the plane)."""

    def __init__(self, data, plane: tuple[int, ...]) -> None:
        self.data, self.plane = data, plane

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[len(self.plane):])

    def __getitem__(self, window) -> np.ndarray:
        return np.asarray(self.data[(*self.plane, *window)])


@contextmanager
def _outside_napari_history(layer):
    """``data_setitem`` without an entry in napari's own undo history (this widget keeps the history)."""
    if not hasattr(layer, "_staged_history") or not hasattr(layer, "_block_history"):
        yield  # another napari version: its history also records the edit, which does no harm
        return
    saved = layer._block_history, layer._staged_history
    layer._block_history, layer._staged_history = True, []
    try:
        yield
    finally:
        layer._block_history, layer._staged_history = saved


def _set_pixels(layer, key: tuple[slice, ...], new: np.ndarray, old: np.ndarray | None = None) -> bool:
    """Write ``new`` into ``layer.data[key]``, touching only the pixels that differ; True if any did."""
    if old is None:
        old = np.asarray(layer.data[key])
    changed = old != new
    if not changed.any():
        return False
    where = np.nonzero(changed)
    index = tuple(axis + s.start for axis, s in zip(where, key))
    values = np.asarray(new[changed]).astype(layer.data.dtype, copy=False)
    if layer.visible:
        with _outside_napari_history(layer):
            layer.data_setitem(index, values)  # napari redraws only this region
    else:
        # napari does not slice hidden layers (data_setitem would update an empty view); it slices the
        # data afresh when the layer is shown again
        layer.data[index] = values
    return True


def default_training_folder() -> Path:
    return Path(os.environ.get("CELLZOO_TRAINING_SET", Path.home() / "cellzoo-training-set"))


class CorrectWidget(QWidget):
    """Dock widget with the correction tools for one instances layer."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layer = None           # the instances Labels layer being edited
        self.classes_layer = None
        self.selection: set[int] = set()
        self._undo: list[_Edit] = []
        self._redo: list[_Edit] = []
        self._applying = False
        self._seeds_layer = None
        self._selection_layer = None
        self._indexes: dict[tuple[int, ...], InstanceIndex] = {}
        self._overlay_box: tuple[tuple[int, ...], tuple[slice, slice]] | None = None  # plane, window covered
        self._pending_paint: list[tuple[Any, list]] = []

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The instances layer to correct (e.g. '<image> instances').")
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image the instances belong to: used to split along visible edges "
                                    "and saved with 'Add to training set'.")
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class given to the selected instances (Shift+C) and to new instances.")
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(1, 1_000_000)
        self.min_size_spin.setValue(30)
        self.min_size_spin.setSuffix(" px")
        self.selection_label = QLabel("selected: none")
        self.selection_label.setWordWrap(True)
        self.folder_edit = QLineEdit(str(default_training_folder()))
        self.folder_edit.setToolTip("Folder of the training set (images/, labels/, classes/, manifest.json).")
        browse = QPushButton("…")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        self.buttons: dict[str, QPushButton] = {}

        def button(key: str, text: str, slot: Callable, tip: str) -> QPushButton:
            btn = QPushButton(text)
            btn.setToolTip(tip)
            btn.clicked.connect(lambda *_: self._guarded(slot))
            self.buttons[key] = btn
            return btn

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("instances", self.layer_combo)
        form.addRow("image", self.image_combo)
        form.addRow("class", self.class_combo)
        grid = QGridLayout()
        grid.setSpacing(3)
        tools = [
            ("delete", "Delete", self.delete_selected, "Remove the selected instances (or Shift+click one)"),
            ("merge", "Merge ⇧M", self.merge_selected, "Merge the selected instances"),
            ("split", "Split ⇧S", self.split_at_seeds,
             "Split the instance that holds the seed points (Alt+click to place them)"),
            ("new", "New ⇧N", self.new_instance, "Paint a new instance with the next free id and the chosen class"),
            ("assign", "Set class ⇧C", self.assign_class_to_selection, "Give the selected instances the chosen class"),
            ("clear", "Clear sel.", self.clear_selection, "Forget the selection and the split seeds"),
            ("fill", "Fill holes", self.fill_holes, "Fill holes inside instances"),
            ("relabel", "Relabel 1..N", self.relabel_sequential, "Renumber the instances of this plane 1..N"),
        ]
        for k, (key, text, slot, tip) in enumerate(tools):
            grid.addWidget(button(key, text, slot, tip), k // 3, k % 3)
        history = QHBoxLayout()
        history.addWidget(button("undo", "Undo", self.undo, "Undo the last edit (Ctrl+Z)"))
        history.addWidget(button("redo", "Redo", self.redo, "Redo (Ctrl+Shift+Z)"))
        small = QHBoxLayout()
        small.addWidget(button("small", "Remove objects under", self.remove_small,
                               "Delete instances smaller than the given number of pixels"))
        small.addWidget(self.min_size_spin)
        folder = QHBoxLayout()
        folder.addWidget(self.folder_edit)
        folder.addWidget(browse)
        help_label = QLabel(HELP)
        help_label.setWordWrap(True)

        # everything in a scroll area: the dock never makes the window taller than a small screen
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(form)
        layout.addWidget(help_label)
        layout.addWidget(self.selection_label)
        layout.addLayout(grid)
        layout.addLayout(small)
        layout.addLayout(history)
        layout.addWidget(QLabel("<b>Training set</b>"))
        layout.addLayout(folder)
        layout.addWidget(button("add", "Add to training set", self.add_to_training_set,
                                "Save image + instances + classes of this plane into the folder"))
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)

        self._refresh_layers()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.reordered):
            event.connect(self._refresh_layers)
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.folder_edit.textChanged.connect(self.validate)
        self._on_layer_changed()

    # ------------------------------------------------------------------ layers
    def _labels_layers(self):
        from napari.layers import Labels

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Labels) and "instances_layer" not in layer.metadata.get(META_KEY, {})]

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image

        for combo, layers in ((self.layer_combo, self._labels_layers()),
                              (self.image_combo, [la for la in self.viewer.layers if isinstance(la, Image)])):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([layer.name for layer in layers])
            index = combo.findText(current)
            if index < 0 and combo is self.layer_combo:
                # prefer the newest segmentation output
                names = [la.name for la in layers]
                tagged = [n for n in names if META_KEY in self.viewer.layers[n].metadata]
                index = names.index(tagged[-1]) if tagged else combo.count() - 1
            combo.setCurrentIndex(max(index, 0) if combo.count() else -1)
            combo.blockSignals(False)
        if self.layer_combo.currentText() != getattr(self.layer, "name", None):
            self._on_layer_changed()
        else:
            self.validate()

    def _on_layer_changed(self, *_) -> None:
        name = self.layer_combo.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        if layer is self.layer:
            self.validate()
            return
        self._detach()
        self.layer = layer
        if layer is not None:
            self._attach(layer)
        self.validate()

    def _attach(self, layer) -> None:
        info = layer.metadata.setdefault(META_KEY, {})
        names = list(info.get("class_names") or ["background", "nucleus"])
        colors = class_colors_for(names, info.get("class_colors"))
        info.setdefault("class_names", names)
        info.setdefault("class_colors", colors)
        info.setdefault("scores", {})
        cls_name = info.get("classes_layer") or f"{layer.name.removesuffix(' instances')} classes"
        if cls_name in self.viewer.layers and self.viewer.layers[cls_name].data.shape == layer.data.shape:
            self.classes_layer = self.viewer.layers[cls_name]
        else:  # a plain Labels layer (e.g. drawn by hand): give it a class layer, every instance class 1
            classes = (np.asarray(layer.data) > 0).astype(np.uint8)
            self.classes_layer = self.viewer.add_labels(
                classes, name=cls_name, colormap=class_colormap(colors), opacity=0.4, visible=False,
                scale=layer.scale, translate=layer.translate,
                metadata={META_KEY: {"instances_layer": layer.name, "class_names": names, "class_colors": colors}})
            self.viewer.layers.selection.active = layer
        info["classes_layer"] = self.classes_layer.name
        image_name = info.get("image_layer")
        if image_name and self.image_combo.findText(image_name) >= 0:
            self.image_combo.setCurrentIndex(self.image_combo.findText(image_name))
        self._indexes = {}
        if "index" not in layer.features.columns or len(layer.features) == 0 and np.asarray(layer.data).any():
            names = info["class_names"]
            layer.features = features_frame(np.asarray(layer.data), np.asarray(self.classes_layer.data), names,
                                            info["scores"])

        self._fill_class_combo()

        layer.mouse_drag_callbacks.append(self._on_click)
        bindings: dict[str, Callable] = {"Shift-M": self.merge_selected, "Shift-S": self.split_at_seeds,
                                         "Shift-C": self.assign_class_to_selection, "Shift-N": self.new_instance,
                                         "Control-Z": self.undo, "Control-Shift-Z": self.redo}
        for target in (layer, self.classes_layer):
            for key, slot in bindings.items():
                if target is self.classes_layer and key not in ("Control-Z", "Control-Shift-Z"):
                    continue
                target.bind_key(key, self._key_handler(slot), overwrite=True)
        layer.events.paint.connect(self._on_user_paint)
        layer.events.data.connect(self._on_data_replaced)
        self.classes_layer.events.paint.connect(self._on_user_paint_classes)
        self._undo, self._redo = [], []
        self.selection = set()
        # the outline overlay exists before the first Ctrl+click (adding a layer is a long stall in
        # napari); made once control is back in the event loop, after the result layers are shown
        self._overlay_tries = 0
        QTimer.singleShot(1, self._ensure_selection_layer_soon)
        self._show_selection()

    def _detach(self) -> None:
        layer = self.layer
        if layer is None:
            return
        if self._on_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_click)
        for target in (layer, self.classes_layer):
            if target is None:
                continue
            for key in KEYS:
                target.bind_key(key, None)  # None unbinds
        layer.events.paint.disconnect(self._on_user_paint)
        layer.events.data.disconnect(self._on_data_replaced)
        if self.classes_layer is not None:
            self.classes_layer.events.paint.disconnect(self._on_user_paint_classes)
        self._remove_seeds_layer()
        self._remove_selection_layer()
        self._indexes = {}
        self._pending_paint = []
        self.layer = self.classes_layer = None

    def _fill_class_combo(self) -> None:
        current = self.class_combo.currentData()
        self.class_combo.clear()
        info = self.info
        for k, (cls, color) in enumerate(zip(info["class_names"], info["class_colors"])):
            if k == 0:
                continue
            pixmap = QPixmap(12, 12)
            pixmap.fill(QColor(color))
            self.class_combo.addItem(QIcon(pixmap), f"{k}  {cls}", k)
        index = self.class_combo.findData(current)
        self.class_combo.setCurrentIndex(max(index, 0))

    def _on_data_replaced(self, event=None) -> None:
        """A new segmentation replaced the layer's data: earlier edits, the selection, the index no longer apply."""
        if self._applying or self.layer is None:
            return
        self._undo, self._redo = [], []
        self._indexes = {}
        if self._overlay_box is not None and self._overlay_box[1][0].stop > self.layer.data.shape[-2] or \
                self._overlay_box is not None and self._overlay_box[1][1].stop > self.layer.data.shape[-1]:
            self._overlay_box = None  # a smaller image now: the overlay moves on the next selection
        if self._selection_layer is not None and self._selection_layer.ndim != self.layer.ndim:
            self._remove_selection_layer()
            self._overlay_tries = 0
            QTimer.singleShot(1, self._ensure_selection_layer_soon)
        self.clear_selection()  # erases the outlines box by box
        self._fill_class_combo()

    def _key_handler(self, slot: Callable) -> Callable:
        def handler(_layer):
            self._guarded(slot)
        handler.__doc__ = slot.__doc__
        return handler

    @property
    def info(self) -> dict[str, Any]:
        return self.layer.metadata[META_KEY]

    @property
    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    # ------------------------------------------------------------------ planes
    def plane(self) -> tuple[int, ...]:
        """Index of the plane on screen in the layer's leading axes (() for 2-D layers)."""
        layer = self.layer
        lead = layer.ndim - 2
        if lead <= 0:
            return ()
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim:])
        return tuple(int(min(max(round(float(p)), 0), s - 1)) for p, s in zip(point[:lead], layer.data.shape[:lead]))

    def labels_plane(self) -> np.ndarray:
        plane = self.plane()
        return np.asarray(self.layer.data[plane] if plane else self.layer.data)

    def classes_plane(self) -> np.ndarray:
        plane = self.plane()
        return np.asarray(self.classes_layer.data[plane] if plane else self.classes_layer.data)

    def _views(self, plane: tuple[int, ...]) -> tuple[_PlaneView, _PlaneView]:
        return _PlaneView(self.layer.data, plane), _PlaneView(self.classes_layer.data, plane)

    # ------------------------------------------------------------------ instance index
    def index(self, plane: tuple[int, ...] | None = None) -> InstanceIndex:
        """The instance index of a plane (the one on screen by default), made on first use.

        A 2-D result from the Segment widget brings its index (made in the job) in the layer metadata.
        """
        plane = self.plane() if plane is None else plane
        index = self._indexes.get(plane)
        if index is None:
            shape = tuple(self.layer.data.shape[-2:])
            carried = self.info.get("index") if not plane else None
            # only the index made for this very array (a script may have replaced the data since)
            if (isinstance(carried, InstanceIndex) and tuple(carried.shape) == shape
                    and self.info.get("index_data_id") == id(self.layer.data)):
                index = carried
            else:
                index = self._build_index(plane)
            self._indexes[plane] = index
        return index

    def _build_index(self, plane: tuple[int, ...]) -> InstanceIndex:
        index = InstanceIndex.build(self._plane_array(self.layer, plane), self._plane_array(self.classes_layer, plane),
                                    default_class=self.current_class())
        self._indexes[plane] = index
        if not plane:
            self.info["index"], self.info["index_data_id"] = index, id(self.layer.data)
        return index

    @staticmethod
    def _plane_array(layer, plane: tuple[int, ...]) -> np.ndarray:
        return np.asarray(layer.data[plane] if plane else layer.data)

    def _checked_index(self, ids) -> InstanceIndex:
        """The index, re-made if it disagrees with the pixels of the instances about to be edited
        (the layer was changed behind the widget's back, e.g. by a script)."""
        plane = self.plane()
        index = self.index(plane)
        labels = _PlaneView(self.layer.data, plane)
        for label in ids:
            label = int(label)
            if label not in index or int((labels[index.bbox(label)] == label).sum()) != index.area_of(label):
                return self._build_index(plane)
        return index

    # ------------------------------------------------------------------ applying edits
    def _guarded(self, slot: Callable) -> None:
        """Run a tool; user mistakes (nothing selected, seeds outside, ...) become a notification."""
        from napari.utils.notifications import show_warning

        if self.layer is None:
            show_warning("Choose an instances layer in the Correct widget first.")
            return
        try:
            slot()
        except (ValueError, OSError) as exc:
            self.status_label.setText(str(exc))
            show_warning(str(exc))

    def apply_patches(self, patches: list, what: str = "", scores: dict[int, float] | None = None) -> bool:
        """Write patches (:class:`cellzoo.annotate.Patch`) of the plane on screen as one undoable edit.

        Only the changed pixels of each patch's box are written; the index, the features table and the
        selection outline follow. Instances whose pixels change lose their model score (NaN in the
        table: edited by hand), unless ``scores`` gives the new score table.
        """
        plane = self.plane()
        lead = tuple(slice(p, p + 1) for p in plane)
        changes: list[_Change] = []
        self._applying = True
        try:
            for patch in patches:
                for layer, values in ((self.layer, patch.labels), (self.classes_layer, patch.classes)):
                    if values is None:
                        continue
                    key = (*lead, *patch.window)
                    old = np.array(layer.data[key], copy=True)
                    new = np.asarray(values, dtype=layer.data.dtype).reshape(old.shape)
                    if _set_pixels(layer, key, new, old):
                        changes.append(_Change(layer, key, old, new.copy()))
        finally:
            self._applying = False
        if not changes:
            self.status_label.setText(f"{what}: nothing changed." if what else "Nothing changed.")
            return False
        return self._record(plane, changes, what, scores)

    def _record(self, plane: tuple[int, ...], changes: list[_Change], what: str,
                scores: dict[int, float] | None = None) -> bool:
        scores_before = dict(self.info["scores"])
        touched = self._reindex(plane, changes)
        if scores is None:
            scores = {k: v for k, v in scores_before.items() if k not in touched}
        self.info["scores"] = scores
        self._undo.append(_Edit(plane, changes, scores_before, dict(scores), what))
        self._redo.clear()
        self._after_edit(plane, touched)
        self.status_label.setText(f"{what} done." if what else "")
        return True

    def _reindex(self, plane: tuple[int, ...], changes: list[_Change], undoing: bool = False) -> set[int]:
        """Bring the plane's index up to date after ``changes``; return the ids whose pixels changed."""
        index = self.index(plane)
        n_lead = len(plane)
        label_changes, class_windows = [], []
        for change in changes:
            window = change.key[n_lead:]
            before, after = (change.new, change.old) if undoing else (change.old, change.new)
            before, after = before.reshape(before.shape[-2:]), after.reshape(after.shape[-2:])
            if change.layer is self.layer:
                label_changes.append((window, before, after))
            else:
                class_windows.append((window, before, after))
        plane_size = int(np.prod(self.layer.data.shape[-2:]))
        if sum(window_size(c[0]) for c in label_changes) > _REBUILD_SHARE * plane_size:
            touched: set[int] = set()
            for window, before, after in label_changes:
                changed = before != after
                touched |= set(np.unique(before[changed]).tolist()) | set(np.unique(after[changed]).tolist())
            self._build_index(plane)
            return touched - {0}
        labels, classes = self._views(plane)
        touched = set(index.search_windows(label_changes))
        search = index.search_windows(label_changes, labels, class_windows)
        index.refresh(labels, classes, search, new_class=self.current_class())
        return touched

    def _after_edit(self, plane: tuple[int, ...], touched: set[int]) -> None:
        set_plane_rows(self.layer, plane, self.index(plane))
        index = self.index(plane)
        self.selection = {i for i in self.selection if i in index}
        self._show_selection(redraw=touched)

    def _update_features(self, plane: tuple[int, ...] | None) -> None:
        """Rebuild the features rows of a plane (the one on screen by default) from its index."""
        set_plane_rows(self.layer, self.plane() if plane is None else plane, self.index(plane))

    def _on_user_paint(self, event=None) -> None:
        """The user painted / erased / filled with napari's own tools: bring the class layer along.

        napari emits ``paint`` when it records the history, which for a single brush dab is just
        before it writes the pixels, so the sync runs once control returns to the event loop.
        """
        if self._applying or self.layer is None:
            return
        item = list(getattr(event, "value", None) or [])
        self._pending_paint.append((self.layer, item))
        QTimer.singleShot(0, self._sync_after_user_paint)

    def _on_user_paint_classes(self, event=None) -> None:
        if self._applying or self.layer is None:
            return
        item = list(getattr(event, "value", None) or [])
        self._pending_paint.append((self.classes_layer, item))
        QTimer.singleShot(0, self._sync_after_user_paint)

    @staticmethod
    def _stroke_change(layer, item: list) -> _Change | None:
        """One box with the values before and after a napari history item (a stroke's atoms)."""
        boxes, atoms = [], []
        for atom in item:
            if hasattr(atom, "slice_key"):  # napari's mask-based paint/fill atom
                box = tuple(atom.slice_key)
                atoms.append(("mask", box, atom.mask, atom.old_values))
            else:  # (indices, old values, new values) from data_setitem
                indices, old_values, _new = atom
                indices = tuple(np.asarray(i) for i in indices)
                if indices[0].size == 0:
                    continue
                box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in indices)
                atoms.append(("fancy", box, indices, old_values))
            boxes.append(box)
        if not boxes:
            return None
        key = boxes[0]
        for box in boxes[1:]:
            key = union_window(key, box)
        new = np.array(layer.data[key], copy=True)
        old = new.copy()
        for kind, box, where, old_values in reversed(atoms):  # undo the atoms, last first, on a copy
            if kind == "mask":
                region = old[tuple(slice(b.start - k.start, b.stop - k.start) for b, k in zip(box, key))]
                if where is None:
                    region[...] = old_values
                else:
                    region[where] = old_values
            else:
                old[tuple(i - k.start for i, k in zip(where, key))] = old_values
        return _Change(layer, key, old, new)

    def _sync_after_user_paint(self) -> None:
        pending, self._pending_paint = self._pending_paint, []
        if self.layer is None:
            return
        for layer, item in pending:
            if layer is not self.layer and layer is not self.classes_layer:
                continue
            change = self._stroke_change(layer, item) if item else None
            if change is None:
                continue
            n_lead = self.layer.ndim - 2
            lead = change.key[:n_lead]
            if any(s.stop - s.start != 1 for s in lead):  # painted across planes (3-D brush): re-index those
                for plane in list(self._indexes):
                    if all(s.start <= p < s.stop for p, s in zip(plane, lead)):
                        del self._indexes[plane]
                self._undo.append(_Edit(self.plane(), [change], dict(self.info["scores"]),
                                        dict(self.info["scores"]), "Paint"))
                self._redo.clear()
                continue
            plane = tuple(s.start for s in lead)
            changes = [change]
            if layer is self.layer:
                # each painted pixel takes the class of its instance; a new instance the chosen class
                window = change.key[n_lead:]
                painted = (change.old != change.new).reshape(change.new.shape[-2:])
                labels, classes = self._views(plane)
                patch = annotate.plan_classes_after_paint(labels, classes, self.index(plane), window,
                                                          self.current_class(), painted=painted)
                old = np.array(self.classes_layer.data[change.key], copy=True)
                new = patch.classes.reshape(old.shape)
                self._applying = True
                try:
                    if _set_pixels(self.classes_layer, change.key, new, old):
                        changes.append(_Change(self.classes_layer, change.key, old, new.copy()))
                finally:
                    self._applying = False
            self._record(plane, changes, "Paint")
            self.status_label.setText("")

    def undo(self) -> None:
        """Undo the last edit on the instances and class layers."""
        self._step(self._undo, self._redo, undoing=True)

    def redo(self) -> None:
        self._step(self._redo, self._undo, undoing=False)

    def _step(self, source: list, target: list, undoing: bool) -> None:
        if not source:
            self.status_label.setText("Nothing to undo." if undoing else "Nothing to redo.")
            return
        edit = source.pop()
        self._applying = True
        try:
            for change in (reversed(edit.changes) if undoing else edit.changes):
                _set_pixels(change.layer, change.key, change.old if undoing else change.new)
        finally:
            self._applying = False
        target.append(edit)
        touched = self._reindex(edit.plane, edit.changes, undoing=undoing) if edit.plane in self._indexes else set()
        self.info["scores"] = dict(edit.scores_before if undoing else edit.scores_after)
        if edit.plane == self.plane():
            self._after_edit(edit.plane, touched)
        else:  # an edit of another plane of a stack: its table rows follow, the outlines are of this plane
            set_plane_rows(self.layer, edit.plane, self.index(edit.plane))
        self.status_label.setText(("Undone" if undoing else "Redone") + (f": {edit.what}." if edit.what else "."))

    # ------------------------------------------------------------------ mouse
    def _on_click(self, layer, event) -> None:
        modifiers = {str(getattr(m, "name", m)) for m in event.modifiers}
        if not modifiers & {"Shift", "Control", "Alt"}:
            return
        data_point = layer.world_to_data(event.position)
        plane = self.plane()
        row, col = (int(round(float(v))) for v in data_point[-2:])
        height, width = layer.data.shape[-2:]
        if not (0 <= row < height and 0 <= col < width):
            return
        label = int(np.asarray(layer.data[(*plane, row, col)]))
        if "Alt" in modifiers:
            self.add_seed((*plane, row, col))
        elif "Shift" in modifiers and label:
            self._guarded(lambda: self.delete(label))
        elif "Control" in modifiers and label:
            self.toggle_selection(label)

    # ------------------------------------------------------------------ selection and seeds
    def toggle_selection(self, label: int) -> None:
        self.selection ^= {int(label)}
        self._show_selection()

    def clear_selection(self) -> None:
        self.selection = set()
        if self._seeds_layer is not None:
            self._seeds_layer.data = np.zeros((0, self.layer.ndim)) if self.layer is not None else []
        self._show_selection()

    def _ensure_selection_layer_soon(self) -> None:
        """Make the overlay in a turn of its own, once the instances layer is shown (a new result is
        added hidden and shown a moment later, see ``show_segmentation``)."""
        if self.layer is None:
            return
        self._overlay_tries += 1
        if not self.layer.visible and self._overlay_tries < 40:
            QTimer.singleShot(50, self._ensure_selection_layer_soon)
            return
        QTimer.singleShot(1, self._ensure_selection_layer)
        # the split seeds' Points layer too, a turn later (its first Alt+click stalled ~1 s otherwise)
        QTimer.singleShot(20, self._ensure_seeds_layer)

    def _ensure_seeds_layer(self) -> None:
        if self.layer is not None:
            self.seeds_layer()

    def _ensure_selection_layer(self):
        """The overlay that outlines the selected instances: a small uint8 Labels layer covering only the
        box around the selection (napari renders every layer over its whole extent, so an image-sized
        overlay would slow down every redraw)."""
        if self.layer is None:
            return None
        overlay = self._selection_layer
        if overlay is None or overlay not in self.viewer.layers:
            active = self.viewer.layers.selection.active
            overlay = self._selection_layer = self.viewer.add_labels(
                np.zeros((1,) * self.layer.ndim, np.uint8), name=f"{self.layer.name} selection", opacity=1.0,
                blending="translucent_no_depth",
                colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "yellow"}),
                scale=self.layer.scale, translate=self.layer.translate,
                metadata={META_KEY: {"instances_layer": self.layer.name, "role": "selection"}})
            overlay.editable = False
            self._overlay_box = None
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
        return overlay

    def _show_selection(self, redraw: set[int] | frozenset = frozenset()) -> None:
        """Outline the selected instances of the plane on screen: a 2-3 px band inside each one's border,
        drawn in the box around the selection only (the work follows the selected objects' size)."""
        text = ", ".join(str(i) for i in sorted(self.selection)) or "none"
        self.selection_label.setText(f"selected: {text}")
        if self.layer is None:
            return
        if self.selection:
            self.layer.selected_label = max(self.selection)
        overlay = self._selection_layer
        if overlay is None or overlay not in self.viewer.layers:
            if not self.selection:
                return
            overlay = self._ensure_selection_layer()
        plane = self.plane()
        index = self.index(plane) if self.selection else None
        ids = [i for i in sorted(self.selection) if index is not None and i in index]
        box = self._overlay_box
        if ids:
            needed = None
            for label in ids:
                needed = union_window(needed, index.bbox(label))
            needed = pad_window(needed, 1, index.shape)
            if box is None or box[0] != plane or not all(
                    b.start <= n.start and n.stop <= b.stop for b, n in zip(box[1], needed)):
                # move the overlay (rare: it keeps a margin, so nearby selections are drawn in place)
                window = pad_window(needed, _OVERLAY_MARGIN, index.shape)
                offset = [*plane, window[0].start, window[1].start]
                translate = np.asarray(self.layer.translate) + np.asarray(offset) * np.asarray(self.layer.scale)
                if not np.array_equal(overlay.scale, self.layer.scale):
                    overlay.scale = self.layer.scale
                overlay.translate = translate
                overlay.data = np.zeros((1,) * len(plane) + tuple(s.stop - s.start for s in window), np.uint8)
                box = self._overlay_box = (plane, window)
        if box is None:
            return
        window = box[1]
        content = np.zeros([s.stop - s.start for s in window], np.uint8)
        labels = _PlaneView(self.layer.data, plane)
        for label in ids:
            own = pad_window(index.bbox(label), 1, index.shape)
            inside = labels[own] == label
            band = inside & ~ndimage.binary_erosion(inside, iterations=2)
            content[own[0].start - window[0].start:own[0].stop - window[0].start,
                    own[1].start - window[1].start:own[1].stop - window[1].start] |= band.astype(np.uint8)
        key = tuple(slice(0, n) for n in overlay.data.shape)
        _set_pixels(overlay, key, content.reshape(overlay.data.shape))  # only the changed pixels

    def seeds_layer(self):
        if self._seeds_layer is None or self._seeds_layer not in self.viewer.layers:
            self._seeds_layer = self.viewer.add_points(
                np.zeros((0, self.layer.ndim)), name=f"{self.layer.name} split seeds", size=6,
                face_color="yellow", border_color="black", scale=self.layer.scale, translate=self.layer.translate)
            self.viewer.layers.selection.active = self.layer
        return self._seeds_layer

    def _remove_selection_layer(self) -> None:
        if self._selection_layer is not None and self._selection_layer in self.viewer.layers:
            self.viewer.layers.remove(self._selection_layer)
        self._selection_layer = None
        self._overlay_box = None

    def _remove_seeds_layer(self) -> None:
        if self._seeds_layer is not None and self._seeds_layer in self.viewer.layers:
            self.viewer.layers.remove(self._seeds_layer)
        self._seeds_layer = None

    def add_seed(self, point) -> None:
        """Add a split seed (data coordinates of the instances layer: plane index…, row, col)."""
        seeds = self.seeds_layer()
        seeds.add(np.asarray(point, dtype=float)[None])
        self.viewer.layers.selection.active = self.layer

    def _seeds_in_plane(self) -> np.ndarray:
        if self._seeds_layer is None or len(self._seeds_layer.data) == 0:
            return np.zeros((0, 2))
        points = np.asarray(self._seeds_layer.data, dtype=float)
        plane = self.plane()
        if plane:
            on_plane = np.all(np.round(points[:, :len(plane)]) == np.asarray(plane), axis=1)
            points = points[on_plane]
        return points[:, -2:]

    # ------------------------------------------------------------------ tools
    def current_class(self) -> int:
        return int(self.class_combo.currentData() or 1)

    def _require_selection(self, minimum: int, action: str) -> list[int]:
        if len(self.selection) < minimum:
            raise ValueError(f"select {'at least ' + str(minimum) + ' instances' if minimum > 1 else 'an instance'} "
                             f"with Ctrl+click to {action}.")
        return sorted(self.selection)

    def _planned(self, plan: Callable, ids, *args, **kwargs) -> list:
        """Run a planning function of :mod:`cellzoo.annotate` on the plane on screen."""
        index = self._checked_index(ids)
        labels, classes = self._views(self.plane())
        return plan(labels, classes, index, *args, **kwargs)

    def delete(self, label: int) -> None:
        self.apply_patches(self._planned(annotate.plan_delete, [label], [label]), what=f"Delete {label}")

    def delete_selected(self) -> None:
        ids = self._require_selection(1, "delete it")
        self.apply_patches(self._planned(annotate.plan_delete, ids, ids), what=f"Delete {ids}")
        self.selection.clear()
        self._show_selection()

    def merge_selected(self) -> None:
        ids = self._require_selection(2, "merge them")
        self.apply_patches(self._planned(annotate.plan_merge, ids, ids), what=f"Merge {ids}")
        self.selection = {ids[0]}
        self._show_selection(redraw={ids[0]})

    def split_at_seeds(self) -> None:
        seeds = self._seeds_in_plane()
        if len(seeds) < 2:
            raise ValueError("place at least two seed points with Alt+click inside the instance to split.")
        plane = self.plane()
        height, width = self.layer.data.shape[-2:]
        rows, cols = np.round(seeds).astype(int).T
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        values = [int(np.asarray(self.layer.data[(*plane, r, c)])) for r, c in zip(rows[inside], cols[inside])]
        under = set(values) - {0}
        if len(under) != 1 or not inside.all() or 0 in values:
            raise ValueError("all seed points must lie inside one and the same instance; "
                             f"they touch {sorted(under) or 'no instance'}.")
        (label,) = under
        image = None
        if self.image_layer is not None:
            data = self.image_layer.data
            if tuple(data.shape[len(plane):len(plane) + 2]) == (height, width):
                image = _PlaneView(data, plane)  # only the instance's box is read
        patches = self._planned(annotate.plan_split, [label], label, seeds, image=image)
        self.apply_patches(patches, what=f"Split {label}")
        self.clear_selection()

    def new_instance(self) -> None:
        """Select the next free id and the paint brush, so the next stroke draws a new instance."""
        layer = self.layer
        if layer.ndim == 2:
            layer.selected_label = self.index().next_id
        else:  # ids are unique across the planes of a stack
            layer.selected_label = annotate.next_free_id(np.asarray(layer.data))
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.status_label.setText(f"Paint instance {layer.selected_label} (class {self.class_combo.currentText()}).")

    def assign_class_to_selection(self) -> None:
        ids = self._require_selection(1, "set its class")
        patches = self._planned(annotate.plan_assign_class, ids, ids, self.current_class())
        self.apply_patches(patches, what=f"Class {self.class_combo.currentText()} for {ids}",
                           scores=dict(self.info["scores"]))

    def fill_holes(self) -> None:
        labels = self.labels_plane()
        filled = annotate.fill_holes(labels)
        changed = filled != labels
        if not changed.any():
            self.status_label.setText("Fill holes: nothing changed.")
            return
        # each filled pixel takes its instance's class
        lut = self.index().class_lookup()
        classes = self.classes_plane()
        new_classes = np.where(changed, lut[np.minimum(filled, lut.size - 1)], classes).astype(classes.dtype)
        whole = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
        self.apply_patches([annotate.Patch(whole, filled, new_classes)], what="Fill holes")

    def remove_small(self) -> None:
        size = self.min_size_spin.value()
        patches = self._planned(annotate.plan_remove_small, [], size)
        if not patches:
            self.status_label.setText(f"Remove objects under {size} px: nothing changed.")
            return
        self.apply_patches(patches, what=f"Remove objects under {size} px")

    def relabel_sequential(self) -> None:
        labels = self.labels_plane()
        relabeled = annotate.relabel_sequential(labels)
        if self.layer.ndim > 2:  # keep ids unique across planes: continue after the other planes' maximum
            others = np.asarray(self.layer.data).copy()
            others[self.plane()] = 0
            relabeled = np.where(relabeled > 0, relabeled + int(others.max()), 0).astype(np.int32)
        index = self.index()
        old_ids = index.ids()
        # an instance's new id is its new value at any one of its pixels (relabelling keeps the partition)
        new_ids = [int(relabeled[index.bbox(i)][labels[index.bbox(i)] == i][0]) for i in old_ids]
        mapping = dict(zip(old_ids.tolist(), new_ids))
        scores = {mapping.get(k, k): v for k, v in self.info["scores"].items()}
        whole = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
        self.selection = {mapping[i] for i in self.selection if i in mapping}  # the same objects, new ids
        self.apply_patches([annotate.Patch(whole, relabeled)], what="Relabel", scores=scores)

    # ------------------------------------------------------------------ training set
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Training-set folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def validate(self, *_) -> bool:
        folder = self.folder_edit.text().strip()
        reason = None
        if not folder:
            reason = "Choose a folder for the training set."
        elif Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
            reason = f"{folder} is a file; choose a folder."
        valid = mark_field(self.folder_edit, reason)
        has_layer = self.layer is not None
        for key, btn in self.buttons.items():
            btn.setEnabled(has_layer and (valid or key != "add"))
        return valid and has_layer

    def add_to_training_set(self) -> str | None:
        """Save image + instances + classes of the current plane; returns the entry name."""
        if not self.validate():
            raise ValueError("choose a training-set folder and an instances layer first.")
        image_layer = self.image_layer
        if image_layer is None:
            raise ValueError("choose the image these instances belong to (the 'image' field).")
        plane = self.plane()
        image = np.asarray(image_layer.data[plane] if plane else image_layer.data)
        name = image_layer.name + ("_" + "_".join(str(p) for p in plane) if plane else "")
        writer = annotate.TrainingSetWriter(self.folder_edit.text().strip())
        entry = writer.add(image, self.labels_plane(), self.classes_plane(), source_layer=image_layer.name,
                           model=self.info.get("model"), class_names=self.info["class_names"], name=name,
                           extra={"instances_layer": self.layer.name, "plane": list(plane)})
        done = (f"Replaced '{entry}' (the same image was added before) in" if writer.replaced
                else f"Saved '{entry}' to")
        self.status_label.setText(f"{done} {writer.folder} ({len(writer.entries())} images in the set).")
        return entry
