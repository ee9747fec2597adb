"""Label-editing operations behind the Correct widget.

Every function takes 2-D arrays and returns *new* arrays (inputs are never modified), so a
front end can diff old and new and record the change in its own undo history.
Instance maps are int32 (0 = background), class maps uint8 (0 = background).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage
from skimage import filters, segmentation
from skimage.color import rgb2gray

from .index import InstanceIndex, Window, pad_window

__all__ = [
    "Patch",
    "assign_class",
    "class_of_instances",
    "delete_instance",
    "fill_holes",
    "merge_instances",
    "next_free_id",
    "plan_assign_class",
    "plan_classes_after_paint",
    "plan_delete",
    "plan_merge",
    "plan_remove_small",
    "plan_split",
    "relabel_sequential",
    "remove_small",
    "split_instance",
    "sync_classes",
]


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D instance map (H×W), got shape {labels.shape}; "
                         "edit stacks one plane at a time.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer instance ids, got dtype {labels.dtype}.")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} contains negative ids; instance ids must be 0 (background) or positive.")
    return labels


def _as_int32(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.int32, copy=True)


def _require_ids(labels: np.ndarray, ids: Iterable[int]) -> list[int]:
    ids = sorted({int(i) for i in ids})
    if 0 in ids:
        raise ValueError("id 0 is the background, not an instance; pick instances with a non-zero id.")
    present = np.isin(ids, labels)
    missing = [i for i, ok in zip(ids, present) if not ok]
    if missing:
        raise ValueError(f"instance id(s) {missing} do not exist in this label map.")
    return ids


def next_free_id(labels: np.ndarray) -> int:
    """The smallest id larger than every id in ``labels`` (any dimensionality)."""
    labels = np.asarray(labels)
    return int(labels.max()) + 1 if labels.size else 1


def delete_instance(labels: np.ndarray, label_id: int) -> np.ndarray:
    labels = _check_labels(labels)
    _require_ids(labels, [label_id])
    out = _as_int32(labels)
    out[labels == label_id] = 0
    return out


def merge_instances(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Give all instances in ``ids`` the smallest of those ids."""
    labels = _check_labels(labels)
    ids = _require_ids(labels, ids)
    if len(ids) < 2:
        raise ValueError("select at least two different instances to merge.")
    out = _as_int32(labels)
    out[np.isin(labels, ids)] = ids[0]
    return out


