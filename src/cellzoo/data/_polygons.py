"""Shared parts of the polygon formats (XML, COCO, GeoJSON): label map ↔ polygons, per-instance classes,
and the JSON loading with clear errors that the COCO and GeoJSON readers have in common.

Coordinates: polygons are (x, y) in *pixel-corner* coordinates, i.e. pixel (row r, col c) covers
[c, c+1] × [r, r+1] and its centre is (c + 0.5, r + 0.5) — the convention of COCO and QuPath.
Formats that use pixel-index coordinates (MoNuSeg XML) pass ``center=0.0``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage
from skimage import draw, measure

from cellzoo.data.validate import check_image_size

#: Coordinate of the first pixel's centre in pixel-corner coordinates.
CORNER_CENTER = 0.5


def labels_to_polygons(labels: np.ndarray, tolerance: float = 0.0,
                       center: float = CORNER_CENTER) -> list[tuple[int, list[np.ndarray]]]:
    """Outer boundary rings of each instance: ``[(id, [ring (K×2 x,y), ...]), ...]`` in id order.

    Rings run through the mid-points between object and background pixels (marching squares at 0.5 on
    the hole-filled mask), so rasterising them at pixel centres gives back exactly the filled object.
    Objects in several pieces give one ring per piece; holes are not kept. ``tolerance`` > 0
    simplifies rings (Douglas–Peucker, in pixels); 0 only drops collinear vertices.
    """
    labels = np.asarray(labels)
    result: list[tuple[int, list[np.ndarray]]] = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        row0, col0 = box[0].start, box[1].start
        mask = ndimage.binary_fill_holes(labels[box] == index)
        padded = np.pad(mask, 1).astype(np.uint8)
        rings = []
        for contour in measure.find_contours(padded, 0.5):
            if len(contour) > 1 and np.array_equal(contour[0], contour[-1]):
                contour = contour[:-1]
            contour = (measure.approximate_polygon(contour, tolerance) if tolerance > 0
                       else _drop_collinear(contour))
            if len(contour) > 1 and np.array_equal(contour[0], contour[-1]):
                contour = contour[:-1]
            if len(contour) < 3:
                continue
            # padded index coordinates -> image index coordinates -> requested convention; (row, col) -> (x, y)
            xy = contour[:, ::-1] + (np.array([col0, row0]) - 1 + center)
            rings.append(xy)
        if rings:
            result.append((index, rings))
    return result


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices where a closed ring runs straight on. (approximate_polygon(…, 0) does the same but
    its first call imports scipy.signal, ~3 s.)"""
    if len(ring) < 3:
        return ring
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return ring[np.abs(turn) > 1e-9]


