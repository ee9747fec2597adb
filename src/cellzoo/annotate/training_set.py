"""A folder of corrected annotations that the Fine-tune widget (or ``cellzoo train``) reads back.

Layout::

    <folder>/images/<name>.tif    the image as shown (H×W or H×W×C, native dtype)
    <folder>/labels/<name>.tif    instance ids (uint16, int32 when ids exceed 65535)
    <folder>/classes/<name>.tif   class ids (uint8)
    <folder>/manifest.json        {"format": "cellzoo-training-set", "version": 1, "entries": [...]}

Each file is written atomically and the manifest last, so an entry listed in the manifest is
always complete; a failure while adding removes the files of that entry.

Adding an image whose pixels are already in the set (same content, e.g. "Add to training set" pressed
again after more corrections) replaces that entry's labels and classes instead of adding a duplicate,
which would count the image twice in training (and could put it in validation too); the writer's
``replaced`` then names the entry, so the caller can say so.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tifffile

from .._atomic import atomic_path, atomic_write_text
from ..data.sample import Sample

MANIFEST = "manifest.json"
FORMAT = "cellzoo-training-set"
SUBFOLDERS = ("images", "labels", "classes")


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name or "image"


def _write_tif(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, compression="zlib")


def image_digest(image: np.ndarray) -> str:
    """sha256 of an image's pixels, shape and dtype: equal only for identical images."""
    array = np.ascontiguousarray(np.asarray(image))
    return hashlib.sha256(str((array.shape, array.dtype.str)).encode() + array.tobytes()).hexdigest()


def _label_dtype(labels: np.ndarray) -> np.dtype:
    return np.dtype(np.uint16) if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.dtype(np.int32)


class TrainingSetWriter:
    """Append annotated images to a training-set folder (created if missing)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder} is a file; choose a folder for the training set.")
        #: after :meth:`add`: the name of the entry it replaced (same image content), else None
        self.replaced: str | None = None

    def _entry_with_image(self, entries: list[dict[str, Any]], digest: str, shape: tuple[int, ...]) -> int | None:
        """Index of the entry holding the same image (by its stored digest; older entries without one
        are read back when their shape matches), or None."""
        for index, entry in enumerate(entries):
            stored = entry.get("image_sha256")
            if stored is None and list(entry.get("shape") or []) == list(shape[:2]):
                path = self.folder / "images" / f"{entry['name']}.tif"
                if path.is_file():
                    stored = image_digest(tifffile.imread(path))
            if stored == digest:
                return index
        return None

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def entries(self) -> list[dict[str, Any]]:
        return _read_manifest(self.folder)["entries"] if self.manifest_path.exists() else []

    def _unique_name(self, base: str, taken: set[str]) -> str:
        name, k = base, 2
        while name in taken or any((self.folder / sub / f"{name}.tif").exists() for sub in SUBFOLDERS):
            name, k = f"{base}_{k}", k + 1
        return name

    def add(self, image: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None, *,
            source_layer: str = "", model: str | None = None, class_names: Sequence[str] | None = None,
            name: str | None = None, extra: dict[str, Any] | None = None) -> str:
        """Save one annotated image; returns the entry name used for its files.

        When the set already holds this image (same pixels), that entry is replaced (its name is kept and
        :attr:`replaced` set to it) rather than adding the image a second time."""
        self.replaced = None
        image = np.asarray(image)
        labels = np.asarray(labels)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 2-D integer instance map, got shape {labels.shape} "
                             f"and dtype {labels.dtype}; add stacks one plane at a time.")
        if labels.min(initial=0) < 0:
            raise ValueError("labels contain negative ids; instance ids must be 0 or positive.")
        if image.shape[:2] != labels.shape or image.ndim not in (2, 3):
            raise ValueError(f"image shape {image.shape} does not match the label map {labels.shape}; "
                             "the image must be H×W or H×W×C with the labels' H×W.")
        if classes is None:
            classes = (labels > 0).astype(np.uint8)
        classes = np.asarray(classes)
        if classes.shape != labels.shape:
            raise ValueError(f"class map shape {classes.shape} does not match label map {labels.shape}.")
        if classes.min(initial=0) < 0 or classes.max(initial=0) > 255:
            raise ValueError("class ids must be between 0 and 255.")
        if not (labels > 0).any():
            raise ValueError("the label map is empty; annotate at least one instance before adding it.")

        manifest = _read_manifest(self.folder) if self.manifest_path.exists() else \
            {"format": FORMAT, "version": 1, "entries": []}
        digest = image_digest(image)
        existing = self._entry_with_image(manifest["entries"], digest, image.shape)
        if existing is not None:
            name = manifest["entries"][existing]["name"]
        else:
            taken = {e["name"] for e in manifest["entries"]}
            name = self._unique_name(_safe_name(name or source_layer or "image"), taken)
        written: list[Path] = []
        try:
            for sub, array in (("images", image), ("labels", labels.astype(_label_dtype(labels))),
                               ("classes", classes.astype(np.uint8))):
                path = self.folder / sub / f"{name}.tif"
                _write_tif(path, array)
                written.append(path)
            entry = {"name": name, "source_layer": source_layer, "model": model,
                     "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "class_names": list(class_names) if class_names else None,
                     "shape": list(labels.shape), "instances": int(len(np.unique(labels)) - 1),
                     "image_sha256": digest}
            entry.update(extra or {})
            if existing is not None:
                manifest["entries"][existing] = entry
            else:
                manifest["entries"].append(entry)
            atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))
        except BaseException:
            if existing is None:  # a replaced entry keeps its (same-image) files
                for path in written:
                    path.unlink(missing_ok=True)
            raise
        self.replaced = name if existing is not None else None
        return name


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}; it is not a cellzoo training set. "
                                "Create one with 'Add to training set' in the Correct widget.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it or start a new folder.") from err
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("entries"), list):
        raise ValueError(f"{path} is not a cellzoo training-set manifest.")
    return manifest


def read_training_set(folder: str | os.PathLike) -> list[Sample]:
    """All entries of a training-set folder as :class:`~cellzoo.data.sample.Sample` objects."""
    folder = Path(folder).expanduser()
    samples = []
    for entry in _read_manifest(folder)["entries"]:
        name = entry["name"]
        paths = {sub: folder / sub / f"{name}.tif" for sub in SUBFOLDERS}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"training-set entry {name!r} is missing {', '.join(missing)}.")
        samples.append(Sample(name=name, image=tifffile.imread(paths["images"]),
                              labels=tifffile.imread(paths["labels"]).astype(np.int32),
                              classes=tifffile.imread(paths["classes"]).astype(np.uint8),
                              meta={k: v for k, v in entry.items() if k != "name"}))
    return samples
