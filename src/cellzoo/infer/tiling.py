"""Tile layout: overlapping cores that cover the image, each read with a halo of context.

Coordinates: the image is reflect-padded by ``halo`` on the top/left (and enough on the
bottom/right to fit the last tile), so tile ``k`` reads ``padded[y:y + tile_h, x:x + tile_w]``
and its core ``[halo, halo + core)`` lands on ``image[y:y + core_h, x:x + core_w]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def round_down(value: int, multiple: int) -> int:
    return (int(value) // multiple) * multiple


@dataclass(frozen=True)
class AxisPlan:
    tile: int            # tile size read from the padded image (multiple of the size divisor)
    core: int            # tile - 2*halo: the part written to the output
    starts: tuple[int, ...]  # core start positions in image coordinates (= tile start in padded coords)
    pad_after: int       # padding needed after the image end
    ramp: int            # width of the blending ramp inside each overlap

    def owned(self, index: int, length: int) -> tuple[int, int]:
        """The image interval that tile ``index`` owns exclusively (split at overlap midpoints);
        used to de-duplicate detections cut by tile borders."""
        start = 0 if index == 0 else (self.starts[index] + self.starts[index - 1] + self.core) // 2
        end = length if index == len(self.starts) - 1 else \
            (self.starts[index + 1] + self.starts[index] + self.core) // 2
        return start, end

    def window(self, index: int) -> np.ndarray:
        """1-D blending weights over the core: linear ramps where the core overlaps a neighbour,
        1 elsewhere (also at the image border). Strictly positive so every pixel has weight."""
        weights = np.ones(self.core, dtype=np.float32)
        if self.ramp > 0:
            ramp = (np.arange(self.ramp, dtype=np.float32) + 0.5) / self.ramp
            if index > 0:
                weights[: self.ramp] = ramp
            if index < len(self.starts) - 1:
                weights[-self.ramp:] = np.minimum(weights[-self.ramp:], ramp[::-1])
        return weights


def plan_axis(length: int, tile: int, halo: int, divisor: int, min_tile: int = 1) -> AxisPlan:
    """Lay tiles along one axis of ``length`` pixels."""
    if length < 1:
        raise ValueError(f"cannot tile an axis of length {length}")
    divisor = max(1, int(divisor))
    # at least 16 px of core per tile, so tiles always advance
    tile = max(round_down(tile, divisor), round_up(max(min_tile, 2 * halo + 16), divisor))
    single = round_up(max(length + 2 * halo, min_tile), divisor)
    if single <= tile:  # one tile covers the whole axis
        return AxisPlan(single, single - 2 * halo, (0,), single - halo - length, 0)
    core = tile - 2 * halo
    # Overlap between neighbouring cores, blended with a ramp: residual differences between
    # tiles (context beyond the halo) fade smoothly instead of leaving a seam.
    ramp = max(1, min(max(halo, 8), core // 4))
    # Tile starts are multiples of the size divisor, so every tile sees the network's coarsest grid
    # (and a pixel_unshuffle stem's 2x2 groups) at the same image positions as a single pass does;
    # otherwise a tile shifted by half a coarse cell predicts differently and leaves a seam.
    step = max(divisor, round_down(core - ramp, divisor))
    count = -(-(length - core) // step) + 1
    # balance: the smallest tile that still needs only ``count`` tiles (less padding and overlap work)
    balanced = round_up(-(-(length - ramp) // count) + ramp + 2 * halo, divisor)
    if balanced < tile:
        tile, core = balanced, balanced - 2 * halo
        step = max(divisor, round_down(core - ramp, divisor))
        count = -(-(length - core) // step) + 1
    ramp = max(1, min(ramp, core - step))
    # the last core may run past the image end (the padding covers it); cores are cropped to the image
    last = round_up(max(length - core, 0), divisor)
    starts = [min(k * step, last) for k in range(count)]
    return AxisPlan(tile, core, tuple(starts), tile - halo - (length - starts[-1]), ramp)


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    halo: int
    rows: AxisPlan
    cols: AxisPlan

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.tile, self.cols.tile

    @property
    def core_shape(self) -> tuple[int, int]:
        return self.rows.core, self.cols.core

    @property
    def positions(self) -> list[tuple[int, int, int, int]]:
        """(row index, col index, y, x) of every tile, row-major."""
        return [(i, j, y, x) for i, y in enumerate(self.rows.starts) for j, x in enumerate(self.cols.starts)]

    def __len__(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def pad_width(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (self.halo, self.rows.pad_after), (self.halo, self.cols.pad_after)

    def weights(self, row: int, col: int) -> np.ndarray:
        return np.outer(self.rows.window(row), self.cols.window(col))

    def core_extent(self, y: int, x: int) -> tuple[int, int]:
        """Height and width of the core that lands inside the image (a single tile may be
        larger than the image after rounding to the size divisor)."""
        return min(self.rows.core, self.height - y), min(self.cols.core, self.width - x)


def plan_tiles(height: int, width: int, tile: int, halo: int, divisor: int = 1, min_tile: int = 1) -> TilePlan:
    if halo < 0:
        raise ValueError(f"halo must be >= 0; got {halo}")
    return TilePlan(height, width, halo, plan_axis(height, tile, halo, divisor, min_tile),
                    plan_axis(width, tile, halo, divisor, min_tile))


def reflect_pad(image: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Reflect-pad the two spatial axes (numpy repeats the reflection when the pad exceeds the image)."""
    widths = list(pad) + [(0, 0)] * (image.ndim - 2)
    if min(image.shape[:2]) == 1:  # reflection of a single row/column is undefined
        return np.pad(image, widths, mode="edge")
    return np.pad(image, widths, mode="reflect")