def split_instance(labels: np.ndarray, label_id: int, seed_points: Sequence[Sequence[float]],
                   image: np.ndarray | None = None, next_id: int | None = None) -> np.ndarray:
    """Split one instance by seeded watershed, one region per seed point (row, col).

    Without ``image`` the watershed floods the inverted distance transform of the object, which
    cuts along its narrowest neck; with ``image`` (H×W or H×W×C) it floods the intensity
    gradient, which follows visible boundaries. The region of the first seed keeps
    ``label_id``; the others get new ids from ``next_id`` on (default :func:`next_free_id`). Parts of the object that
    no seed reaches (disconnected pieces) keep ``label_id``.
    """
    labels = _check_labels(labels)
    _require_ids(labels, [label_id])
    seeds = np.asarray(seed_points, dtype=float).reshape(-1, 2)
    if len(seeds) < 2:
        raise ValueError("place at least two seed points inside the instance to split it.")
    mask = labels == label_id
    rows, cols = np.round(seeds).astype(int).T
    inside = (rows >= 0) & (rows < labels.shape[0]) & (cols >= 0) & (cols < labels.shape[1])
    if not inside.all() or not mask[rows, cols].all():
        raise ValueError(f"every seed point must lie inside instance {label_id}; "
                         f"{int((~inside).sum() + (~mask[rows[inside], cols[inside]]).sum())} do not.")
    unique_seeds = {(int(r), int(c)) for r, c in zip(rows, cols)}
    if len(unique_seeds) < 2:
        raise ValueError("the seed points fall on the same pixel; place them further apart.")

    # work in the object's bounding box (+1 px) so large images stay cheap
    (box,) = ndimage.find_objects(mask.astype(np.int8))
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    sub_mask = mask[box]
    markers = np.zeros(sub_mask.shape, dtype=np.int32)
    for k, (r, c) in enumerate(zip(rows, cols), start=1):
        if markers[r - box[0].start, c - box[1].start] == 0:
            markers[r - box[0].start, c - box[1].start] = k
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != labels.shape:
            raise ValueError(f"image shape {image.shape[:2]} does not match label shape {labels.shape}.")
        sub = image[box].astype(np.float32)
        if sub.ndim == 3:
            sub = rgb2gray(sub[..., :3]) if sub.shape[-1] >= 3 else sub.mean(axis=-1)
        elevation = filters.sobel(sub)
    else:
        elevation = -ndimage.distance_transform_edt(sub_mask)
    regions = segmentation.watershed(elevation, markers, mask=sub_mask)

    out = _as_int32(labels)
    sub_out = out[box]
    new_id = next_free_id(labels) if next_id is None else int(next_id)
    for k in np.unique(regions[regions > 1]):  # region 1 (the first seed's) keeps label_id
        sub_out[regions == k] = new_id
        new_id += 1
    return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background holes enclosed by a single instance with that instance's id.

    Only objects that border a hole of the foreground union are processed one by one (in their
    bounding box): filling the union first is vectorised and finds those candidates, the
    per-object pass keeps holes shared by two touching objects unfilled. Other objects'
    pixels are never overwritten.
    """
    labels = _check_labels(labels)
    out = _as_int32(labels)
    union_holes = ndimage.binary_fill_holes(labels > 0) & (labels == 0)
    if not union_holes.any():
        return out
    ring = ndimage.binary_dilation(union_holes, structure=np.ones((3, 3), bool)) & ~union_holes
    candidates = np.unique(labels[ring])
    candidates = candidates[candidates != 0]
    boxes = ndimage.find_objects(labels)
    for lab in candidates:
        box = boxes[lab - 1]
        obj = labels[box] == lab
        fill = ndimage.binary_fill_holes(obj) & (labels[box] == 0)
        out[box][fill] = lab
    return out


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove instances with fewer than ``min_size`` pixels."""
    labels = _check_labels(labels)
    if min_size < 0:
        raise ValueError(f"min_size must be 0 or more pixels, got {min_size}.")
    sizes = np.bincount(labels.ravel())
    too_small = sizes < min_size
    too_small[0] = False
    out = _as_int32(labels)
    out[too_small[labels]] = 0
    return out


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber instances 1..N keeping their order."""
    labels = _check_labels(labels)
    relabeled, _, _ = segmentation.relabel_sequential(labels)
    return relabeled.astype(np.int32, copy=False)


def class_of_instances(labels: np.ndarray, classes: np.ndarray, default_class: int = 0) -> dict[int, int]:
    """Majority non-zero class inside each instance (``default_class`` where an instance has none).

    One pass of ``bincount`` over the pixels (see :class:`~cellzoo.annotate.index.InstanceIndex`).
    """
    labels = np.asarray(labels)
    classes = np.asarray(classes)
    if classes.shape != labels.shape:
        raise ValueError(f"class map shape {classes.shape} does not match label shape {labels.shape}.")
    if labels.ndim != 2:
        return _class_of_instances_nd(labels, classes, default_class)
    index = InstanceIndex.build(labels, classes, default_class=default_class)
    table = index.table()
    return {int(i): int(c) for i, c in zip(table["label"], table["class"])}


def _class_of_instances_nd(labels, classes, default_class):
    flat_labels = labels.reshape(-1, labels.shape[-1])
    flat_classes = classes.reshape(-1, classes.shape[-1])
    return class_of_instances(flat_labels, flat_classes, default_class)


def sync_classes(labels: np.ndarray, classes: np.ndarray, default_class: int = 1) -> np.ndarray:
    """Class map that is uniform inside each instance and 0 on background.

    Each instance takes the majority non-zero class it already covers (so merged objects get
    one class, split halves keep their class), or ``default_class`` when it covers none.
    """
    labels = np.asarray(labels)
    lookup = class_of_instances(labels, classes, default_class)
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint8)
    for lab, cls in lookup.items():
        lut[lab] = cls
    return lut[labels]


def assign_class(labels: np.ndarray, classes: np.ndarray, ids: Sequence[int], cls: int) -> np.ndarray:
    """Return a class map where every pixel of the instances ``ids`` has class ``cls``."""
    labels = _check_labels(labels)
    classes = np.asarray(classes)
    if classes.shape != labels.shape:
        raise ValueError(f"class map shape {classes.shape} does not match label shape {labels.shape}.")
    if not 1 <= int(cls) <= 255:
        raise ValueError(f"class id must be between 1 and 255 (0 is background), got {cls}.")
    ids = _require_ids(labels, ids)
    out = classes.astype(np.uint8, copy=True)
    out[np.isin(labels, ids)] = int(cls)
    return out


# ----------------------------------------------------------------------------- local edits
# The functions below never copy the whole map: they read the bounding boxes of the instances
# they touch (from an InstanceIndex) and return Patches, the new values of those windows. The
# Correct widget writes them, records the old values for undo and refreshes the index.

@dataclass
class Patch:
    """New values for ``labels[window]`` and/or ``classes[window]`` (None: that map is unchanged)."""

    window: Window
    labels: np.ndarray | None = None
    classes: np.ndarray | None = None


def _indexed(index: InstanceIndex, ids: Iterable[int]) -> list[int]:
    ids = sorted({int(i) for i in ids})
    if 0 in ids:
        raise ValueError("id 0 is the background, not an instance; pick instances with a non-zero id.")
    missing = [i for i in ids if i not in index]
    if missing:
        raise ValueError(f"instance id(s) {missing} do not exist in this label map.")
    return ids


def _check_class(cls: int) -> int:
    if not 1 <= int(cls) <= 255:
        raise ValueError(f"class id must be between 1 and 255 (0 is background), got {cls}.")
    return int(cls)


def _relabel_patch(labels, classes, window: Window, label: int, new_label: int | None,
                   new_class: int | None) -> Patch:
    sub = np.asarray(labels[window])
    mask = sub == label
    out_labels = None if new_label is None else np.where(mask, new_label, sub).astype(sub.dtype, copy=False)
    out_classes = None
    if new_class is not None and classes is not None:
        sub_classes = np.asarray(classes[window])
        out_classes = np.where(mask, new_class, sub_classes).astype(sub_classes.dtype, copy=False)
    return Patch(window, out_labels, out_classes)


def plan_delete(labels, classes, index: InstanceIndex, ids: Sequence[int]) -> list[Patch]:
    """Remove the instances ``ids`` (labels and classes to 0), one patch per instance box."""
    return [_relabel_patch(labels, classes, index.bbox(i), i, 0, 0) for i in _indexed(index, ids)]


def plan_merge(labels, classes, index: InstanceIndex, ids: Sequence[int]) -> list[Patch]:
    """Give the instances ``ids`` the smallest of those ids and the class covering most of their area."""
    ids = _indexed(index, ids)
    if len(ids) < 2:
        raise ValueError("select at least two different instances to merge.")
    area_per_class: dict[int, int] = {}
    for i in ids:
        area_per_class[index.class_of(i)] = area_per_class.get(index.class_of(i), 0) + index.area_of(i)
    cls = max(sorted(area_per_class), key=lambda c: area_per_class[c])
    return [_relabel_patch(labels, classes, index.bbox(i), i, ids[0], cls) for i in ids]


def plan_assign_class(labels, classes, index: InstanceIndex, ids: Sequence[int], cls: int) -> list[Patch]:
    """Give every pixel of the instances ``ids`` the class ``cls`` (class map only)."""
    cls = _check_class(cls)
    return [_relabel_patch(labels, classes, index.bbox(i), i, None, cls) for i in _indexed(index, ids)]


def plan_remove_small(labels, classes, index: InstanceIndex, min_size: int) -> list[Patch]:
    """Delete the instances with fewer than ``min_size`` pixels."""
    if min_size < 0:
        raise ValueError(f"min_size must be 0 or more pixels, got {min_size}.")
    small = index.smaller_than(min_size)
    return plan_delete(labels, classes, index, small) if small else []


def plan_split(labels, classes, index: InstanceIndex, label_id: int, seed_points: Sequence[Sequence[float]],
               image: np.ndarray | None = None) -> list[Patch]:
    """:func:`split_instance` inside the instance's box: the first seed's region keeps ``label_id``,
    the others get ids from ``index.next_id``; all parts keep the instance's class."""
    (label_id,) = _indexed(index, [label_id])
    window = pad_window(index.bbox(label_id), 1, index.shape)
    origin = np.array([window[0].start, window[1].start], dtype=float)
    seeds = np.asarray(seed_points, dtype=float).reshape(-1, 2) - origin
    sub = np.asarray(labels[window])
    sub_image = None
    if image is not None:  # an array, or anything whose [window] gives that window's pixels
        shape = tuple(getattr(image, "shape", np.shape(image)))[:2]
        if shape != tuple(index.shape):
            raise ValueError(f"image shape {shape} does not match label shape {tuple(index.shape)}.")
        sub_image = np.asarray(image[window])
    split = split_instance(sub, label_id, seeds, image=sub_image, next_id=index.next_id)
    out_classes = None
    if classes is not None:
        sub_classes = np.asarray(classes[window])
        out_classes = np.where(split != sub, index.class_of(label_id), sub_classes).astype(sub_classes.dtype)
    return [Patch(window, split.astype(sub.dtype, copy=False), out_classes)]


def plan_classes_after_paint(labels, classes, index: InstanceIndex, window: Window, new_class: int,
                             painted: np.ndarray | None = None) -> Patch:
    """Class patch for ``window`` after the user painted instance ids in it with napari's tools.

    Every painted pixel (``painted``: a mask of the window; all pixels when None; the others keep
    their class) takes the class of the instance now on it: an indexed instance keeps its class
    (painting over a neighbour does not change the neighbour's class, nor give the new object the
    neighbour's), an id the index does not know yet (a new instance) gets ``new_class``, and
    background gets 0.
    """
    new_class = _check_class(new_class)
    sub = np.asarray(labels[window])
    lut = index.class_lookup()
    top = int(sub.max()) if sub.size else 0
    if top >= lut.size:
        lut = np.concatenate([lut, np.full(top + 1 - lut.size, new_class, np.uint8)])
    unknown = [int(i) for i in np.unique(sub) if i and i not in index]
    lut = lut.copy()
    lut[unknown] = new_class
    lut[0] = 0
    out = lut[sub]
    if classes is not None:
        before = np.asarray(classes[window])
        out = out.astype(before.dtype, copy=False)
        if painted is not None:
            out = np.where(painted, out, before)
    return Patch(window, None, out)
