"""Segment an image of any size in bounded memory: region by region, labels written into a zarr store.

The slide is cut into square regions (``region`` px of the chosen level); each is read with a ``margin``
around it and segmented by the ordinary engine (``cellzoo.infer.segment_iter``: tiles, halos and the
model's own post-processing, all inside the region). Of a region's instances only those whose centroid
lies in the region's core are kept, so a nucleus cut by a region border is kept whole by the region that
holds its centre (the margin must exceed the largest nucleus' radius). Kept instances get slide-wide ids
in region order and are written into a chunked int32 zarr array; regions where the tissue mask finds no
tissue are skipped. Memory depends on the region and margin, not the slide.

Outputs: ``<stem>.ome.zarr`` (multiscale OME-Zarr 0.4 labels, level-0 pixel size in its metadata),
``<stem>_nuclei.csv`` (id, class, area, centroid in level-0 pixels and microns, score) and optionally
``<stem>_nuclei.parquet`` (the same table, typed; needs pyarrow) and ``<stem>.geojson`` (QuPath, level-0
coordinates). Regions can run on a dask.distributed cluster
(``scheduler``): each worker loads the model and opens the slide once; the writer stays here and writes
in region order, so the result equals a single-process run.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterator, Sequence

import numpy as np

from ..types import Message, Progress, check_cancel
from .source import SlideSource, choose_level, intensity_range, open_slide, tissue_mask

#: region edge (px of the chosen level) and the margin read around it
DEFAULT_REGION, DEFAULT_MARGIN = 2048, 96
#: zarr chunk edge of the label store
CHUNK = 1024


@dataclass
class Region:
    """``core`` and ``window`` (read) as (y0, x0, y1, x1) in level pixels."""

    index: int
    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


@dataclass
class RegionResult:
    index: int
    window: tuple[int, int, int, int]
    labels: np.ndarray  # window-sized int32, kept instances only, ids 1..n
    classes: np.ndarray  # class id of local id k at [k - 1]
    areas: np.ndarray
    centroids: np.ndarray  # n × 2 (y, x), level pixels, slide coordinates
    scores: np.ndarray
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SlideStore:
    """Yielded once the label store exists (under its temporary name): a viewer can show it and refresh it
    as regions arrive; it moves to its final name when the run ends."""

    path: Path
    level: int
    downsample: float


@dataclass
class SlideResult:
    store: Path | None
    table: Path | None
    geojson: Path | None
    count: int
    level: int
    scale: float
    regions: int
    skipped: int
    seconds: float
    shape: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)
    parquet: Path | None = None


#: the nucleus table's columns and their Arrow types (the Parquet copy; the CSV writes the same columns)
TABLE_COLUMNS = (("id", "int64"), ("class", "int32"), ("class_name", "string"), ("area_px", "int64"),
                 ("area_um2", "float64"), ("centroid_y", "float64"), ("centroid_x", "float64"),
                 ("centroid_y_um", "float64"), ("centroid_x_um", "float64"), ("score", "float64"))


def plan_regions(shape: tuple[int, int], region: int = DEFAULT_REGION, margin: int = DEFAULT_MARGIN,
                 mask: np.ndarray | None = None, mask_per_pixel: float = 1.0, align: int = 1,
                 bounds: tuple[int, int, int, int] | None = None) -> tuple[list[Region], int]:
    """Regions covering ``shape`` (level pixels) and how many were skipped for lack of tissue.
    ``mask_per_pixel``: level pixels per mask pixel. ``align``: windows start on multiples of it — the
    model's total stride, since a strided network sees the same pixels differently when they are shifted
    by anything else (the engine's own tiles are aligned the same way). ``bounds``: (y0, x0, y1, x1), only
    this part of the level (a field of view, a drawn rectangle); margins may reach beyond it."""
    if region < 64:
        raise ValueError(f"region must be at least 64 px; got {region}")
    region = max(align, region // align * align)
    if margin < 0:
        raise ValueError(f"margin must be >= 0; got {margin}")
    height, width = shape
    by0, bx0, by1, bx1 = (0, 0, height, width) if bounds is None else (
        max(0, int(bounds[0])), max(0, int(bounds[1])), min(height, int(bounds[2])), min(width, int(bounds[3])))
    if by1 <= by0 or bx1 <= bx0:
        raise ValueError(f"the area to segment {bounds} lies outside the image ({height}×{width})")
    regions, skipped = [], 0
    for y0 in range(by0, by1, region):
        for x0 in range(bx0, bx1, region):
            y1, x1 = min(y0 + region, by1), min(x0 + region, bx1)
            if mask is not None:
                my0, mx0 = int(y0 / mask_per_pixel), int(x0 / mask_per_pixel)
                my1, mx1 = int(math.ceil(y1 / mask_per_pixel)), int(math.ceil(x1 / mask_per_pixel))
                if not mask[my0:max(my1, my0 + 1), mx0:max(mx1, mx0 + 1)].any():
                    skipped += 1
                    continue
            wy0, wx0 = max(0, (y0 - margin) // align * align), max(0, (x0 - margin) // align * align)
            window = (wy0, wx0, min(height, y1 + margin), min(width, x1 + margin))
            regions.append(Region(len(regions), (y0, x0, y1, x1), window))
    return regions, skipped


def keep_core_instances(instances, window: tuple[int, int, int, int], core: tuple[int, int, int, int]):
    """The instances of a window whose centroid (slide coordinates) lies in ``core`` (half-open, so a
    centre on a border belongs to exactly one region), relabelled 1..n, with their class (majority of the
    class map), area, centroid (slide coordinates) and score."""
    from ..annotate.index import InstanceIndex

    labels = np.asarray(instances.labels)
    table = InstanceIndex.build(labels, instances.class_map(), default_class=1).table(scores=instances.scores)
    gy, gx = table["centroid_y"] + window[0], table["centroid_x"] + window[1]
    inside = (gy >= core[0]) & (gy < core[2]) & (gx >= core[1]) & (gx < core[3])
    kept = table["label"][inside]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lut[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    return (lut[labels], table["class"][inside].astype(np.int32), table["area"][inside].astype(np.int64),
            np.stack([gy[inside], gx[inside]], axis=1), table["score"][inside])


def segment_region(model, slide: SlideSource, level: int, region: Region, scale: float = 1.0,
                   options: dict[str, Any] | None = None) -> RegionResult:
    """Read one region with its margin, segment it, keep the instances centred in its core."""
    from ..infer.engine import segment_iter
    from ..types import run_to_end

    started = time.perf_counter()
    y0, x0, y1, x1 = region.window
    image = slide.read(level, y0, x0, y1 - y0, x1 - x0)
    options = dict(options or {})
    value_range = options.pop("intensity_range", None)
    if value_range is not None:  # the slide's own range (see source.intensity_range), the same in every region
        from .source import apply_intensity_range

        image = apply_intensity_range(image, value_range)
        options["normalize"] = "none"
    instances = run_to_end(segment_iter(model, image, scale=scale, **options))
    labels, classes, areas, centroids, scores = keep_core_instances(instances, region.window, region.core)
    meta = {k: instances.meta.get(k) for k in ("device", "precision")}
    return RegionResult(region.index, region.window, labels, classes, areas, centroids, scores,
                        time.perf_counter() - started, meta)


# ----------------------------------------------------------------------------- writing
def _temporary_dir(final: Path) -> Path:
    for _ in range(100):
        candidate = final.parent / f".{final.name}.{secrets.token_hex(4)}.part"
        try:
            candidate.mkdir(mode=0o777)  # the umask decides, as for any folder the user makes
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary folder next to {final}")


class SlideWriter:
    """Label store (OME-Zarr, multiscale), nucleus table (CSV) and GeoJSON, each built under a hidden
    temporary name and renamed into place only by :meth:`finish` (a killed run leaves no half result
    under a final name)."""

    def __init__(self, out_dir: Path, stem: str, shape: tuple[int, int], *, downsample: float, mpp: float | None,
                 class_names: Sequence[str], geojson: bool = False, overwrite: bool = False,
                 parquet: bool = False) -> None:
        import zarr

        from .._atomic import make_output_folder

        self.out_dir = make_output_folder(out_dir)
        self.paths = {"store": self.out_dir / f"{stem}.ome.zarr", "table": self.out_dir / f"{stem}_nuclei.csv"}
        if geojson:
            self.paths["geojson"] = self.out_dir / f"{stem}.geojson"
        if parquet:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ValueError("a Parquet table needs pyarrow: pip install 'napari-cellzoo[parquet]' (or leave "
                                 "out --parquet: the CSV table holds the same columns)") from None
            self.paths["parquet"] = self.out_dir / f"{stem}_nuclei.parquet"
        existing = [p for p in self.paths.values() if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"results of an earlier run exist ({', '.join(map(str, existing))}); pass "
                                  "--overwrite (overwrite=True) to replace them, or choose another output folder")
        self.shape, self.downsample, self.mpp = tuple(shape), float(downsample), mpp
        self.class_names = list(class_names)
        self.store_tmp = _temporary_dir(self.paths["store"])
        self.root = zarr.open_group(str(self.store_tmp), mode="w", zarr_format=2)
        self.labels = self.root.create_array("0", shape=self.shape, chunks=(CHUNK, CHUNK), dtype="int32",
                                             fill_value=0)
        self.next_id = 1
        self._create_pyramid()
        # the table and the GeoJSON are streamed to hidden temporaries through the run (memory stays bounded);
        # closing ``_outputs`` renames them into place (finish), or removes them (abort)
        self._outputs = contextlib.ExitStack()
        self.table_file = self._streamed(self.paths["table"])
        self.table = csv.writer(self.table_file)
        self.table.writerow([name for name, _type in TABLE_COLUMNS])
        self.geojson_file = None
        if geojson:
            self.geojson_file = self._streamed(self.paths["geojson"])
            self.geojson_file.write('{"type": "FeatureCollection", "features": [\n')
            self.first_feature = True

    def _streamed(self, path: Path):
        """A text file open for the run under a hidden temporary name (:func:`cellzoo._atomic.atomic_path`)."""
        from .._atomic import atomic_path

        temporary = self._outputs.enter_context(atomic_path(path))
        self._temporaries = {**getattr(self, "_temporaries", {}), path: temporary}
        return self._outputs.enter_context(open(temporary, "w", newline="", encoding="utf-8"))

    def _write_parquet(self) -> None:
        """The finished CSV table, streamed batch by batch (bounded memory) into ``<stem>_nuclei.parquet``,
        under a temporary name that :meth:`finish` renames with the others."""
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        from .._atomic import atomic_path

        self.table_file.flush()
        schema = pa.schema([(name, pa.type_for_alias(kind)) for name, kind in TABLE_COLUMNS])
        temporary = self._outputs.enter_context(atomic_path(self.paths["parquet"]))
        reader = pacsv.open_csv(self._temporaries[self.paths["table"]],
                                convert_options=pacsv.ConvertOptions(column_types=schema))
        with pq.ParquetWriter(temporary, schema) as writer:
            for batch in reader:
                writer.write_batch(batch)

    def add(self, result: RegionResult) -> None:
        n = int(result.classes.size)
        if n == 0:
            return
        y0, x0, y1, x1 = result.window
        current = self.labels[y0:y1, x0:x1]
        mine = result.labels > 0
        free = mine & (current == 0)  # pixels of a nucleus kept by an earlier region stay its own
        current[free] = result.labels[free] + (self.next_id - 1)
        self.labels[y0:y1, x0:x1] = current
        self._update_pyramid(result.window)
        ids = np.arange(self.next_id, self.next_id + n)
        scale = self.downsample
        pixel_um2 = (self.mpp * scale) ** 2 if self.mpp else None
        for k in range(n):
            cls = int(result.classes[k])
            cy, cx = result.centroids[k] * scale  # level-0 pixels
            name = self.class_names[cls] if 0 <= cls < len(self.class_names) else str(cls)
            self.table.writerow([int(ids[k]), cls, name, int(result.areas[k]),
                                 "" if pixel_um2 is None else f"{result.areas[k] * pixel_um2:.2f}",
                                 f"{cy:.1f}", f"{cx:.1f}",
                                 "" if self.mpp is None else f"{cy * self.mpp:.2f}",
                                 "" if self.mpp is None else f"{cx * self.mpp:.2f}",
                                 "" if not np.isfinite(result.scores[k]) else f"{result.scores[k]:.4f}"])
        if self.geojson_file is not None:
            self._add_features(result, ids)
        self.next_id += n

    def _add_features(self, result: RegionResult, ids: np.ndarray) -> None:
        from ..data.geojson import labels_to_geojson

        class_map = np.zeros(result.classes.size + 1, np.int32)
        class_map[1:] = result.classes
        collection = labels_to_geojson(result.labels, class_map[result.labels], self.class_names,
                                       object_type="detection")
        y0, x0 = result.window[:2]
        scale = self.downsample
        for feature in collection["features"]:
            local = int(feature["properties"]["instance_id"])
            feature["properties"]["instance_id"] = int(ids[local - 1])
            feature["geometry"]["coordinates"] = _shift(feature["geometry"]["coordinates"], x0, y0, scale)
            self.geojson_file.write(("" if self.first_feature else ",\n") + json.dumps(feature))
            self.first_feature = False

    def _create_pyramid(self, min_side: int = 256) -> None:
        """Levels 1.. (each half the one before, down to ``min_side``), empty until regions arrive: the store
        is a valid multiscale OME-Zarr from the start, so a viewer can show results as they are written."""
        self.levels = [self.labels]
        shape, index = self.shape, 0
        while min(shape) > min_side:
            index += 1
            shape = (math.ceil(shape[0] / 2), math.ceil(shape[1] / 2))
            self.levels.append(self.root.create_array(str(index), shape=shape, chunks=(CHUNK, CHUNK),
                                                      dtype="int32", fill_value=0))
        self._write_metadata()

    def _update_pyramid(self, window: tuple[int, int, int, int]) -> None:
        """Levels 1.. over ``window`` from level 0 by 2^L nearest-neighbour subsampling (label ids must not
        be blended); the window is widened to whole level-L pixels."""
        y0, x0, y1, x1 = window
        height, width = self.shape
        for level, target in enumerate(self.levels[1:], start=1):
            f = 2 ** level
            ry0, rx0 = y0 // f * f, x0 // f * f
            ry1, rx1 = min(height, -(-y1 // f) * f), min(width, -(-x1 // f) * f)
            block = self.labels[ry0:ry1:f, rx0:rx1:f]
            target[ry0 // f:ry0 // f + block.shape[0], rx0 // f:rx0 // f + block.shape[1]] = block

    def _write_metadata(self) -> None:
        # OME-Zarr 0.4 metadata written here: the ome-zarr package is not a dependency for this one JSON
        # block, and zarr writes the arrays themselves
        datasets = [self._dataset(str(i), 2 ** i) for i in range(len(self.levels))]
        unit = "micrometer" if self.mpp else None
        axes = [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in ("y", "x")]
        self.root.attrs.update({
            "multiscales": [{"version": "0.4", "name": self.paths["store"].name, "axes": axes, "datasets": datasets,
                             "metadata": {"method": "numpy subsampling [::2, ::2] (labels are not blended)"}}],
            "image-label": {"version": "0.4", "colors": [], "source": {"image": "../../"}},
            "cellzoo": {"class_names": self.class_names, "instances": self.next_id - 1},
        })

    def _dataset(self, path: str, factor: int) -> dict[str, Any]:
        pixel = (self.mpp or 1.0) * self.downsample * factor
        return {"path": path, "coordinateTransformations": [{"type": "scale", "scale": [pixel, pixel]}]}

    def finish(self) -> dict[str, Path]:
        if self.geojson_file is not None:
            self.geojson_file.write("\n]}\n")
        if "parquet" in self.paths:
            self._write_parquet()  # before any rename: if it fails, abort() leaves nothing under a final name
        self._write_metadata()
        self._replace_dir(self.store_tmp, self.paths["store"])
        self._outputs.close()  # files closed, then fsynced and renamed into place
        return dict(self.paths)

    @staticmethod
    def _replace_dir(tmp: Path, final: Path) -> None:
        if final.exists():  # --overwrite: move the old one aside first, so a final name is never half-written
            old = final.parent / f".{final.name}.{secrets.token_hex(4)}.old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)

    def abort(self) -> None:
        shutil.rmtree(self.store_tmp, ignore_errors=True)
        # closing with an exception makes atomic_path delete its temporary instead of renaming it
        self._outputs.__exit__(RuntimeError, RuntimeError("slide segmentation aborted"), None)


def _shift(coordinates, dx: float, dy: float, scale: float):
    if coordinates and isinstance(coordinates[0], (int, float)):
        return [round((coordinates[0] + dx) * scale, 2), round((coordinates[1] + dy) * scale, 2)]
    return [_shift(c, dx, dy, scale) for c in coordinates]


# ----------------------------------------------------------------------------- running
def _local_results(model, slide, level, regions, scale, options, cancel) -> Iterator[RegionResult]:
    for region in regions:
        check_cancel(cancel)
        yield segment_region(model, slide, level, region, scale, options)


def segment_slide_iter(model, slide, out_dir: str | os.PathLike, *, stem: str | None = None, level: int | None = None,
                       region: int = DEFAULT_REGION, margin: int | None = None, tissue: bool = True,
                       geojson: bool = False, parquet: bool = False, overwrite: bool = False,
                       scheduler: str | None = None,
                       mpp: float | None = None, bounds: tuple[int, int, int, int] | None = None, cancel=None,
                       **options) -> Generator[Any, None, SlideResult]:
    """Segment a slide (path, array, :class:`SlideSource`) region by region into ``out_dir``; yields
    ``Progress("regions", done, total)`` and returns :class:`SlideResult`. ``level``: pyramid level (default:
    by the model's ``pixel_size_um`` vs the slide's microns per pixel, :func:`choose_level`); ``margin``:
    default from the model's declared nucleus area (3 diameters, at least 64 px); ``tissue``: skip regions
    without tissue (bright-field); ``scheduler``: ``"local:N"`` (a LocalCluster of N single-threaded worker
    processes) or a dask scheduler address; ``bounds``: (y0, x0, y1, x1) in level-0 pixels, only the nuclei
    centred there (a field of view); ``options``: :func:`cellzoo.infer.segment_iter` options."""
    from ..infer.engine import resolve_model

    started = time.perf_counter()
    model_spec = model if isinstance(model, (str, os.PathLike)) else None
    model = resolve_model(model)
    source = open_slide(slide, mpp=mpp)
    stem = stem or Path(source.name).name.split(".")[0]
    metadata = getattr(model, "metadata", None) or {}
    chosen_level, scale = choose_level(source, metadata.get("pixel_size_um"))
    if level is not None:
        if not 0 <= level < len(source.levels):
            raise ValueError(f"level {level} does not exist: the slide has levels 0..{len(source.levels) - 1}")
        chosen_level, scale = level, 1.0
    if options.get("scale") not in (None, 1, 1.0):
        scale = float(options.pop("scale"))
    options.pop("scale", None)
    if margin is None:
        area = float(metadata.get("object_area") or 400.0)
        margin = int(max(64, math.ceil(3 * math.sqrt(4 * area / math.pi) / max(scale, 1e-6))))
    shape = source.levels[chosen_level]
    value_range = intensity_range(source, options.get("normalize", "auto"))
    if value_range is not None:
        options["intensity_range"] = value_range
        yield Message(f"intensities {value_range[0]:g}–{value_range[1]:g} (the slide's 1st–99.8th percentiles, "
                      "from its thumbnail) are mapped to 0–255 in every region")
    mask, per_mask = (tissue_mask(source) if tissue else (None, 1.0))
    level_per_mask = per_mask / source.downsamples[chosen_level]
    align = int(getattr(model, "size_divisor", 1) or 1) if scale == 1.0 else 1
    level_bounds = None if bounds is None else tuple(
        int(round(v / source.downsamples[chosen_level])) for v in bounds)
    regions, skipped = plan_regions(shape, region, margin, mask, level_per_mask, align, level_bounds)
    yield Message(f"{source.name}: level {chosen_level} ({shape[0]}×{shape[1]} px"
                  + (f", {source.level_mpp(chosen_level):.3f} µm/px" if source.mpp else ", pixel size unknown")
                  + f"), scale {scale:.2f}; {len(regions)} region(s) of {region} px with a {margin}-px margin"
                  + (f", {skipped} without tissue skipped" if skipped else ""))
    writer = SlideWriter(out_dir, stem, shape, downsample=source.downsamples[chosen_level], mpp=source.mpp,
                         class_names=list(getattr(model, "class_names", ["background", "nucleus"])),
                         geojson=geojson, overwrite=overwrite, parquet=parquet)
    meta: dict[str, Any] = {}
    yield SlideStore(writer.store_tmp, chosen_level, source.downsamples[chosen_level])
    try:
        if scheduler:
            from .distributed import distributed_results

            results = distributed_results(scheduler, model_spec or model, source, chosen_level, regions, scale,
                                          options, cancel)
        else:
            results = _local_results(model, source, chosen_level, regions, scale, options, cancel)
        yield Progress("regions", 0, len(regions))
        for done, result in enumerate(results, start=1):
            writer.add(result)
            meta.update({k: v for k, v in result.meta.items() if v is not None})
            yield Progress("regions", done, len(regions))
        check_cancel(cancel)
        paths = writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        if not isinstance(slide, SlideSource):
            source.close()
    return SlideResult(paths["store"], paths["table"], paths.get("geojson"), writer.next_id - 1, chosen_level, scale,
                       len(regions), skipped, time.perf_counter() - started, shape,
                       {**meta, "margin": margin, "region": region, "scheduler": scheduler,
                        "intensity_range": value_range}, paths.get("parquet"))


def segment_slide(model, slide, out_dir, on_event=None, **kwargs) -> SlideResult:
    from ..types import run_to_end

    return run_to_end(segment_slide_iter(model, slide, out_dir, **kwargs), on_event)


def read_slide_labels(store: str | os.PathLike, level: int = 0) -> np.ndarray:
    """A level of a label store written here, as a numpy array (small slides and tests)."""
    import zarr

    return np.asarray(zarr.open_group(str(store), mode="r")[str(level)][:])
