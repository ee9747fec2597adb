"""napari reader: images, label maps and the annotation formats cellzoo understands.

A raster becomes an Image layer, or a Labels layer when its content is a label map: integer,
single-channel, with background 0 and one connected region per value (instances) or a few values
spread over many regions (classes); see :func:`cellzoo.data.label_kind.raster_kind`. Folder and
file names play no part in that decision.

napari offers every reader whose filename patterns match a dropped file, and asks the user to pick
("Choose reader") when two match. napari's own reader claims every raster extension, so this
plugin's manifest claims only what napari cannot read itself (annotation formats, class folders)
and rasters whose names say they are label maps (``*label*``, ``*mask*``, ``*instance*``,
``*class*``; PNG/TIFF); plain image drops go to napari alone, without a dialog.
``viewer.open(path, plugin="napari-cellzoo")`` reads those label-named rasters directly.

Whole slides (SVS, NDPI, SCN, BIF, MRXS, QPTIFF; pyramidal TIFFs and ``.zarr`` stores opened with
this plugin) become a lazy multiscale Image layer (:mod:`cellzoo._napari._slides`).

Annotation files (MoNuSeg/MoNuSAC XML, CoNIC ``.npy``, COCO ``.json``, GeoJSON) and class folders
(``image.png`` + ``class1.png`` …) are parsed by :mod:`cellzoo.data`; this module only maps the
results to napari layer tuples.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cellzoo.data.io import IMAGE_SUFFIXES, read_image, labels_as_int32

LayerData = tuple[Any, dict[str, Any], str]

ANNOTATION_SUFFIXES = (".xml", ".npy", ".json", ".geojson")


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
    from cellzoo.slide.source import SLIDE_SUFFIXES, is_slide_path

    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES or (path.is_dir() and path.name.lower().endswith(".zarr")):
        from ._slides import read_slide

        return read_slide  # lazily, level by level: a slide is never loaded whole
    if suffix in (".tif", ".tiff") and is_slide_path(path):
        from ._slides import read_slide

        return read_slide
    if path.is_dir():
        return read_annotation if _is_class_folder(path) else None
    if suffix in IMAGE_SUFFIXES:
        return read_raster
    if suffix in ANNOTATION_SUFFIXES:
        return read_annotation
    return None


def _is_class_folder(path: Path) -> bool:
    from cellzoo.data.class_folders import class_folder_files

    try:
        class_folder_files(path)
    except (ValueError, FileNotFoundError):
        return False
    return True


# ----------------------------------------------------------------------------- rasters
def read_raster(path: Path) -> list[LayerData]:
    """An image, an instance map or a class map, decided by the pixels (see ``raster_kind``)."""
    from cellzoo.data.label_kind import raster_kind

    data = read_image(path)
    meta = {"metadata": {"source_path": str(path)}}
    kind = raster_kind(data).kind
    if kind == "classes" and int(data.max()) <= 255:
        return [(np.squeeze(data).astype(np.uint8), {"name": f"{path.stem} classes", **meta}, "labels")]
    if kind in ("classes", "instances"):
        labels = labels_as_int32(np.squeeze(data), source=path.name)
        return [(labels, {"name": path.stem, **meta}, "labels")]
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4) and data.dtype in (np.uint8, np.uint16)
    return [(data, {"name": path.stem, "rgb": rgb, **meta}, "image")]


# ----------------------------------------------------------------------------- annotations
def _meta(path: Path, class_names: list[str] | None = None, **links: str) -> dict[str, Any]:
    """Layer metadata; ``metadata["cellzoo"]`` follows the Segment/Correct widgets' convention
    (class names, and links between an instance layer and its class layer)."""
    meta: dict[str, Any] = {"source_path": str(path)}
    info: dict[str, Any] = dict(links)
    if class_names:
        info["class_names"] = list(class_names)
    if info:
        meta["cellzoo"] = info
    return meta


def _label_layers(path: Path, name: str, labels: np.ndarray, classes: np.ndarray | None,
                  class_names: list[str] | None) -> list[LayerData]:
    has_classes = classes is not None and bool(np.any(classes))
    class_layer = f"{name} classes"
    links = {"classes_layer": class_layer} if has_classes else {}
    layers: list[LayerData] = [(labels, {"name": name, "metadata": _meta(path, class_names, **links)}, "labels")]
    if has_classes:
        layers.append((np.asarray(classes, dtype=np.uint8),
                       {"name": class_layer, "metadata": _meta(path, class_names, instances_layer=name),
                        "visible": False}, "labels"))
    return layers


def sibling_image_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) of the image an annotation file belongs to: same stem, next to it or in ``../images``.

    Polygon formats (XML, GeoJSON, COCO) do not always record the image size; without it the label
    map would only reach the last vertex and not line up with the image.
    """
    folders = [path.parent, path.parent.parent / "images", path.parent.parent / "Tissue Images"]
    for folder in folders:
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{path.stem}{suffix}"
            if candidate.is_file() and candidate != path:
                return tuple(read_image(candidate).shape[:2])
    return None


