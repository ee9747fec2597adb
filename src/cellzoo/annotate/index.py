"""Per-instance index of a 2-D instance map: bounding box, area, centroid and class of every id.

``InstanceIndex.build`` makes it in one pass over the pixels, in blocks of rows with numpy calls that
release the GIL (``bincount``, ``find_objects``; no ``np.unique`` over the image, which holds the GIL
for a second on 3000²), so a worker thread can build it while the GUI keeps running. After that an
edit only recomputes the instances it touched, inside their bounding boxes (``refresh``): the cost
of an edit follows the size of the objects, not of the image.

Ids are kept sorted; new ids (split, drawn) are larger than every id, so they are appended.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

Window = tuple[slice, slice]

#: columns of the features table (``label`` first; napari needs an extra ``index`` column)
COLUMNS = ("label", "class", "class_name", "area", "centroid_y", "centroid_x", "score")

# a dense bincount over ids is used while max id <= this many times the pixel count (sequential
# or nearly sequential ids); sparser ids are compressed first
_DENSE_IDS_PER_PIXEL = 4


def union_window(a: Window | None, b: Window | None) -> Window | None:
    """Smallest window holding both (None is empty)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


def pad_window(window: Window, pad: int, shape: Sequence[int]) -> Window:
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(window, shape))  # type: ignore[return-value]


def window_size(window: Window) -> int:
    return int(np.prod([s.stop - s.start for s in window]))


