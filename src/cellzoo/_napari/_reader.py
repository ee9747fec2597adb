"""napari reader: images, label maps and the annotation formats cellzoo understands.

Raster files (tif/png/jpg/bmp) become an Image layer, or a Labels layer when they hold an integer
2-D map in a label-ish place (``labels/``, ``masks/``, ``inst/`` folders or ``*_labels``/``*_mask``
names; ``class/`` folders give class maps). Annotation files (MoNuSeg/MoNuSAC XML, CoNIC ``.npy``,
COCO ``.json``, GeoJSON) and dataset folders are parsed by :mod:`cellzoo.data`; this module only maps
the results to napari layer tuples.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cellzoo.data.io import IMAGE_SUFFIXES, read_class_map, read_image, labels_as_int32

LayerData = tuple[Any, dict[str, Any], str]

LABEL_FOLDERS = {"labels", "label", "masks", "mask", "inst", "instances", "gt", "groundtruth", "ground_truth"}
CLASS_FOLDERS = {"class", "classes", "type", "types"}
LABEL_NAME_ENDINGS = ("_labels", "_label", "_mask", "_masks", "_inst", "_instances", "_gt")
ANNOTATION_SUFFIXES = (".xml", ".npy", ".json", ".geojson")


def _is_label_path(path: Path) -> bool:
    stem = path.stem.lower()
    return path.parent.name.lower() in LABEL_FOLDERS or stem.endswith(LABEL_NAME_ENDINGS)


def _is_class_path(path: Path) -> bool:
    return path.parent.name.lower() in CLASS_FOLDERS


def _single_path(path: str | list[str]) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(os.fspath(path))


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader function for ``path`` or ``None`` when cellzoo does not read it."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    readers = []
    for p in paths:
        reader = _reader_for(Path(os.fspath(p)))
        if reader is None:
            return None
        readers.append(reader)

    def read(path_arg: str | list[str]) -> list[LayerData]:
        items = path_arg if isinstance(path_arg, (list, tuple)) else [path_arg]
        layers: list[LayerData] = []
        for reader, p in zip(readers, items):
            layers.extend(reader(Path(os.fspath(p))))
        return layers

    return read


def _reader_for(path: Path) -> Callable[[Path], list[LayerData]] | None:
    suffix = path.suffix.lower()
    if path.is_dir():
        # dataset / class-folder layouts: cellzoo.data decides; napari falls back to its own reader
        return read_annotation
    if suffix in IMAGE_SUFFIXES:
        return read_raster
    if suffix in ANNOTATION_SUFFIXES:
        return read_annotation
    return None


# ----------------------------------------------------------------------------- rasters
def read_raster(path: Path) -> list[LayerData]:
    """An image, an instance map or a class map, decided by dtype and where the file sits."""
    data = read_image(path)
    integer_2d = np.squeeze(data).ndim == 2 and data.dtype.kind in "iu"
    meta = {"metadata": {"source_path": str(path)}}
    if integer_2d and _is_class_path(path):
        return [(read_class_map(path), {"name": f"{path.stem} classes", **meta}, "labels")]
    if integer_2d and _is_label_path(path):
        labels = labels_as_int32(np.squeeze(data), source=path.name)
        return [(labels, {"name": path.stem, **meta}, "labels")]
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4) and data.dtype in (np.uint8, np.uint16)
    return [(data, {"name": path.stem, "rgb": rgb, **meta}, "image")]


# ----------------------------------------------------------------------------- annotations
def _annotation_layers(path: Path, annotations: Any) -> list[LayerData]:
    """Instance and class maps from whatever :func:`cellzoo.data.auto_read_annotation` returned."""
    layers: list[LayerData] = []
    items = annotations if isinstance(annotations, (list, tuple)) else [annotations]
    several = len(items) > 1
    for index, item in enumerate(items):
        name = getattr(item, "name", None) or (f"{path.stem} {index}" if several else path.stem)
        labels = getattr(item, "labels", None)
        classes = getattr(item, "classes", None)
        class_names = getattr(item, "class_names", None)
        meta = {"source_path": str(path)}
        if class_names:
            meta["class_names"] = list(class_names)
        if labels is None:
            raise ValueError(f"{path.name}: no instance map could be built from this annotation.")
        layers.append((labels_as_int32(labels, source=path.name), {"name": name, "metadata": meta}, "labels"))
        if classes is not None and np.any(classes):
            layers.append((np.asarray(classes, dtype=np.uint8),
                           {"name": f"{name} classes", "metadata": meta}, "labels"))
    return layers


def read_annotation(path: Path) -> list[LayerData]:
    from cellzoo import data

    return _annotation_layers(path, data.auto_read_annotation(path))
