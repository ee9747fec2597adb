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


def _classes_of(meta: dict[str, Any]) -> tuple[dict[int, int] | None, list[str] | None]:
    """{instance id: class id} and class names carried by a cellzoo Labels layer.

    The Segment/Correct widgets keep one ``features`` row per instance (``label``, ``class``) and the
    class names in ``metadata["cellzoo"]``; a plain Labels layer has neither (every object is class 1).
    """
    info = (meta.get("metadata") or {}).get("cellzoo") or {}
    names = list(info["class_names"]) if info.get("class_names") else None
    features = meta.get("features")
    class_of = None
    if features is not None and len(features) and {"label", "class"} <= set(features.columns):
        class_of = {int(lab): int(cls) for lab, cls in zip(features["label"], features["class"])}
    return class_of, names


def _class_map(labels: np.ndarray, class_of: dict[int, int] | None) -> np.ndarray | None:
    if class_of is None:
        return None
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint8)
    for lab, cls in class_of.items():
        if 0 < lab < lut.size:
            lut[lab] = cls
    return lut[labels]


def write_labels_tif(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Instance map as zlib TIFF (uint16, uint32 when ids reach 65536) or 16-bit PNG."""
    labels = _instance_map(data, meta.get("name", "labels"))
    out = _with_suffix(path, (".tif", ".tiff", ".png"))
    write_labels(out, labels)
    return [str(out)]


def write_labels_geojson(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """One polygon Feature per instance (QuPath-compatible), with class names when the layer has them."""
    from cellzoo.data.geojson import write_geojson

    labels = _instance_map(data, meta.get("name", "labels"))
    class_of, names = _classes_of(meta)
    out = _with_suffix(path, (".geojson", ".json"))
    write_geojson(out, labels, classes=_class_map(labels, class_of), class_names=names)
    return [str(out)]


def write_labels_coco(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """COCO instance annotations (exact RLE masks, boxes, areas) for one image."""
    from cellzoo.data.coco import to_coco, write_coco

    name = meta.get("name", "labels")
    labels = _instance_map(data, name)
    class_of, names = _classes_of(meta)
    source = ((meta.get("metadata") or {}).get("cellzoo") or {}).get("image_layer") or name
    out = _with_suffix(path, (".json",))
    write_coco(out, to_coco([(source, labels, class_of)], class_names=names))
    return [str(out)]
