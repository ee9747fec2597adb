"""The two output layers of a segmentation, shared by the Segment and Correct widgets.

``<image> instances``: Labels with instance ids and a ``features`` table (one row per instance:
label, class, class_name, area, centroid_y, centroid_x, score; plus ``plane`` for stacks).
``<image> classes``: Labels with class ids and a fixed colour per class (DirectLabelColormap).
Both copy the image's scale and translate. ``instances.metadata["cellzoo"]`` links them and carries
the class names, colours, model name and per-instance scores, so the Correct widget can keep the
class layer and the table in sync after edits.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import numpy as np
import pandas as pd
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

from cellzoo.annotate import COLUMNS, InstanceIndex, instance_table

META_KEY = "cellzoo"
#: used for classes without a colour in the model's metadata (matplotlib tab10 without grey)
FALLBACK_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                   "#bcbd22", "#17becf"]


def class_colors_for(class_names: Sequence[str], class_colors: Sequence[str] | None) -> list[str]:
    """One hex colour per class id (index 0 = background), filling gaps from a fixed palette."""
    colors = list(class_colors or [])
    out = []
    for k in range(len(class_names)):
        if k < len(colors) and colors[k]:
            out.append(colors[k])
        else:
            out.append("#000000" if k == 0 else FALLBACK_COLORS[(k - 1) % len(FALLBACK_COLORS)])
    return out


def class_colormap(class_colors: Sequence[str]) -> DirectLabelColormap:
    """Background (0) and unknown ids transparent; class ``k`` painted ``class_colors[k]``."""
    color_dict: dict[int | None, Any] = {None: np.zeros(4), 0: np.zeros(4)}
    for k, color in enumerate(class_colors):
        if k > 0:
            color_dict[k] = color
    return DirectLabelColormap(color_dict=color_dict)


def features_frame(labels: np.ndarray, classes: np.ndarray | None, class_names: Sequence[str],
                   scores: dict[int, float] | None = None) -> pd.DataFrame:
    """The features table for a 2-D map or, per plane with a ``plane`` column, for a stack."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return _frame(instance_table(labels, classes, class_names, scores))
    planes = []
    for index in np.ndindex(*labels.shape[:-2]):
        frame = plane_frame(labels[index], None if classes is None else classes[index], class_names, scores,
                            index[0] if len(index) == 1 else index)
        planes.append(frame)
    frame = pd.concat(planes, ignore_index=True) if planes else pd.DataFrame(columns=[*COLUMNS, "index", "plane"])
    return frame


def index_frame(index: InstanceIndex, class_names: Sequence[str], scores: dict[int, float] | None = None) -> pd.DataFrame:
    """The features table of a 2-D layer from its instance index (no pass over the pixels)."""
    return _frame(index.table(class_names, scores))


def _frame(table: dict[str, np.ndarray]) -> pd.DataFrame:
    frame = pd.DataFrame(table)
    # napari maps a label value to its features row through an "index" column
    frame["index"] = frame["label"]
    return frame


def plane_frame(labels: np.ndarray, classes: np.ndarray | None, class_names: Sequence[str],
                scores: dict[int, float] | None, plane: Any) -> pd.DataFrame:
    frame = _frame(instance_table(labels, classes, class_names, scores))
    frame["plane"] = [plane] * len(frame)
    return frame


def update_plane_features(layer, plane_index: tuple[int, ...], classes: np.ndarray | None) -> None:
    """Recompute the features rows of one plane (all rows for a 2-D layer) after an edit."""
    info = layer.metadata.get(META_KEY, {})
    names = info.get("class_names", ["background", "nucleus"])
    scores = info.get("scores", {})
    if not plane_index:
        layer.features = features_frame(np.asarray(layer.data), classes, names, scores)
        return
    plane = plane_index[0] if len(plane_index) == 1 else plane_index
    fresh = plane_frame(np.asarray(layer.data[plane_index]), None if classes is None else classes[plane_index],
                        names, scores, plane)
    old = layer.features
    keep = old[[p != plane for p in old["plane"]]] if "plane" in old.columns else old.iloc[0:0]
    layer.features = pd.concat([keep, fresh], ignore_index=True).sort_values("label", ignore_index=True)


def set_plane_rows(layer, plane_index: tuple[int, ...], index: InstanceIndex) -> None:
    """Features rows of one plane (all rows of a 2-D layer) from that plane's instance index.

    No pass over the pixels: the Correct widget keeps the index up to date after each edit.
    """
    info = layer.metadata.get(META_KEY, {})
    names = info.get("class_names", ["background", "nucleus"])
    fresh = index_frame(index, names, info.get("scores", {}))
    if not plane_index:
        layer.features = fresh
        return
    plane = plane_index[0] if len(plane_index) == 1 else plane_index
    fresh["plane"] = [plane] * len(fresh)
    old = layer.features
    keep = old[[p != plane for p in old["plane"]]] if "plane" in old.columns else old.iloc[0:0]
    layer.features = pd.concat([keep, fresh], ignore_index=True).sort_values("label", ignore_index=True)


