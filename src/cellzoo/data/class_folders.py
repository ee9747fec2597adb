"""The class-folder layout: ``<sample>/image.<ext>`` plus ``class1.<ext> … classN.<ext>``, where
``class<k>`` is an instance map of the objects of class k (ids may repeat across class files)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from cellzoo.data import _polygons
from cellzoo.data.io import IMAGE_SUFFIXES, LABEL_SUFFIXES, read_image, read_labels, write_image, write_labels

_CLASS_FILE = re.compile(r"^class(\d+)$", re.IGNORECASE)


def class_folder_files(folder: str | os.PathLike) -> tuple[Path, dict[int, Path]]:
    """``(image path, {class id: class file})`` of one sample folder, with clear errors when incomplete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sample folder not found: {folder}.")
    images = [p for p in folder.iterdir() if p.stem.lower() == "image" and p.suffix.lower() in IMAGE_SUFFIXES]
    if len(images) != 1:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ValueError(f"{folder} must hold exactly one image.<tif|png|jpg> next to class1..classN files "
                         f"(found: {found}).")
    class_files: dict[int, Path] = {}
    for path in folder.iterdir():
        match = _CLASS_FILE.match(path.stem)
        if match and path.suffix.lower() in LABEL_SUFFIXES:
            cls = int(match.group(1))
            if cls in class_files:
                raise ValueError(f"{folder} has two files for class {cls}: {class_files[cls].name}, {path.name}.")
            class_files[cls] = path
    if not class_files:
        raise ValueError(f"{folder} has an image but no class1.tif … classN.tif instance maps.")
    if not all(1 <= k <= 255 for k in class_files):
        raise ValueError(f"{folder}: class numbers must be 1..255, got {sorted(class_files)}.")
    return images[0], dict(sorted(class_files.items()))


def read_class_folder(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, labels int32, classes uint8)`` of one sample folder.

    Each class file's objects get fresh ids (class1's first, then class2's, ...), so ids that repeat
    across files stay distinct; where two class files cover the same pixel the higher class number wins.
    """
    image_path, class_files = class_folder_files(folder)
    image = read_image(image_path)
    labels = np.zeros(image.shape[:2], dtype=np.int32)
    classes = np.zeros(image.shape[:2], dtype=np.uint8)
    next_id = 1
    for cls, path in class_files.items():
        part = read_labels(path)
        if part.shape != labels.shape:
            raise ValueError(f"{path} is {part.shape} but {image_path.name} is {labels.shape}; every class "
                             f"file must match the image size.")
        ids, inverse = np.unique(part, return_inverse=True)
        new_ids = np.arange(len(ids), dtype=np.int32) + next_id - (1 if ids[0] == 0 else 0)
        new_ids[ids == 0] = 0
        relabelled = new_ids[inverse.reshape(part.shape)]
        inside = relabelled != 0
        labels[inside] = relabelled[inside]
        classes[inside] = cls
        next_id += int((ids != 0).sum())
    return image, labels, classes


def write_class_folder(folder: str | os.PathLike, image: np.ndarray, labels: np.ndarray,
                       classes: np.ndarray | None = None, n_classes: int | None = None,
                       image_format: str = ".tif") -> Path:
    """Write ``image<format>`` and ``class1.tif … class<n>.tif`` (n = ``n_classes`` or the largest class
    id; empty classes get an empty map). Each object goes to the file of its majority class; without
    ``classes`` all objects go to ``class1.tif``. Objects of class 0 cannot be stored and raise."""
    folder = Path(folder)
    labels = np.asarray(labels)
    image = np.asarray(image)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label map shape {labels.shape} does not match image shape {image.shape[:2]}.")
    class_of = _polygons.instance_classes(labels, classes)
    unclassified = sorted(i for i, c in class_of.items() if c == 0)
    if unclassified:
        raise ValueError(f"objects {unclassified[:10]} have class 0 (background) in the class map; the class-"
                         f"folder layout needs a class for every object — assign one first.")
    n_classes = int(n_classes if n_classes is not None else max(class_of.values(), default=1))
    if class_of and max(class_of.values()) > n_classes:
        raise ValueError(f"n_classes={n_classes} but the class map uses class {max(class_of.values())}.")
    folder.mkdir(parents=True, exist_ok=True)
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int64)
    for index, cls in class_of.items():
        lut[index] = cls
    per_pixel_class = lut[labels]
    for cls in range(1, n_classes + 1):
        write_labels(folder / f"class{cls}.tif", np.where(per_pixel_class == cls, labels, 0))
    write_image(folder / f"image{image_format}", image)
    return folder
