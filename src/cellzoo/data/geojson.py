"""GeoJSON (QuPath style) ↔ instance (+ class) maps.

Writes a ``FeatureCollection`` with one ``Polygon`` (or ``MultiPolygon`` for objects in several pieces)
per object and ``properties = {objectType: "annotation" | "detection", classification: {name, color}}``,
which QuPath opens with File › Import objects. Coordinates are (x, y) in pixel-corner coordinates
(QuPath's): pixel (r, c) has its centre at (c + 0.5, r + 0.5). The reader also takes a bare list of
features or a single feature, ``colorRGB`` colours, MultiPolygons and holes.
"""
from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellzoo._atomic import atomic_write_text
from cellzoo.data import _polygons
from cellzoo.data.validate import finite_coordinates

OBJECT_TYPES = ("annotation", "detection")
#: Distinct colours for class ids 1, 2, ... (cycled).
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _ring_list(ring: np.ndarray) -> list[list[float]]:
    closed = np.vstack([ring, ring[:1]])  # GeoJSON rings repeat the first vertex at the end
    return np.round(closed, 3).tolist()


def labels_to_geojson(labels: np.ndarray, classes: np.ndarray | None = None, class_names: list[str] | None = None,
                      object_type: str = "annotation", tolerance: float = 0.0) -> dict:
    """A QuPath-style FeatureCollection; each feature keeps its instance id in ``properties.instance_id``."""
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, got {object_type!r}.")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D instance map, got shape {labels.shape}.")
    class_of = _polygons.instance_classes(labels, classes) if classes is not None else {}
    names = _polygons.class_names_or_default(class_names, max(class_of.values(), default=0))
    features = []
    for index, rings in _polygons.labels_to_polygons(labels, tolerance):
        if len(rings) == 1:
            geometry = {"type": "Polygon", "coordinates": [_ring_list(rings[0])]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": [[_ring_list(r)] for r in rings]}
        properties: dict[str, Any] = {"objectType": object_type, "instance_id": int(index)}
        cls = class_of.get(index, 0)
        if cls:
            properties["classification"] = {"name": names[cls], "color": list(_PALETTE[(cls - 1) % len(_PALETTE)])}
            properties["class_id"] = int(cls)  # our own key (QuPath ignores it): keeps ids on reading back
        features.append({"type": "Feature", "id": str(uuid.uuid4()), "geometry": geometry,
                         "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, labels: np.ndarray, classes: np.ndarray | None = None,
                  class_names: list[str] | None = None, object_type: str = "annotation",
                  tolerance: float = 0.0) -> Path:
    """Write :func:`labels_to_geojson` atomically (``.geojson`` opens in QuPath)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(labels_to_geojson(labels, classes, class_names, object_type, tolerance)))
    return path


def _features(data: Any, where: str) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            return list(data.get("features") or [])
        if kind == "Feature":
            return [data]
        if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
            return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise ValueError(f"{where} is not GeoJSON: expected a FeatureCollection, a Feature or a list of features.")


def _polygons_of(geometry: Any, where: str) -> list[list]:
    """Polygon coordinate lists ([exterior, hole, ...]) inside a geometry."""
    if not geometry:
        return []
    if not isinstance(geometry, dict):
        raise ValueError(f"{where}: a feature's geometry must be a JSON object with 'type' and 'coordinates', "
                         f"found {type(geometry).__name__} {str(geometry)[:40]!r}.")
    kind = geometry.get("type")
    if kind in ("Polygon", "MultiPolygon"):
        coordinates = geometry.get("coordinates")
        if not isinstance(coordinates, list):
            raise ValueError(f"{where}: a {kind} needs a list of 'coordinates', found "
                             f"{type(coordinates).__name__}.")
        polygons = [coordinates] if kind == "Polygon" else coordinates
        if not all(isinstance(p, list) for p in polygons):
            raise ValueError(f"{where}: malformed {kind} coordinates (expected lists of rings of [x, y]).")
        return polygons
    if kind == "GeometryCollection":
        geometries = geometry.get("geometries", [])
        if not isinstance(geometries, list):
            raise ValueError(f"{where}: a GeometryCollection needs a list of 'geometries'.")
        return [p for g in geometries for p in _polygons_of(g, where)]
    return []


def _class_name(properties: dict) -> str:
    classification = properties.get("classification")
    if isinstance(classification, dict):
        name = classification.get("name")
        if name is None and classification.get("names"):  # QuPath derived classes
            name = ": ".join(classification["names"])
        return str(name or "")
    return str(classification or "")


def _names_from_ids(objects: list, ids: list) -> list[str] | None:
    """Class names placed at the ``class_id`` our writer stores, when every classified feature has a
    consistent one; else None."""
    by_id: dict[int, str] = {}
    for (name, _, _), cls in zip(objects, ids):
        if not name:
            continue
        if not isinstance(cls, int) or not 0 < cls < 256 or by_id.get(cls, name).lower() != name.lower():
            return None
        by_id[cls] = name
    if not by_id or len({n.lower() for n in by_id.values()}) != len(by_id):
        return None
    for known in _polygons.KNOWN_CLASS_NAMES:  # a shared dataset's full list, when the ids agree with it
        if max(by_id) < len(known) and all(known[k].lower() == n.lower() for k, n in by_id.items()):
            return list(known)
    names = ["background"] + [f"class_{k}" for k in range(1, max(by_id) + 1)]
    for cls, name in by_id.items():
        names[cls] = name
    return names


def read_geojson(source: str | os.PathLike | dict | list, shape: tuple[int, int] | None = None,
                 class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Rasterise polygon features to ``(labels int32, classes uint8 or None, class_names)``.

    Features are painted in file order (a later one wins where they overlap); holes are cleared.
    Class ids follow ``class_names`` (case-insensitive; new names appended in order of appearance);
    without it, the ``class_id`` our writer stores, else a shared dataset's class list when every name is
    in it (MoNuSAC, CoNSeP), else order of appearance. Unclassified features get class 0, and a file with no classifications gives ``classes=None``.
    Features without an area (points, lines) are skipped with a warning.
    """
    data, where = _polygons.load_json(source, (dict, list), "GeoJSON file", "GeoJSON object")
    objects: list[tuple[str, list[np.ndarray], list[np.ndarray]]] = []
    ids_written: list = []
    skipped = 0
    for feature in _features(data, where):
        if not isinstance(feature, dict):
            raise ValueError(f"{where}: every feature must be a JSON object, found {type(feature).__name__}.")
        polygons = _polygons_of(feature.get("geometry"), where)
        if not polygons:
            skipped += 1
            continue
        exteriors = [finite_coordinates(p[0], where) for p in polygons if p]
        holes = [finite_coordinates(h, where) for p in polygons for h in p[1:]]
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise ValueError(f"{where}: a feature's 'properties' must be a JSON object, found "
                             f"{type(properties).__name__}.")
        objects.append((_class_name(properties), exteriors, holes))
        ids_written.append(properties.get("class_id"))
    if skipped:
        warnings.warn(f"{where}: skipped {skipped} feature(s) without a polygon (points or lines).", stacklevel=2)
    if class_names:
        class_names = list(class_names)
    else:
        class_names = (_names_from_ids(objects, ids_written)
                       or _polygons.default_class_names(name for name, _, _ in objects))
    lookup = {n.lower(): k for k, n in enumerate(class_names)}
    for name, _, _ in objects:
        if name and name.lower() not in lookup:
            lookup[name.lower()] = len(class_names)
            class_names.append(name)
    if len(class_names) > 256:
        raise ValueError(f"{where} names {len(class_names) - 1} classes; a class map holds at most 255.")
    if shape is None:
        shape = _polygons.extent_of((ring for _, exteriors, _ in objects for ring in exteriors), source=where)
    labels = _polygons.rasterise(((k, ext, holes) for k, (_, ext, holes) in enumerate(objects, start=1)),
                                 tuple(shape), source=where)
    if not any(name for name, _, _ in objects):
        return labels, None, ["background", "nucleus"] if len(class_names) == 1 else class_names
    class_of = {k: lookup[name.lower()] if name else 0 for k, (name, _, _) in enumerate(objects, start=1)}
    return labels, _polygons.class_map_from(labels, class_of), class_names