def _show_layer(layer) -> None:
    layer.visible = True


def _geometry(image_layer) -> dict[str, Any]:
    ndim = image_layer.ndim
    return {"scale": tuple(image_layer.scale[-ndim:]), "translate": tuple(image_layer.translate[-ndim:])}


def show_segmentation(viewer, image_layer, labels: np.ndarray, classes: np.ndarray, *,
                      class_names: Sequence[str], class_colors: Sequence[str] | None,
                      scores: dict[int, float] | None = None, model: str | None = None,
                      meta: dict[str, Any] | None = None, index: InstanceIndex | None = None):
    """Add (or replace the data of) ``<image> instances`` and ``<image> classes``; return both layers.

    ``labels``/``classes`` have the image's spatial shape (planes × H × W for stacks). With the
    ``index`` of a 2-D result (:func:`cellzoo.annotate.prepare_instances`, made in the worker
    thread; ``classes`` then already uniform per instance) nothing here passes over the pixels: the
    main thread only hands ready arrays to napari. The index is kept in the layer's metadata
    (``"index"``) for the Correct widget.
    """
    class_names = list(class_names)
    colors = class_colors_for(class_names, class_colors)
    geometry = _geometry(image_layer)
    labels = np.asarray(labels, dtype=np.int32)
    classes = np.asarray(classes, dtype=np.uint8)
    info = {"class_names": class_names, "class_colors": colors, "scores": dict(scores or {}),
            "model": model, "image_layer": image_layer.name,
            "classes_layer": f"{image_layer.name} classes", **(meta or {})}
    if index is not None and labels.ndim == 2 and tuple(index.shape) == labels.shape:
        features = index_frame(index, class_names, info["scores"])
        info["index"], info["index_data_id"] = index, id(labels)  # valid while the layer holds this array
    else:
        features = features_frame(labels, classes, class_names, info["scores"])

    inst_name, cls_name = f"{image_layer.name} instances", f"{image_layer.name} classes"
    if cls_name in viewer.layers:
        cls_layer = viewer.layers[cls_name]
        cls_layer.data = classes
        cls_layer.colormap = class_colormap(colors)
        cls_layer.scale, cls_layer.translate = geometry["scale"], geometry["translate"]
    else:
        # tagged from the start: widgets listening to the layer list must not take it for an instances layer
        cls_layer = viewer.add_labels(classes, name=cls_name, colormap=class_colormap(colors), opacity=0.55,
                                      metadata={META_KEY: {"instances_layer": inst_name, "class_names": class_names,
                                                           "class_colors": colors}}, **geometry)
    if inst_name in viewer.layers:
        inst_layer = viewer.layers[inst_name]
        inst_layer.metadata[META_KEY] = info  # first: listeners of the data event read it
        inst_layer.data = labels
        inst_layer.scale, inst_layer.translate = geometry["scale"], geometry["translate"]
        inst_layer.features = features
    else:
        # outlines over the class colours: each object's class and its extent are visible at once.
        # Added hidden with its contour set, and shown in the next turn of the event loop: napari then
        # draws it once (not once before and once after the contour), and the GUI breathes between
        # napari's two long steps (creating the layers, outlining every object of the image)
        inst_layer = viewer.add_labels(labels, name=inst_name, features=features, opacity=1.0,
                                       metadata={META_KEY: info}, visible=False, **geometry)
        inst_layer.contour = 2
        QTimer.singleShot(1, partial(_show_layer, inst_layer))  # a timer: runs after the pending repaint
    cls_layer.metadata[META_KEY] = {"instances_layer": inst_name, "class_names": class_names, "class_colors": colors}
    # a new result starts a new editing session: earlier undo steps refer to other data. napari has no
    # public call for this, but switching editing off clears a Labels layer's undo history (the
    # private Labels._reset_history warns through the viewer proxy that plugins get)
    for layer in (inst_layer, cls_layer):
        if layer.editable:
            mode = layer.mode
            layer.editable = False
            layer.editable = True
            layer.mode = mode
    return inst_layer, cls_layer


def legend_widget(class_names: Sequence[str], class_colors: Sequence[str], parent: QWidget | None = None) -> QWidget:
    """Rows of colour swatch + class name (background omitted)."""
    widget = QWidget(parent)
    grid = QGridLayout(widget)
    grid.setContentsMargins(0, 0, 0, 0)
    for row, (name, color) in enumerate(zip(class_names[1:], class_colors[1:])):
        swatch = QLabel()
        swatch.setFixedSize(14, 14)
        swatch.setStyleSheet(f"background-color: {color}; border: 1px solid #888;")
        swatch.setToolTip(color)
        grid.addWidget(swatch, row, 0)
        label = QLabel(f"{row + 1}  {name}")
        label.setObjectName(f"legend_{row + 1}")
        grid.addWidget(label, row, 1)
    grid.setColumnStretch(1, 1)
    return widget
