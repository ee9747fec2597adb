"""Images too large for memory, read region by region: whole-slide files, (OME-)Zarr, dask and numpy arrays.

Whole-slide formats (SVS, NDPI, pyramidal / tiled TIFF, ...) go through ``tiffslide`` (pure-Python wheels,
no system library); OME-Zarr and plain zarr through ``zarr``; dask and numpy arrays are read by slicing.
Every source exposes the same small interface (:class:`SlideSource`): the shape of each pyramid level,
its downsample factor, the microns per pixel of level 0 when known, and ``read(level, y, x, h, w)``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: file suffixes opened as whole slides (through tiffslide); TIFFs are slides when they hold a pyramid
SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".vmu", ".svslide", ".qptiff")
ZARR_SUFFIXES = (".zarr",)
#: a model's pixel size may differ from the chosen level's by this factor before the engine rescales
SCALE_TOLERANCE = 1.15


@dataclass
class SlideSource:
    """A 2-D image readable by region. ``levels``: (height, width) per pyramid level, finest first;
    ``downsamples``: level-0 pixels per level pixel; ``mpp``: microns per level-0 pixel (None: unknown)."""

    name: str
    levels: list[tuple[int, int]]
    downsamples: list[float]
    mpp: float | None = None
    channels: int = 3
    dtype: Any = np.uint8
    path: str | None = None
    _reader: Any = field(default=None, repr=False)
    _arrays: Sequence[Any] | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels[0]

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Pixels ``[y:y+height, x:x+width]`` of ``level`` (level coordinates), clipped to the level."""
        level_h, level_w = self.levels[level]
        y0, x0 = max(0, int(y)), max(0, int(x))
        y1, x1 = min(level_h, int(y) + int(height)), min(level_w, int(x) + int(width))
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"region y={y} x={x} {height}×{width} lies outside level {level} ({level_h}×{level_w})")
        if self._reader is not None:
            scale = self.downsamples[level]
            region = self._reader.read_region((int(round(x0 * scale)), int(round(y0 * scale))), level,
                                              (x1 - x0, y1 - y0), as_array=True, padding=False)
            region = np.asarray(region)
            if region.ndim == 3 and region.shape[2] == 4:  # RGBA from the slide reader: alpha carries nothing
                region = region[..., :3]
            return np.ascontiguousarray(region)
        array = self._arrays[level]
        region = array[y0:y1, x0:x1]
        if hasattr(region, "compute"):  # dask
            region = region.compute()
        return np.ascontiguousarray(np.asarray(region))

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """The coarsest level no larger than ``max_side`` on its longer side (or the coarsest there is,
        subsampled), with its level-0 pixels per thumbnail pixel."""
        candidates = [i for i, (h, w) in enumerate(self.levels) if max(h, w) <= max_side]
        level = candidates[0] if candidates else len(self.levels) - 1
        h, w = self.levels[level]
        step = max(1, math.ceil(max(h, w) / max_side))
        if step == 1:
            return self.read(level, 0, 0, h, w), self.downsamples[level]
        rows = []  # stride through the level in bands so that memory stays at one band
        band = max(step, (4096 // step) * step)
        for y in range(0, h, band):
            rows.append(self.read(level, y, 0, min(band, h - y), w)[::step, ::step])
        return np.concatenate(rows, axis=0), self.downsamples[level] * step

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def _from_arrays(name: str, arrays: Sequence[Any], mpp: float | None, path: str | None = None) -> SlideSource:
    levels, downsamples = [], []
    base_h = int(arrays[0].shape[0])
    for array in arrays:
        if array.ndim not in (2, 3):
            raise ValueError(f"{name}: expected a 2-D image (Y×X or Y×X×C) per level; got shape {tuple(array.shape)}")
        levels.append((int(array.shape[0]), int(array.shape[1])))
        downsamples.append(base_h / int(array.shape[0]))
    first = arrays[0]
    channels = int(first.shape[2]) if first.ndim == 3 else 1
    return SlideSource(name, levels, downsamples, mpp, channels, np.dtype(first.dtype), path, None, list(arrays))


def _open_zarr(path: Path) -> SlideSource:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return _from_arrays(path.name, [node], None, str(path))
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not multiscales:
        arrays = [v for _k, v in sorted(node.arrays())]
        if not arrays:
            raise ValueError(f"{path}: a zarr group without arrays or OME-Zarr 'multiscales' metadata")
        return _from_arrays(path.name, arrays[:1], None, str(path))
    spec = multiscales[0]
    axes = [a["name"] if isinstance(a, dict) else a for a in spec.get("axes", [])]
    arrays, mpp = [], None
    for index, dataset in enumerate(spec["datasets"]):
        array = node[dataset["path"]]
        # OME-Zarr orders axes t, c, z, y, x: keep y, x (and channels last), the first t / z
        if axes and len(axes) == array.ndim and axes[-2:] == ["y", "x"]:
            selection = tuple(0 if a in ("t", "z") else slice(None) for a in axes)
            import dask.array as da

            view = da.from_zarr(array)[selection]
            if "c" in axes:
                view = da.moveaxis(view, [a for a in axes if a not in ("t", "z")].index("c"), -1)
            array = view
        arrays.append(array)
        if index == 0:
            for transform in dataset.get("coordinateTransformations", []):
                if transform.get("type") == "scale" and axes and axes[-1] == "x":
                    unit = next((a.get("unit") for a in spec.get("axes", []) if isinstance(a, dict)
                                 and a.get("name") == "x"), None)
                    if unit in ("micrometer", "micron", "um", None):
                        mpp = float(transform["scale"][-1])
    return _from_arrays(path.name, arrays, mpp, str(path))


def _open_tiffslide(path: Path) -> SlideSource:
    import tiffslide

    reader = tiffslide.TiffSlide(str(path))
    props = reader.properties
    mpp = props.get("tiffslide.mpp-x")
    levels = [(int(h), int(w)) for w, h in reader.level_dimensions]
    downsamples = [float(d) for d in reader.level_downsamples]
    return SlideSource(path.name, levels, downsamples, float(mpp) if mpp else None, 3, np.uint8, str(path), reader)


def is_slide_path(path: str | os.PathLike) -> bool:
    """Whole-slide suffixes, zarr stores, and TIFFs holding more than one pyramid level."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(ZARR_SUFFIXES) or name.endswith(SLIDE_SUFFIXES):
        return True
    if name.endswith((".tif", ".tiff")) and path.is_file():
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                return len(tif.series) > 0 and len(tif.series[0].levels) > 1
        except Exception:  # not a TIFF we can read: the ordinary reader will say why
            return False
    return False


def open_slide(source: Any, mpp: float | None = None) -> SlideSource:
    """A :class:`SlideSource` for a path (slide, TIFF, zarr store), a numpy or dask array, or a list of
    arrays (a pyramid, finest first). ``mpp`` overrides the microns per level-0 pixel."""
    if isinstance(source, SlideSource):
        return source
    if isinstance(source, (list, tuple)) and source and hasattr(source[0], "shape"):
        slide = _from_arrays("pyramid", list(source), mpp)
    elif hasattr(source, "shape") and hasattr(source, "dtype"):
        slide = _from_arrays(type(source).__name__, [source], mpp)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"slide {path} does not exist")
        if path.name.lower().endswith(ZARR_SUFFIXES) or (path.is_dir() and (path / ".zgroup").exists()
                                                         or (path / "zarr.json").exists()):
            slide = _open_zarr(path)
        elif path.is_file():
            try:
                slide = _open_tiffslide(path)
            except Exception as exc:  # tiffslide raises many types for files it cannot read
                raise ValueError(f"{path} could not be opened as a slide ({type(exc).__name__}: {exc}); "
                                 "whole-slide formats read here: SVS, NDPI, SCN, BIF, generic (pyramidal) TIFF, "
                                 "OME-Zarr / zarr") from None
        else:
            raise ValueError(f"{path} is a folder but not a zarr store")
    if mpp is not None:
        if not (math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"mpp must be a positive number of microns per pixel; got {mpp}")
        slide.mpp = float(mpp)
    return slide


def choose_level(slide: SlideSource, model_pixel_size_um: float | None) -> tuple[int, float]:
    """(level, scale) to segment ``slide`` with a model trained at ``model_pixel_size_um``: the coarsest
    level whose pixels are not larger than the model's by more than ``SCALE_TOLERANCE`` (fewer pixels, same
    nuclei), and the resize factor the engine applies to that level (1 when within the tolerance).
    Level 0 at scale 1 when either pixel size is unknown."""
    if slide.mpp is None or not model_pixel_size_um:
        return 0, 1.0
    best = 0
    for level in range(len(slide.levels)):
        if slide.level_mpp(level) <= model_pixel_size_um * SCALE_TOLERANCE:
            best = level
    ratio = slide.level_mpp(best) / model_pixel_size_um
    scale = 1.0 if 1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE else ratio
    return best, float(scale)


def intensity_range(slide: SlideSource, normalize: str = "auto", percentiles: tuple[float, float] = (1.0, 99.8),
                    max_side: int = 2048) -> tuple[float, float] | None:
    """The slide-wide (low, high) values that map to 0 and 255, from a thumbnail, or None when the engine
    would not percentile-normalise this data (uint8, or floats already in 0–1 / 0–255 with "auto";
    ``normalize="none"``). Per region, percentiles would stretch a dim region of a 16-bit / fluorescence
    slide as much as a bright one, so the same nucleus would look different from region to region."""
    if normalize == "none":
        return None
    thumb, _factor = slide.thumbnail(max_side)
    data = np.asarray(thumb)
    if normalize == "auto":
        if data.dtype == np.uint8:
            return None
        if np.issubdtype(data.dtype, np.floating):
            finite = data[np.isfinite(data)]
            if finite.size and float(finite.min()) >= 0.0 and float(finite.max()) <= 255.0:
                return None
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
    if finite.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    return (low, max(high, low + 1.0))


def apply_intensity_range(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """``image`` mapped linearly so that ``value_range`` becomes 0–255 (clipped), float32."""
    low, high = value_range
    data = np.asarray(image, dtype=np.float32)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=low, posinf=high, neginf=low)
    return np.clip((data - low) * (255.0 / (high - low)), 0.0, 255.0)


def tissue_mask(slide: SlideSource, max_side: int = 2048) -> tuple[np.ndarray | None, float]:
    """(mask, level-0 pixels per mask pixel) of where there is tissue, from a thumbnail: bright-field
    slides (RGB on a bright background) by Otsu's threshold on saturation and darkness; ``None`` for
    fluorescence / gray images (dark background: every region is segmented)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    thumb, factor = slide.thumbnail(max_side)
    if thumb.ndim != 3 or thumb.shape[2] < 3:
        return None, factor
    rgb = thumb[..., :3].astype(np.float32)
    if rgb.max() > 255:
        rgb = rgb / rgb.max() * 255
    brightness = rgb.mean(axis=2)
    if np.median(brightness) < 100:  # dark background: not a bright-field slide
        return None, factor
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    signal = saturation + np.clip(220 - brightness, 0, None)  # stained (coloured) or dark: tissue
    if float(signal.max() - signal.min()) < 8:  # uniform: all tissue or all glass; segment it all
        return np.ones(signal.shape, bool), factor
    # glass is bright and grey (signal near 0), stained tissue well above 20; Otsu places the cut between
    # them, but clipped so that a slide of tissue only (no glass) is not split into light and dark tissue
    threshold = float(np.clip(threshold_otsu(signal), 10.0, 25.0))
    mask = ndimage.binary_opening(signal > threshold, iterations=1)
    mask = ndimage.binary_dilation(mask, iterations=4)  # nuclei on the tissue's edge stay inside
    return mask, factor
