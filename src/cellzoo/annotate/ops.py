"""Label-editing operations behind the Correct widget.

Every function takes 2-D arrays and returns *new* arrays (inputs are never modified), so a
front end can diff old and new and record the change in its own undo history.
Instance maps are int32 (0 = background), class maps uint8 (0 = background).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage
from skimage import filters, segmentation
from skimage.color import rgb2gray

__all__ = [
    "assign_class",
    "class_of_instances",
    "delete_instance",
    "fill_holes",
    "merge_instances",
    "next_free_id",
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
                   image: np.ndarray | None = None) -> np.ndarray:
    """Split one instance by seeded watershed, one region per seed point (row, col).

    Without ``image`` the watershed floods the inverted distance transform of the object, which
    cuts along its narrowest neck; with ``image`` (H×W or H×W×C) it floods the intensity
    gradient, which follows visible boundaries. The region of the first seed keeps
    ``label_id``; the others get new ids from :func:`next_free_id`. Parts of the object that
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
    new_id = next_free_id(labels)
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
    """Majority non-zero class inside each instance (``default_class`` where an instance has none)."""
    labels = np.asarray(labels)
    classes = np.asarray(classes)
    if classes.shape != labels.shape:
        raise ValueError(f"class map shape {classes.shape} does not match label shape {labels.shape}.")
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_classes = int(classes.max()) + 1 if classes.size else 1
    counts = np.bincount(inverse * n_classes + classes.reshape(-1).astype(np.int64),
                         minlength=ids.size * n_classes).reshape(ids.size, n_classes)
    counts[:, 0] = 0
    majority = counts.argmax(axis=1)
    majority[counts.max(axis=1) == 0] = default_class
    return {int(i): int(c) for i, c in zip(ids, majority) if i != 0}


def sync_classes(labels: np.ndarray, classes: np.ndarray, default_class: int = 1) -> np.ndarray:
    """Class map that is uniform inside each instance and 0 on background.

    Each instance takes the majority non-zero class it already covers (so merged objects get
    one class, split halves keep their class), or ``default_class`` when it covers none (a newly
    drawn object).
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
