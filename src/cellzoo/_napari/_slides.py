"""Whole slides in napari: a lazy multiscale Image layer, and the Labels of a slide result from its zarr store.

Nothing here loads a slide into memory: each pyramid level is a dask array whose chunks are read from the
slide (:class:`cellzoo.slide.SlideSource`) only when napari draws them; the result's labels are the zarr
arrays of the OME-Zarr store the engine wrote, level by level.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

META_SLIDE = "cellzoo_slide"


class _LevelView:
    """Array-like view of one level that dask can slice (shape, dtype, ndim, __getitem__)."""

    def __init__(self, source, level: int) -> None:
        self.source, self.level = source, level
        h, w = source.levels[level]
        self.shape = (h, w, 3) if source.channels >= 3 else (h, w)
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        ys, xs = (list(key) + [slice(None), slice(None)])[:2]
        h, w = self.shape[:2]
        y0, y1, _ = ys.indices(h)
        x0, x1, _ = xs.indices(w)
        region = self.source.read(self.level, y0, x0, y1 - y0, x1 - x0)
        if self.ndim == 3 and region.ndim == 2:
            region = np.repeat(region[..., None], 3, axis=2)
        rest = tuple(key[2:])
        return region[(slice(None), slice(None)) + rest] if rest else region


def slide_levels(path: str | Path, chunk: int = 1024) -> tuple[list[Any], dict[str, Any]]:
    """(dask array per level, layer keyword arguments) of a slide, lazily."""
    import dask.array as da

    from cellzoo.slide import open_slide

    source = open_slide(path)
    arrays = []
    for level in range(len(source.levels)):
        view = _LevelView(source, level)
        chunks = (chunk, chunk) + ((view.shape[2],) if view.ndim == 3 else ())
        arrays.append(da.from_array(view, chunks=chunks, asarray=False, fancy=False))
    scale = (source.mpp, source.mpp) if source.mpp else (1.0, 1.0)
    kwargs = {"name": Path(path).name.split(".")[0], "multiscale": len(arrays) > 1, "rgb": arrays[0].ndim == 3,
              "scale": scale, "metadata": {META_SLIDE: {"path": str(path), "mpp": source.mpp,
                                                        "downsamples": list(source.downsamples)}}}
    return (arrays if len(arrays) > 1 else arrays[0]), kwargs


def read_slide(path: Path) -> list[tuple[Any, dict[str, Any], str]]:
    data, kwargs = slide_levels(path)
    return [(data, kwargs, "image")]


def slide_info(layer) -> dict[str, Any] | None:
    """The slide behind an Image layer opened by :func:`read_slide` (path, mpp, downsamples), else None."""
    return (getattr(layer, "metadata", None) or {}).get(META_SLIDE)


def canvas_size(viewer) -> tuple[int, int]:
    """(height, width) of the canvas in screen pixels (napari has no public call for it)."""
    return tuple(int(v) for v in viewer.window._qt_viewer.canvas.size)


def field_of_view(layer, viewer) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) in level-0 pixels of the part of ``layer`` the canvas shows: the camera's centre
    and zoom over the canvas size, mapped from world to the layer's data coordinates, clipped to it."""
    height, width = canvas_size(viewer)
    zoom = float(viewer.camera.zoom)
    cy, cx = (float(v) for v in viewer.camera.center[-2:])
    half_h, half_w = height / zoom / 2, width / zoom / 2
    corners = np.array([layer.world_to_data((cy + dy, cx + dx))[-2:] for dy in (-half_h, half_h)
                        for dx in (-half_w, half_w)])
    (y0, x0), (y1, x1) = corners.min(axis=0), corners.max(axis=0)
    full_h, full_w = (layer.data[0] if getattr(layer, "multiscale", False) else layer.data).shape[:2]
    y0, x0 = max(0, int(np.floor(y0))), max(0, int(np.floor(x0)))
    y1, x1 = min(full_h, int(np.ceil(y1))), min(full_w, int(np.ceil(x1)))
    if y1 <= y0 or x1 <= x0:
        raise ValueError("the slide is not in view: pan or zoom to it, or choose the whole slide")
    return y0, x0, y1, x1


def add_slide_labels(viewer, image_layer, store: Path, class_names: list[str], result, name: str | None = None) -> Any:
    """A (multiscale) Labels layer backed by the result's zarr store, aligned with the slide layer."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    levels = [group[d["path"]] for d in group.attrs["multiscales"][0]["datasets"]]
    info = slide_info(image_layer) or {}
    downsample = float((info.get("downsamples") or [1.0])[result.level])
    scale = tuple(float(s) * downsample for s in image_layer.scale[-2:])
    name = name or f"{image_layer.name} instances"
    if name in viewer.layers:
        viewer.layers.remove(name)
    return viewer.add_labels(levels if len(levels) > 1 else levels[0], name=name, scale=scale,
                             translate=tuple(image_layer.translate[-2:]), multiscale=len(levels) > 1,
                             metadata={"cellzoo": {"class_names": list(class_names), "store": str(store),
                                                   "image_layer": image_layer.name, "slide": True}})
