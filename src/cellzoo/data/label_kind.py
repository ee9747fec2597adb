"""Is a raster an image, an instance map or a class map? Decided by its content, not its file name.

Label maps are integer, single-channel and piecewise constant: neighbouring pixels mostly share a
value, and much of the map is background (0). An instance map gives each object its own value, so
each value forms about one connected region; a class map uses a few values, each spread over many
separate regions. Photographs and fluorescence images are noisy: neighbours differ, and each grey
level is scattered over countless specks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["image", "instances", "classes"]

#: a label map changes value only at object borders (DSB masks: up to 24 % of the pairs), images almost
#: everywhere (DSB images: 22-84 %); this only skips counting regions of obvious images
MAX_LABEL_CHANGE_FRACTION = 0.5
#: instance maps: connected regions per distinct non-zero value (1.0 when every object is one piece)
MAX_INSTANCE_REGIONS_PER_VALUE = 1.5
#: class maps use few distinct values
MAX_CLASS_VALUES = 16
#: label maps have background: at least this fraction of pixels is 0 (or the map is all one object)
MIN_BACKGROUND_FRACTION = 0.01
#: larger maps are judged on their central window of this size (about 0.1 s; label maps look alike
#: everywhere, and a widget must not stall on a whole-slide map)
MAX_SIDE = 1024


@dataclass(frozen=True)
class LabelMapStats:
    """What :func:`raster_kind` looked at (kept for messages and tests)."""

    kind: Kind
    values: int                 # distinct non-zero values
    regions: int                # 4-connected regions of equal non-zero value
    background_fraction: float  # share of pixels equal to 0
    change_fraction: float      # share of neighbour pairs (with a non-zero pixel) whose values differ
    reason: str


def _change_fraction(plane: np.ndarray) -> float:
    """Share of horizontal and vertical neighbour pairs, not both background, whose values differ."""
    changed = kept = 0
    for a, b in ((plane[:, 1:], plane[:, :-1]), (plane[1:, :], plane[:-1, :])):
        touched = (a != 0) | (b != 0)
        changed += int(np.count_nonzero((a != b) & touched))
        kept += int(np.count_nonzero(touched))
    return changed / kept if kept else 0.0


def raster_kind(array: np.ndarray, max_side: int = MAX_SIDE) -> LabelMapStats:
    """Classify a raster as ``"image"``, ``"instances"`` (one value per object) or ``"classes"``.

    Only integer (or boolean) single-channel 2-D data can be a label map; everything else is an image.
    Maps larger than ``max_side`` are judged on their central ``max_side``² window.
    """
    from skimage.measure import label as connected

    data = np.asarray(array)
    plane = np.squeeze(data)

    def result(kind: Kind, reason: str, values=0, regions=0, background=0.0, change=0.0) -> LabelMapStats:
        return LabelMapStats(kind, values, regions, background, change, reason)

    if plane.ndim != 2 or min(plane.shape) < 2:
        return result("image", f"shape {data.shape} is not a single-channel 2-D map")
    if max(plane.shape) > max_side:
        top, left = (max(0, (n - max_side) // 2) for n in plane.shape)
        plane = plane[top:top + max_side, left:left + max_side]
    if plane.dtype == bool:
        plane = plane.astype(np.uint8)
    if plane.dtype.kind not in "iu":
        return result("image", f"dtype {data.dtype} is not an integer type")
    background = float(np.count_nonzero(plane == 0)) / plane.size
    change = _change_fraction(plane)
    if background == 1.0:
        return result("instances", "every pixel is 0: an empty label map", background=background)
    if change > MAX_LABEL_CHANGE_FRACTION:
        return result("image", f"{change:.0%} of neighbouring pixels differ: an image, not a label map",
                      background=background, change=change)
    values = int(np.unique(plane).size) - (1 if background > 0 else 0)
    if background < MIN_BACKGROUND_FRACTION and values > 1:
        return result("image", f"only {background:.1%} of the pixels are 0 (background)", values,
                      background=background, change=change)
    regions = int(connected(plane, background=0, connectivity=1).max())
    per_value = regions / max(values, 1)
    if per_value <= MAX_INSTANCE_REGIONS_PER_VALUE:
        return result("instances", f"{values} values in {regions} regions: one region per object",
                      values, regions, background, change)
    if values <= MAX_CLASS_VALUES:
        return result("classes", f"{values} values spread over {regions} separate regions: a class map",
                      values, regions, background, change)
    return result("image", f"{values} values in {regions} regions: neither one region per value nor few values",
                  values, regions, background, change)