def read_annotation(path: Path) -> list[LayerData]:
    """Annotation files and class folders through :mod:`cellzoo.data`."""
    from cellzoo.data.formats import auto_read_annotation, json_kind

    suffix = path.suffix.lower()
    if path.is_dir():
        from cellzoo.data.class_folders import read_class_folder

        image, labels, classes = read_class_folder(path)
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        return [(image, {"name": path.name, "rgb": rgb, "metadata": _meta(path)}, "image"),
                *_label_layers(path, f"{path.name} labels", labels, classes, None)]
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".json":
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} is not valid JSON ({exc}).") from exc
        if json_kind(data) == "coco" and len(data["images"]) > 1:
            return _read_coco_images(path, data)
    labels, classes, class_names = auto_read_annotation(path, sibling_image_shape(path))
    return _label_layers(path, path.stem, labels, classes, class_names)


def _read_coco_images(path: Path, data: dict) -> list[LayerData]:
    """One Labels layer (and class layer) per image of a multi-image COCO file."""
    from cellzoo.data.coco import coco_to_labels

    layers: list[LayerData] = []
    for entry in data["images"]:
        labels, classes, class_names = coco_to_labels(data, entry["id"])
        name = Path(str(entry.get("file_name") or entry["id"])).stem
        layers.extend(_label_layers(path, name, labels, classes, class_names))
    return layers


def _stack_kind(array: np.ndarray) -> str:
    """raster_kind of a stack's first plane that is not all zero (its pixels, not its file name)."""
    from cellzoo.data.label_kind import raster_kind

    plane = next((plane for plane in array if np.any(plane)), array[0])
    return raster_kind(np.asarray(plane)).kind


def _read_npy(path: Path) -> list[LayerData]:
    """CoNIC-style arrays: ``images.npy`` N×H×W×3 → image stack, ``labels.npy`` N×H×W×2 → instances +
    classes stacks; single H×W(×2) maps go through :func:`cellzoo.data.formats.auto_read_annotation`."""
    from cellzoo.data.formats import auto_read_annotation

    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        return [(np.asarray(array), {"name": path.stem, "rgb": True, "metadata": _meta(path)}, "image")]
    if array.ndim == 4 and array.shape[-1] == 2:
        instances = labels_as_int32(np.asarray(array[..., 0]), source=path.name)
        classes = np.asarray(array[..., 1], dtype=np.uint8)
        return _label_layers(path, path.stem, instances, classes, None)
    if array.ndim == 3 and array.shape[-1] != 2:
        if array.dtype.kind in "iu" and _stack_kind(array) == "instances":
            return _label_layers(path, path.stem, labels_as_int32(np.asarray(array), path.name), None, None)
        return [(np.asarray(array), {"name": path.stem, "metadata": _meta(path)}, "image")]
    labels, classes, class_names = auto_read_annotation(path)
    return _label_layers(path, path.stem, labels, classes, class_names)
