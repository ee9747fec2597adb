"""One entry point for every annotation format: :func:`auto_read_annotation` (used by the napari reader)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cellzoo.data import _polygons, coco, geojson, xml_annotations
from cellzoo.data.io import LABEL_SUFFIXES, labels_as_int32, read_labels
from cellzoo.data.validate import regular_file

DEFAULT_CLASS_NAMES = ["background", "nucleus"]
ANNOTATION_SUFFIXES = LABEL_SUFFIXES + (".xml", ".geojson", ".json", ".npy")


def json_kind(data: object) -> str:
    """"geojson", "coco" or "coco_results" for parsed JSON, or "unknown"."""
    if isinstance(data, dict):
        if data.get("type") in ("FeatureCollection", "Feature", "Polygon", "MultiPolygon", "GeometryCollection"):
            return "geojson"
        if "images" in data and "annotations" in data:
            return "coco"
    if isinstance(data, list):
        if not data:
            return "unknown"
        if all(isinstance(d, dict) and d.get("type") == "Feature" for d in data):
            return "geojson"
        if all(isinstance(d, dict) and "segmentation" in d and "image_id" in d for d in data):
            return "coco_results"
    return "unknown"


def auto_read_annotation(path: str | os.PathLike, shape: tuple[int, int] | None = None,
                         image: int | str | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Read any supported annotation file as ``(labels int32, classes uint8 or None, class_names)``.

    By extension: ``.tif/.tiff/.png`` instance map; ``.xml`` MoNuSeg/MoNuSAC polygons; ``.geojson``;
    ``.json`` holding GeoJSON, COCO (``image`` picks one image by id, file name or stem when there are
    several) or a COCO results list; ``.npy`` holding H×W or H×W×2 (instances, classes).
    a folder is read as a class folder (``image.tif`` + ``class1.tif`` …).
    ``shape`` (H, W) sizes the polygon formats and is checked against the raster ones.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotation file not found: {path}.")
    if path.is_dir():
        from cellzoo.data.class_folders import read_class_folder

        _, labels, classes = read_class_folder(path)
        if shape is not None and labels.shape != tuple(shape):
            raise ValueError(f"{path.name} is {labels.shape} but the image is {tuple(shape)}; they must match.")
        return labels, classes, ["background"] + [f"class_{k}" for k in range(1, int(classes.max(initial=0)) + 1)]
    regular_file(path, "annotation file")
    suffix = path.suffix.lower()
    if suffix not in ANNOTATION_SUFFIXES:
        raise ValueError(f"cannot read annotations from {path.name!r}: unsupported file type {suffix or '(none)'!r}; "
                         f"use one of {', '.join(ANNOTATION_SUFFIXES)}.")
    classes: np.ndarray | None = None
    class_names = list(DEFAULT_CLASS_NAMES)
    if suffix in LABEL_SUFFIXES:
        labels = read_labels(path)
    elif suffix == ".npy":
        from cellzoo.data.npy import _load as load_npy

        array = load_npy(path, mmap=False)
        if array.ndim == 3 and array.shape[-1] == 2:
            labels, classes = labels_as_int32(array[..., 0], path.name), array[..., 1].astype(np.uint8)
        elif array.ndim == 2:
            labels = labels_as_int32(array, path.name)
        else:
            raise ValueError(f"{path.name} has shape {array.shape}; expected H×W (instances) or H×W×2 "
                             f"(instances, classes). For N×H×W×2 stacks use read_npy.")
    elif suffix == ".xml":
        return xml_annotations.read_xml_annotations(path, shape)
    else:
        data, _ = _polygons.load_json(path, (), "annotation file", "")
        kind = json_kind(data)
        if kind == "geojson":
            return geojson.read_geojson(data, shape)
        if kind == "coco":
            if image is None:
                if len(data["images"]) != 1:
                    stems = [Path(str(i.get("file_name", ""))).stem for i in data["images"][:10]]
                    raise ValueError(f"{path.name} is a COCO file with {len(data['images'])} images; say which "
                                     f"one with image=<id, file name or stem> (e.g. {stems}).")
                image = data["images"][0]["id"]
            return coco.coco_to_labels(data, image, shape)
        if kind == "coco_results":
            labels, classes, _ = coco.read_coco_results(data, image if isinstance(image, int) else None, shape)
            if not classes.any() or set(np.unique(classes[labels > 0]).tolist()) == {1}:
                return labels, None, class_names
            names = ["background"] + [f"class_{k}" for k in range(1, int(classes.max()) + 1)]
            return labels, classes, names
        raise ValueError(f"{path.name} is JSON but neither GeoJSON, a COCO annotation file nor a COCO results list.")
    if shape is not None and labels.shape != tuple(shape):
        raise ValueError(f"{path.name} is {labels.shape} but the image is {tuple(shape)}; they must match.")
    if classes is not None:
        return labels, classes, ["background"] + [f"class_{k}" for k in range(1, int(classes.max(initial=0)) + 1)]
    return labels, classes, class_names
