"""Correct widget: edit an instances Labels layer and keep its class layer and features table in sync.

Mouse (on the instances layer, best in pan/zoom mode, key 6 or Z):
  Shift+click  delete the instance under the cursor
  Ctrl+click   add / remove the instance under the cursor to / from the selection
  Alt+click    place a split seed (a point in the ``<layer> split seeds`` Points layer)
Keys (instances layer active):
  Shift+M merge the selection · Shift+S split by the seeds · Shift+C give the selection the chosen class
  Shift+N draw a new instance (next free id, paint brush) · Ctrl+Z undo · Ctrl+Shift+Z redo

Every edit is computed by :mod:`cellzoo.annotate` on the current plane and written with
``Labels.data_setitem`` inside ``Labels.block_history()``, so it lands in napari's own undo
history; the widget groups the instance and class layer changes of one edit so that one undo
reverts both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout, QLabel, QLineEdit,
                            QPushButton, QSpinBox, QVBoxLayout, QWidget)

from cellzoo import annotate

from ._layers import META_KEY, class_colormap, class_colors_for, features_frame, update_plane_features
from ._worker import mark_field

KEYS = {
    "Shift-M": "merge the selected instances",
    "Shift-S": "split the instance under the seed points",
    "Shift-C": "give the selected instances the chosen class",
    "Shift-N": "draw a new instance with the next free id",
    "Control-Z": "undo",
    "Control-Shift-Z": "redo",
}
HELP = ("<b>Mouse</b> (pan/zoom mode): Shift+click delete · Ctrl+click select · Alt+click split seed<br>"
        "<b>Keys</b>: Shift+M merge · Shift+S split · Shift+C class · Shift+N new · Ctrl+Z undo · Ctrl+Shift+Z redo")


@dataclass
class _Edit:
    """One undo step: the plane, the layers whose napari history holds it, the score table around it."""

    plane: tuple[int, ...]
    layers: list
    scores_before: dict[int, float]
    scores_after: dict[int, float]


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
        form.addRow("instances", self.layer_combo)
        form.addRow("image", self.image_combo)
        form.addRow("class", self.class_combo)
        grid = QGridLayout()
        grid.addWidget(button("delete", "Delete selected", self.delete_selected, "Remove the selected instances"), 0, 0)
        grid.addWidget(button("merge", "Merge (⇧M)", self.merge_selected, "Merge the selected instances"), 0, 1)
        grid.addWidget(button("split", "Split (⇧S)", self.split_at_seeds,
                              "Split the instance that holds the seed points (Alt+click to place them)"), 1, 0)
        grid.addWidget(button("new", "New instance (⇧N)", self.new_instance,
                              "Paint a new instance with the next free id"), 1, 1)
        grid.addWidget(button("assign", "Set class (⇧C)", self.assign_class_to_selection,
                              "Give the selected instances the chosen class"), 2, 0)
        grid.addWidget(button("fill", "Fill holes", self.fill_holes, "Fill holes inside instances"), 2, 1)
        grid.addWidget(button("relabel", "Relabel 1..N", self.relabel_sequential,
                              "Renumber the instances of this plane 1..N"), 3, 0)
        grid.addWidget(button("clear", "Clear selection", self.clear_selection, "Forget the selection and seeds"), 3, 1)
        small = QHBoxLayout()
        small.addWidget(button("small", "Remove objects under", self.remove_small,
                               "Delete instances smaller than the given number of pixels"))
        small.addWidget(self.min_size_spin)
        history = QHBoxLayout()
        history.addWidget(button("undo", "Undo", self.undo, "Undo the last edit (Ctrl+Z)"))
        history.addWidget(button("redo", "Redo", self.redo, "Redo (Ctrl+Shift+Z)"))
        folder = QHBoxLayout()
        folder.addWidget(self.folder_edit)
        folder.addWidget(browse)
        help_label = QLabel(HELP)
        help_label.setWordWrap(True)

        layout = QVBoxLayout(self)
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
        if "index" not in layer.features.columns or len(layer.features) == 0 and np.asarray(layer.data).any():
            self._update_features(None)

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
        self.clear_selection()

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
        """A new segmentation replaced the layer's data: earlier edits and the selection no longer apply."""
        if self._applying or self.layer is None:
            return
        self._undo, self._redo = [], []
        self.clear_selection()
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

    def _write(self, layer, new_plane: np.ndarray, plane: tuple[int, ...]) -> bool:
        old = np.asarray(layer.data[plane] if plane else layer.data)
        changed = old != new_plane
        if not changed.any():
            return False
        rows, cols = np.nonzero(changed)
        index = tuple(np.full(rows.shape, p, dtype=np.intp) for p in plane) + (rows, cols)
        values = new_plane[changed].astype(layer.data.dtype, copy=False)
        with layer.block_history():
            if layer.visible:
                layer.data_setitem(index, values)
            else:
                # napari does not slice hidden layers, and data_setitem updates the (empty) slice view;
                # record the same history atom data_setitem would and write the data directly
                layer._save_history((index, np.array(layer.data[index], copy=True), values))
                layer.data[index] = values
        if not layer.visible:
            layer.refresh()
        return True

    def apply(self, labels: np.ndarray | None = None, classes: np.ndarray | None = None, what: str = "",
              scores: dict[int, float] | None = None) -> bool:
        """Write a new labels and/or classes plane as one undoable edit; keep classes and table in sync.

        Instances whose pixels change lose their model score (NaN in the table: edited by hand),
        unless ``scores`` gives the new score table (relabelling keeps each object's score).
        """
        plane = self.plane()
        scores_before = dict(self.info["scores"])
        if labels is not None and classes is None:
            classes = annotate.sync_classes(labels, self.classes_plane(), default_class=self.current_class())
        if labels is not None:
            if scores is None:
                old = self.labels_plane()
                touched = set(np.unique(old[old != labels]).tolist()) | set(np.unique(labels[old != labels]).tolist())
                scores = {k: v for k, v in scores_before.items() if k not in touched}
            self.info["scores"] = scores
        changed = []
        self._applying = True
        try:
            if labels is not None and self._write(self.layer, labels, plane):
                changed.append(self.layer)
            if classes is not None and self._write(self.classes_layer, classes, plane):
                changed.append(self.classes_layer)
        finally:
            self._applying = False
        if not changed:
            self.info["scores"] = scores_before
            self.status_label.setText(f"{what}: nothing changed.")
            return False
        self._undo.append(_Edit(plane, changed, scores_before, dict(self.info["scores"])))
        self._redo.clear()
        self._update_features(plane)
        self.selection &= set(np.unique(self.labels_plane()).tolist())
        self._show_selection()
        self.status_label.setText(f"{what} done." if what else "")
        return True

    def _update_features(self, plane: tuple[int, ...] | None) -> None:
        layer = self.layer
        classes = np.asarray(self.classes_layer.data) if self.classes_layer is not None else None
        if plane is None and layer.ndim > 2:
            layer.features = features_frame(np.asarray(layer.data), classes, self.info["class_names"],
                                            self.info["scores"])
            return
        update_plane_features(layer, plane or (), classes)

    def _on_user_paint(self, event=None) -> None:
        """The user painted / erased / filled with napari's own tools: bring the class layer along.

        napari emits ``paint`` when it records the history, which for a single brush dab is just
        before it writes the pixels, so the sync runs once control returns to the event loop.
        """
        if self._applying or self.layer is None:
            return
        QTimer.singleShot(0, self._sync_after_user_paint)

    def _sync_after_user_paint(self) -> None:
        if self.layer is None:
            return
        plane = self.plane()
        classes = annotate.sync_classes(self.labels_plane(), self.classes_plane(), default_class=self.current_class())
        self._applying = True
        try:
            changed_classes = self._write(self.classes_layer, classes, plane)
        finally:
            self._applying = False
        scores = dict(self.info["scores"])
        self._undo.append(_Edit(plane, [self.layer, self.classes_layer] if changed_classes else [self.layer],
                                scores, scores))
        self._redo.clear()
        self._update_features(plane)

    def _on_user_paint_classes(self, event=None) -> None:
        if self._applying or self.layer is None:
            return
        plane = self.plane()
        scores = dict(self.info["scores"])
        self._undo.append(_Edit(plane, [self.classes_layer], scores, scores))
        self._redo.clear()
        self._update_features(plane)

    def undo(self) -> None:
        """Undo the last edit on the instances and class layers (napari's history)."""
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
            for layer in (reversed(edit.layers) if undoing else edit.layers):
                layer.undo() if undoing else layer.redo()
        finally:
            self._applying = False
        target.append(edit)
        self.info["scores"] = dict(edit.scores_before if undoing else edit.scores_after)
        self._update_features(edit.plane)
        self.selection &= set(np.unique(self.labels_plane()).tolist())
        self._show_selection()
        self.status_label.setText("Undone." if undoing else "Redone.")

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
        label = int(self.labels_plane()[row, col])
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

    def _show_selection(self) -> None:
        text = ", ".join(str(i) for i in sorted(self.selection)) or "none"
        self.selection_label.setText(f"selected: {text}")
        if self.layer is None:
            return
        if self.selection:
            self.layer.selected_label = max(self.selection)
        # a thick yellow outline around every selected instance (napari highlights only one label)
        mask = np.zeros(self.layer.data.shape, np.uint8)
        if self.selection:
            plane = self.plane()
            mask[plane] = np.isin(self.labels_plane(), sorted(self.selection))
        overlay = self._selection_layer
        if overlay is None or overlay not in self.viewer.layers:
            if not self.selection:
                return
            overlay = self._selection_layer = self.viewer.add_labels(
                mask, name=f"{self.layer.name} selection", opacity=1.0, blending="translucent_no_depth",
                colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "yellow"}),
                scale=self.layer.scale, translate=self.layer.translate,
                metadata={META_KEY: {"instances_layer": self.layer.name, "role": "selection"}})
            overlay.contour = 3
            overlay.editable = False
            self.viewer.layers.selection.active = self.layer
        else:
            overlay.data = mask

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

    def delete(self, label: int) -> None:
        self.apply(annotate.delete_instance(self.labels_plane(), label), what=f"Delete {label}")

    def delete_selected(self) -> None:
        labels = self.labels_plane()
        for label in self._require_selection(1, "delete it"):
            labels = annotate.delete_instance(labels, label)
        self.apply(labels, what="Delete")
        self.selection.clear()
        self._show_selection()

    def merge_selected(self) -> None:
        ids = self._require_selection(2, "merge them")
        self.apply(annotate.merge_instances(self.labels_plane(), ids), what=f"Merge {ids}")
        self.selection = {ids[0]}
        self._show_selection()

    def split_at_seeds(self) -> None:
        seeds = self._seeds_in_plane()
        labels = self.labels_plane()
        if len(seeds) < 2:
            raise ValueError("place at least two seed points with Alt+click inside the instance to split.")
        rows, cols = np.round(seeds).astype(int).T
        inside = (rows >= 0) & (rows < labels.shape[0]) & (cols >= 0) & (cols < labels.shape[1])
        under = set(labels[rows[inside], cols[inside]].tolist()) - {0}
        if len(under) != 1 or not inside.all() or 0 in labels[rows, cols]:
            raise ValueError("all seed points must lie inside one and the same instance; "
                             f"they touch {sorted(under) or 'no instance'}.")
        (label,) = under
        image = None
        if self.image_layer is not None:
            data = self.image_layer.data
            plane = self.plane()
            image = np.asarray(data[plane] if plane else data)
            if image.shape[:2] != labels.shape:
                image = None  # a differently shaped image cannot guide the cut: use the object shape
        self.apply(annotate.split_instance(labels, label, seeds, image=image), what=f"Split {label}")
        self.clear_selection()

    def new_instance(self) -> None:
        """Select the next free id and the paint brush, so the next stroke draws a new instance."""
        layer = self.layer
        layer.selected_label = annotate.next_free_id(np.asarray(layer.data))
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.status_label.setText(f"Paint instance {layer.selected_label} (class {self.class_combo.currentText()}).")

    def assign_class_to_selection(self) -> None:
        ids = self._require_selection(1, "set its class")
        classes = annotate.assign_class(self.labels_plane(), self.classes_plane(), ids, self.current_class())
        self.apply(classes=classes, what=f"Class {self.class_combo.currentText()} for {ids}")

    def fill_holes(self) -> None:
        self.apply(annotate.fill_holes(self.labels_plane()), what="Fill holes")

    def remove_small(self) -> None:
        size = self.min_size_spin.value()
        self.apply(annotate.remove_small(self.labels_plane(), size), what=f"Remove objects under {size} px")

    def relabel_sequential(self) -> None:
        labels = self.labels_plane()
        relabeled = annotate.relabel_sequential(labels)
        if self.layer.ndim > 2:  # keep ids unique across planes: continue after the other planes' maximum
            others = np.asarray(self.layer.data).copy()
            others[self.plane()] = 0
            relabeled = np.where(relabeled > 0, relabeled + int(others.max()), 0).astype(np.int32)
        mapping = {int(old): int(new) for old, new in zip(labels[labels > 0], relabeled[labels > 0])}
        scores = {mapping.get(k, k): v for k, v in self.info["scores"].items()}
        self.apply(relabeled, what="Relabel", scores=scores)

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
        self.status_label.setText(f"Saved '{entry}' to {writer.folder} ({len(writer.entries())} images in the set).")
        return entry
