"""napari writers for a Labels layer: instance map TIFF/PNG, GeoJSON polygons, COCO json.

Each writes atomically through :mod:`cellzoo.data` (a failed save leaves no partial file) and
returns the written path, as npe2 single-layer writers must.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellzoo.data.io import labels_as_int32, write_labels


def _instance_map(data: Any, layer_name: str) -> np.ndarray:
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise ValueError(f"layer {layer_name!r} has shape {labels.shape}; cellzoo writes 2-D label maps. "
                         "Slice the layer to one plane first (e.g. viewer.layers[...].data[z]).")
    return labels_as_int32(labels, source=f"layer {layer_name!r}")


def _with_suffix(path: str, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    return p if p.suffix.lower() in suffixes else p.with_name(p.name + suffixes[0])


def _class_map_for(meta: dict[str, Any]) -> tuple[np.ndarray | None, list[str] | None]:
    """Class map and names a cellzoo layer carries in its metadata (set by the Segment widget)."""
    metadata = meta.get("metadata") or {}
    classes = metadata.get("class_map")
    names = metadata.get("class_names")
    return (None if classes is None else np.asarray(classes, dtype=np.uint8)), (list(names) if names else None)


def write_labels_tif(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Instance map as zlib TIFF (uint16, uint32 when ids reach 65536) or 16-bit PNG."""
    labels = _instance_map(data, meta.get("name", "labels"))
    out = _with_suffix(path, (".tif", ".tiff", ".png"))
    write_labels(out, labels)
    return [str(out)]


def write_labels_geojson(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """One polygon Feature per instance (QuPath-compatible), with class names when the layer has them."""
    from cellzoo.data import write_geojson

    labels = _instance_map(data, meta.get("name", "labels"))
    classes, names = _class_map_for(meta)
    out = _with_suffix(path, (".geojson", ".json"))
    write_geojson(out, labels, classes=classes, class_names=names)
    return [str(out)]


def write_labels_coco(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """COCO instance annotations (RLE masks, boxes, areas) for one image."""
    from cellzoo.data import write_coco

    name = meta.get("name", "labels")
    labels = _instance_map(data, name)
    classes, names = _class_map_for(meta)
    out = _with_suffix(path, (".json",))
    write_coco(out, {name: labels}, classes={name: classes} if classes is not None else None,
               class_names=names)
    return [str(out)]