class InstanceIndex:
    """Area, centroid sums, bounding box and class of each instance id of one 2-D instance map."""

    def __init__(self, shape: tuple[int, int], ids: np.ndarray, area: np.ndarray, sum_rows: np.ndarray,
                 sum_cols: np.ndarray, boxes: np.ndarray, classes: np.ndarray) -> None:
        self.shape = tuple(int(s) for s in shape)
        self._ids = np.asarray(ids, np.int64)
        self._area = np.asarray(area, np.int64)
        self._sum_rows = np.asarray(sum_rows, np.float64)
        self._sum_cols = np.asarray(sum_cols, np.float64)
        self._boxes = np.asarray(boxes, np.int64).reshape(-1, 4)  # row0, row1, col0, col1 (stops exclusive)
        self._classes = np.asarray(classes, np.int64)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, labels: np.ndarray, classes: np.ndarray | None = None, *, default_class: int = 1,
              block_rows: int = 256) -> "InstanceIndex":
        """Index every instance of ``labels``; each one's class is the majority non-zero class it covers in
        ``classes`` (``default_class`` where it covers none, or when ``classes`` is None)."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"an instance index needs a 2-D instance map, got shape {labels.shape}.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"instance maps hold integer ids, got dtype {labels.dtype}.")
        if classes is not None:
            classes = np.asarray(classes)
            if classes.shape != labels.shape:
                raise ValueError(f"class map shape {classes.shape} does not match label shape {labels.shape}.")
        empty = cls(labels.shape, np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0))
        if labels.size == 0:
            return empty
        top = int(labels.max())
        if labels.min() < 0:
            raise ValueError("the instance map contains negative ids; ids must be 0 (background) or positive.")
        if top == 0:
            return empty
        if top <= _DENSE_IDS_PER_PIXEL * labels.size:
            compact, id_of = labels, None
        else:  # very sparse ids: number them 0..n first (rare: np.unique is slow on big images)
            id_of, inverse = np.unique(labels, return_inverse=True)
            compact = inverse.reshape(labels.shape)
            top = int(id_of.size - 1)
        n = top + 1
        n_classes = int(classes.max()) + 1 if classes is not None else 1
        area = np.zeros(n, np.int64)
        sum_rows = np.zeros(n)
        sum_cols = np.zeros(n)
        class_counts = np.zeros(n * n_classes, np.int64) if classes is not None else None
        height, width = labels.shape
        col_weights = np.arange(width, dtype=np.float64)
        for start in range(0, height, block_rows):
            stop = min(start + block_rows, height)
            flat = np.ascontiguousarray(compact[start:stop]).ravel()
            area += np.bincount(flat, minlength=n)
            sum_rows += np.bincount(flat, weights=np.repeat(np.arange(start, stop, dtype=np.float64), width),
                                    minlength=n)
            sum_cols += np.bincount(flat, weights=np.tile(col_weights, stop - start), minlength=n)
            if class_counts is not None:
                pairs = flat.astype(np.int64) * n_classes + classes[start:stop].ravel()
                class_counts += np.bincount(pairs, minlength=n * n_classes)
        present = np.flatnonzero(area[1:]) + 1
        slices = ndimage.find_objects(compact)
        boxes = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in (slices[i - 1] for i in present)],
                         dtype=np.int64).reshape(-1, 4)
        if class_counts is not None:
            counts = class_counts.reshape(n, n_classes)[present]
            counts[:, 0] = 0
            majority = counts.argmax(axis=1)
            majority[counts.max(axis=1) == 0] = default_class
        else:
            majority = np.full(present.size, default_class, np.int64)
        ids = present if id_of is None else id_of[present]
        return cls(labels.shape, ids, area[present], sum_rows[present], sum_cols[present], boxes, majority)

    def copy(self) -> "InstanceIndex":
        return InstanceIndex(self.shape, self._ids.copy(), self._area.copy(), self._sum_rows.copy(),
                             self._sum_cols.copy(), self._boxes.copy(), self._classes.copy())

    # ------------------------------------------------------------------ queries
    def _row(self, label: int) -> int:
        k = int(np.searchsorted(self._ids, label))
        return k if k < self._ids.size and self._ids[k] == label and self._area[k] > 0 else -1

    def __contains__(self, label: object) -> bool:
        return isinstance(label, (int, np.integer)) and self._row(int(label)) >= 0

    def __len__(self) -> int:
        return int((self._area > 0).sum())

    def ids(self) -> np.ndarray:
        return self._ids[self._area > 0].copy()

    @property
    def next_id(self) -> int:
        """The smallest id larger than every instance (the next free id)."""
        live = self._ids[self._area > 0]
        return int(live[-1]) + 1 if live.size else 1

    def bbox(self, label: int) -> Window:
        k = self._row(label)
        if k < 0:
            raise KeyError(label)
        r0, r1, c0, c1 = self._boxes[k]
        return slice(int(r0), int(r1)), slice(int(c0), int(c1))

    def class_of(self, label: int, default: int = 0) -> int:
        k = self._row(label)
        return int(self._classes[k]) if k >= 0 else default

    def area_of(self, label: int) -> int:
        k = self._row(label)
        return int(self._area[k]) if k >= 0 else 0

    def class_lookup(self) -> np.ndarray:
        """Class per id as a lookup table (index = id), for ids up to the largest one."""
        live = self._area > 0
        lut = np.zeros(self.next_id, np.uint8)
        lut[self._ids[live]] = self._classes[live]
        return lut

    def smaller_than(self, min_size: int) -> list[int]:
        live = self._area > 0
        return [int(i) for i in self._ids[live & (self._area < min_size)]]

    def table(self, class_names: Sequence[str] | None = None,
              scores: Mapping[int, float] | None = None) -> dict[str, np.ndarray]:
        """Columns label, class, class_name, area, centroid_y, centroid_x, score of every instance."""
        names = list(class_names or ["background", "nucleus"])
        live = self._area > 0
        ids, area, cls = self._ids[live], self._area[live], self._classes[live]
        scores = scores or {}
        top = int(cls.max()) + 1 if cls.size else 0
        name_of = np.array([names[c] if c < len(names) else f"class {c}" for c in range(max(top, len(names)))],
                           dtype=object)
        get = scores.get
        return {
            "label": ids.copy(), "class": cls.copy(), "class_name": name_of[cls],
            "area": area.copy(), "centroid_y": self._sum_rows[live] / np.maximum(area, 1),
            "centroid_x": self._sum_cols[live] / np.maximum(area, 1),
            "score": np.fromiter((get(i, np.nan) for i in ids.tolist()), dtype=float, count=ids.size),
        }

    # ------------------------------------------------------------------ updating
    def refresh(self, labels: np.ndarray, classes: np.ndarray | None, search: Mapping[int, Window],
                new_class: int = 1) -> None:
        """Recompute the instances in ``search`` (id -> a window holding all of its pixels now).

        An id with no pixel left is dropped. Its class is the majority non-zero class it covers in
        ``classes``; an id that covers none keeps its indexed class (``new_class`` if it is new).
        """
        for label, window in search.items():
            label = int(label)
            if label == 0:
                continue
            sub = np.asarray(labels[window])
            rows, cols = np.nonzero(sub == label)
            k = int(np.searchsorted(self._ids, label))
            known = k < self._ids.size and self._ids[k] == label
            if rows.size == 0:
                if known:
                    self._area[k] = 0
                continue
            r0, c0 = window[0].start, window[1].start
            values = (rows.size, float(rows.sum() + r0 * rows.size), float(cols.sum() + c0 * cols.size),
                      (r0 + int(rows.min()), r0 + int(rows.max()) + 1, c0 + int(cols.min()), c0 + int(cols.max()) + 1))
            cls = self._classes[k] if known and self._area[k] > 0 else new_class
            if classes is not None:
                counts = np.bincount(np.asarray(classes[window])[rows, cols])
                counts[0] = 0
                if counts.size and counts.max() > 0:
                    cls = int(counts.argmax())
            if not known:
                self._ids = np.insert(self._ids, k, label)
                self._area = np.insert(self._area, k, 0)
                self._sum_rows = np.insert(self._sum_rows, k, 0.0)
                self._sum_cols = np.insert(self._sum_cols, k, 0.0)
                self._boxes = np.insert(self._boxes, k, 0, axis=0)
                self._classes = np.insert(self._classes, k, 0)
            self._area[k], self._sum_rows[k], self._sum_cols[k] = values[0], values[1], values[2]
            self._boxes[k] = values[3]
            self._classes[k] = cls

    def search_windows(self, changes: Iterable[tuple[Window, np.ndarray, np.ndarray]], labels=None,
                       class_changes: Iterable[tuple[Window, np.ndarray, np.ndarray]] = ()) -> dict[int, Window]:
        """For edits given as (window, old values, new values): the ids whose pixels changed, each with
        a window that holds all of its pixels after the edit (its old box joined with the windows
        where it now appears). ``class_changes`` (same form, class map; with ``labels`` after the edit)
        adds the instances whose class pixels changed, to count their majority class again."""
        search: dict[int, Window | None] = {}
        for window, old, new in class_changes:
            changed = old != new
            if changed.any():
                for label in np.unique(np.asarray(labels[window])[changed]).tolist():
                    if label and label not in search:
                        search[label] = self.bbox(label) if label in self else window
        for window, old, new in changes:
            changed = old != new
            if not changed.any():
                continue
            for label in np.unique(np.concatenate([old[changed], new[changed]])):
                label = int(label)
                if label == 0:
                    continue
                if label not in search or search[label] is None:
                    search[label] = self.bbox(label) if label in self else None
                if (new == label).any():
                    search[label] = union_window(search[label], window)
        return {label: window or (slice(0, 0), slice(0, 0)) for label, window in search.items()}


def prepare_instances(labels: np.ndarray, class_map: np.ndarray | None = None,
                      default_class: int = 1) -> tuple[np.ndarray, np.ndarray, InstanceIndex]:
    """The arrays of the two output layers of a 2-D segmentation, ready to show.

    Returns the int32 instance map, a uint8 class map that is uniform inside each instance (its
    majority non-zero class in ``class_map``, ``default_class`` where it has none) and 0 on
    background, and the :class:`InstanceIndex` (features table, Correct widget). All O(pixels)
    work of showing a result, meant for the worker thread.
    """
    labels = np.asarray(labels)
    if labels.dtype != np.int32:
        labels = labels.astype(np.int32)
    index = InstanceIndex.build(labels, class_map, default_class=default_class)
    classes = np.take(index.class_lookup(), labels) if len(index) else np.zeros(labels.shape, np.uint8)
    return labels, classes, index
