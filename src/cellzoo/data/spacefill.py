"""Space-filling augmentation (SCTS's ``InsertInstance``, seeds.md §3.2) as a transform every family can use.

A library of annotated cells (crops with background zeroed, plus their masks and classes) is built once
from training samples; each call pastes up to ``n_cells`` library cells into empty places of the image:
for every cell up to ``tries`` random positions are tried and the first one where the (jittered) mask does
not touch any existing or already pasted cell (intersection over area = 0) is taken.  The cell is *added*
to the image with its intensity × U(0.15, 0.5), and the instance map (new unique ids) and class map are
updated.  The original's bugs are not copied (x/y swapped in the occupancy test, a debugger left in).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage
from skimage.transform import rescale, rotate


@dataclass
class LibraryCell:
    """One cell: ``image`` h×w×3 float32 (0–255, zero outside the mask), ``mask`` h×w bool, ``cls`` its
    class id (1 for class-agnostic data)."""

    image: np.ndarray
    mask: np.ndarray
    cls: int = 1


def build_cell_library(samples: Iterable, *, margin: int = 3, min_side: int = 6, max_cells: int | None = None,
                       seed: int = 0) -> list[LibraryCell]:
    """Crop every annotated cell of ``samples`` (:class:`cellzoo.data.Sample`: image + instance map [+ class
    map]) with ``margin`` px, background zeroed.  Cells with a side shorter than ``min_side`` are skipped;
    ``max_cells`` keeps a random subset (seeded) to bound memory."""
    from ..infer.prepare import prepare_image  # the engine's canonical H×W×3 0–255 scaling

    library: list[LibraryCell] = []
    for sample in samples:
        image = prepare_image(sample.image)
        labels = np.asarray(sample.labels)
        classes = None if sample.classes is None else np.asarray(sample.classes)
        for index, sl in enumerate(ndimage.find_objects(labels.astype(np.int64, copy=False)), start=1):
            if sl is None:
                continue
            ys, xs = sl
            if ys.stop - ys.start < min_side or xs.stop - xs.start < min_side:
                continue
            y0, y1 = max(ys.start - margin, 0), min(ys.stop + margin, labels.shape[0])
            x0, x1 = max(xs.start - margin, 0), min(xs.stop + margin, labels.shape[1])
            mask = labels[y0:y1, x0:x1] == index
            crop = image[y0:y1, x0:x1].copy()
            crop[~mask] = 0
            cls = 1
            if classes is not None:
                counts = np.bincount(classes[y0:y1, x0:x1][mask].astype(np.int64))
                counts[0] = 0
                cls = int(counts.argmax()) if counts.any() else 1
            library.append(LibraryCell(crop.astype(np.float32), mask, cls))
    if max_cells is not None and len(library) > max_cells:
        keep = np.random.default_rng(seed).choice(len(library), max_cells, replace=False)
        library = [library[i] for i in sorted(keep)]
    return library


class SpaceFill:
    """Transform ``(image H×W×3 float32 0–255, labels, classes | None, rng) -> (image, labels, classes)``.

    ``scale``: relative size jitter (±, applied with p 0.5); ``rotate``: free rotation; ``brightness``:
    range of a multiplicative brightness change (factor 1 + b, p 0.7) of the cell before pasting;
    ``intensity``: range of the factor the cell is added to the image with.
    """

    def __init__(self, library: Sequence[LibraryCell], n_cells: int = 10, tries: int = 10,
                 intensity: tuple[float, float] = (0.15, 0.5), scale: float = 0.1, rotate: bool = True,
                 brightness: tuple[float, float] = (-0.5, 0.2)) -> None:
        if not library:
            raise ValueError("the cell library is empty: build it with build_cell_library(samples) from "
                             "annotated samples whose cells are at least min_side pixels large")
        if not 0 <= intensity[0] <= intensity[1]:
            raise ValueError(f"intensity must be a range (low, high) with 0 <= low <= high; got {intensity}")
        if not 0 <= scale < 1:
            raise ValueError(f"scale jitter must be in [0, 1); got {scale}")
        self.library = list(library)
        self.n_cells = int(n_cells)
        self.tries = int(tries)
        self.intensity = tuple(float(v) for v in intensity)
        self.scale = float(scale)
        self.rotate = bool(rotate)
        self.brightness = tuple(float(v) for v in brightness)

    def _jitter(self, cell: LibraryCell, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image, mask = cell.image, cell.mask.astype(np.float32)
        if self.scale > 0 and rng.random() < 0.5:
            factor = rng.uniform(1 - self.scale, 1 + self.scale)
            image = rescale(image, factor, order=1, channel_axis=-1, preserve_range=True, anti_aliasing=False)
            mask = rescale(mask, factor, order=1, preserve_range=True, anti_aliasing=False)
        if self.rotate:
            angle = rng.uniform(0, 360)
            image = rotate(image, angle, resize=True, order=1, preserve_range=True)
            mask = rotate(mask, angle, resize=True, order=1, preserve_range=True)
        if self.brightness != (0.0, 0.0) and rng.random() < 0.7:
            image = image * (1 + rng.uniform(*self.brightness))
        binary = mask >= 0.5
        image = np.where(binary[..., None], image, 0).astype(np.float32)
        return image, binary

    def __call__(self, image: np.ndarray, labels: np.ndarray, classes: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if labels.shape != image.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
        image = np.array(image, dtype=np.float32, copy=True)
        labels = np.array(labels, dtype=np.int32, copy=True)
        classes = None if classes is None else np.array(classes, copy=True)
        occupied = labels > 0
        next_id = int(labels.max()) + 1
        height, width = labels.shape
        for index in rng.integers(0, len(self.library), self.n_cells):
            cell = self.library[int(index)]
            patch, mask = self._jitter(cell, rng)
            h, w = mask.shape
            if h > height or w > width or not mask.any():
                continue
            for _ in range(self.tries):
                y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                if occupied[y:y + h, x:x + w][mask].any():
                    continue
                gain = rng.uniform(*self.intensity)
                region = image[y:y + h, x:x + w]
                if image.ndim == 2:
                    region[mask] += gain * patch[mask].mean(-1)
                else:
                    channels = image.shape[2]
                    values = patch[mask] if channels == patch.shape[2] else patch[mask].mean(-1, keepdims=True)
                    region[mask] += gain * values
                np.clip(region, 0, 255, out=region)
                labels[y:y + h, x:x + w][mask] = next_id
                if classes is not None:
                    classes[y:y + h, x:x + w][mask] = cell.cls
                occupied[y:y + h, x:x + w] |= mask
                next_id += 1
                break
        return image, labels, classes