def ring_pixels(ring_xy: np.ndarray, shape: tuple[int, int], center: float = CORNER_CENTER
                ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels whose centres lie inside ``ring_xy`` (x, y), clipped to ``shape``."""
    ring_xy = np.asarray(ring_xy, dtype=float)
    empty = np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    if ring_xy.ndim != 2 or ring_xy.shape[1] != 2 or len(ring_xy) < 3:
        return empty
    rows, cols = ring_xy[:, 1] - center, ring_xy[:, 0] - center
    # draw inside the ring's own box (about 2× faster than clipping against the whole image)
    row0, col0 = max(int(np.floor(rows.min())), 0), max(int(np.floor(cols.min())), 0)
    row1, col1 = min(int(np.ceil(rows.max())) + 1, shape[0]), min(int(np.ceil(cols.max())) + 1, shape[1])
    if row1 <= row0 or col1 <= col0:
        return empty
    rr, cc = draw.polygon(rows - row0, cols - col0, (row1 - row0, col1 - col0))
    return rr + row0, cc + col0


def rasterise(objects: Iterable[tuple[int, list[np.ndarray], list[np.ndarray]]], shape: tuple[int, int],
              center: float = CORNER_CENTER, source: str = "annotation") -> np.ndarray:
    """Paint ``(id, exterior rings, hole rings)`` into an int32 map; later objects overwrite earlier ones.
    ``shape`` is checked against the size limits (:mod:`cellzoo.data.validate`) before the map is allocated."""
    shape = checked_shape(shape, source)
    labels = np.zeros(shape, dtype=np.int32)
    for index, exteriors, holes in objects:
        for ring in exteriors:
            rows, cols = ring_pixels(ring, shape, center)
            labels[rows, cols] = index
        for ring in holes:
            rows, cols = ring_pixels(ring, shape, center)
            inside = labels[rows, cols] == index
            labels[rows[inside], cols[inside]] = 0
    return labels


def checked_shape(shape, source: str) -> tuple[int, int]:
    """An (H, W) map size within the limits; an empty (0, 0) file extent passes as it is."""
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"{source}: a label map needs a 2-D shape (H, W), got {shape}")
    if all(isinstance(n, (int, np.integer)) and n == 0 for n in shape):
        return 0, 0
    return check_image_size(shape[0], shape[1], source, itemsize=4)


def extent_of(rings: Iterable[np.ndarray], center: float = CORNER_CENTER,
              source: str = "annotation") -> tuple[int, int]:
    """Smallest (H, W) that holds every pixel touched by ``rings`` — used when no image shape is given.
    A size beyond the limits (coordinates at 1e9) is refused here, before anything is allocated."""
    max_x = max_y = -np.inf
    for ring in rings:
        ring = np.asarray(ring, dtype=float)
        if ring.size:
            max_x, max_y = max(max_x, ring[:, 0].max()), max(max_y, ring[:, 1].max())
    if not np.isfinite(max_x):
        return 0, 0
    height, width = int(np.floor(max_y - center)) + 1, int(np.floor(max_x - center)) + 1
    if height < 1 or width < 1:
        return 0, 0  # every vertex left of or above the image: nothing to paint
    return checked_shape((height, width), f"{source} (no image size given; its largest coordinates "
                                          f"imply one — pass the image's shape)")


def instance_classes(labels: np.ndarray, classes: np.ndarray | None) -> dict[int, int]:
    """Majority class id of each instance (ties: the smaller class id); class 0 counts too."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if classes is None:
        return {int(i): 1 for i in ids}
    classes = np.asarray(classes)
    if classes.shape != labels.shape:
        raise ValueError(f"class map shape {classes.shape} does not match label map shape {labels.shape}.")
    fg = labels != 0
    pairs = labels[fg].astype(np.int64) * 256 + classes[fg].astype(np.int64)
    values, counts = np.unique(pairs, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for value, count in zip(values.tolist(), counts.tolist()):
        index, cls = divmod(value, 256)
        if index not in best or count > best[index][0]:  # values ascend, so ties keep the smaller class
            best[index] = (count, cls)
    return {index: cls for index, (_, cls) in best.items()}


def class_map_from(labels: np.ndarray, class_of: dict[int, int]) -> np.ndarray:
    """Per-pixel uint8 class map from a per-instance class table."""
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint8)
    for index, cls in class_of.items():
        if 0 < index < lut.size:
            lut[index] = cls
    return lut[labels]


def class_names_or_default(class_names: list[str] | None, max_class: int) -> list[str]:
    """``class_names`` padded so it names every class id up to ``max_class`` (``class_k`` for gaps)."""
    names = list(class_names) if class_names else ["background"]
    while len(names) <= max_class:
        names.append("nucleus" if len(names) == 1 and max_class == 1 else f"class_{len(names)}")
    return names


#: Class lists of the shared datasets; a file whose class names all belong to one of them gets its ids.
KNOWN_CLASS_NAMES = (
    ["background", "epithelial", "lymphocyte", "neutrophil", "macrophage"],          # MoNuSAC
    ["background", "other", "inflammatory", "epithelial", "spindle-shaped"],         # CoNSeP (4 types)
)


def default_class_names(names_seen: Iterable[str]) -> list[str]:
    """Class names for a file that gives names but no ids: a known dataset's list when every name is in
    it (case-insensitive), else background followed by the names in order of appearance."""
    seen = list(dict.fromkeys(n for n in names_seen if n))
    lowered = {n.lower() for n in seen}
    for known in KNOWN_CLASS_NAMES:
        if seen and lowered <= {k.lower() for k in known[1:]}:
            return list(known)
    return ["background"] + seen


def load_json(source, in_memory_types: tuple[type, ...], what: str, in_memory_name: str):
    """``(data, where)`` for the JSON readers: an in-memory object passes through, a path is read with a
    clear error for a missing file or invalid JSON; ``where`` names the source in later messages."""
    if isinstance(source, in_memory_types):
        return source, in_memory_name
    from cellzoo.data.validate import regular_file

    path = regular_file(source, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name} is not valid JSON ({exc}).") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name} is not a UTF-8 text file, so not JSON ({exc.reason} at byte {exc.start}).") from None
    except RecursionError:
        raise ValueError(f"{path.name} nests its JSON too deeply to be an annotation file.") from None
    return data, path.name
