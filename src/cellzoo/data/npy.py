"""CoNIC / PanNuke-style array files: ``images.npy`` (N×H×W×3) and ``labels.npy`` (N×H×W×2 =
instance map, class map; or N×H×W instance maps only). PanNuke's own ``masks.npy`` (N×H×W×6, one
instance map per type) is read too."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cellzoo._atomic import atomic_path
from cellzoo.data.validate import check_array_size, regular_file


def _load(path: Path, mmap: bool) -> np.ndarray:
    """A plain .npy array; its header (shape, dtype) is checked against the file's size and the memory
    limit (:mod:`cellzoo.data.validate`) before any data is read."""
    path = regular_file(path, "array file")
    shape, dtype, offset = _declared(path)
    data_bytes = math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size - offset < data_bytes:
        raise ValueError(f"{path.name} is truncated: its header declares {dtype} {shape} ({data_bytes:,} bytes of "
                         f"data) but the file holds {max(size - offset, 0):,}; copy or save it again.")
    if not mmap:
        check_array_size(shape, dtype.itemsize, path.name)
    try:
        # allow_pickle=False: a .npy from the internet must not run code.
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"could not read {path.name} as a plain .npy array ({exc}).") from exc


def _declared(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header, with clear errors for anything else."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _fortran, dtype = reader(fh)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, TokenError ...
            raise ValueError(f"{path.name} is not a readable .npy file: its header is damaged or it is another "
                             f"format ({exc}).") from None
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{path.name} holds Python objects (dtype {dtype}); only plain .npy arrays of numbers are read "
                         f"(a pickled array could run code).")
    return tuple(int(n) for n in shape), dtype, offset


#: PanNuke's own ``masks.npy`` (N×H×W×6): one instance map per type, channel 5 is background.
PANNUKE_CLASS_NAMES = ["background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"]


def pannuke_masks_to_labels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PanNuke ``masks`` (N×H×W×6 or H×W×6) → (instance maps int32, class maps uint8).

    Class k+1 comes from channel k (0..4); the background channel is ignored. Objects get fresh ids
    per image, so ids that repeat across channels stay distinct.
    """
    masks = np.asarray(masks)
    single = masks.ndim == 3
    if single:
        masks = masks[None]
    if masks.ndim != 4 or masks.shape[-1] != 6:
        raise ValueError(f"PanNuke masks must be N×H×W×6, got shape {masks.shape}.")
    instances = np.zeros(masks.shape[:3], dtype=np.int32)
    classes = np.zeros(masks.shape[:3], dtype=np.uint8)
    for n in range(masks.shape[0]):
        next_id = 1
        for channel in range(5):
            part = masks[n, ..., channel].astype(np.int64)
            ids, inverse = np.unique(part, return_inverse=True)
            new_ids = np.arange(len(ids)) + next_id - (1 if ids[0] == 0 else 0)
            new_ids[ids == 0] = 0
            relabelled = new_ids[inverse.reshape(part.shape)]
            inside = relabelled > 0
            instances[n][inside] = relabelled[inside]
            classes[n][inside] = channel + 1
            next_id += int((ids != 0).sum())
    return (instances[0], classes[0]) if single else (instances, classes)


class PanNukeLabels:
    """Instance (``part=0``) or class (``part=1``) maps of a PanNuke ``masks.npy``, decoded one image at a
    time on indexing so the (memory-mapped, float64, 6-channel) file is never converted whole."""

    def __init__(self, masks: np.ndarray, part: int):
        self.masks, self.part = masks, part
        self.shape = tuple(masks.shape[:3])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return pannuke_masks_to_labels(np.asarray(self.masks[index]))[self.part]

    def __array__(self, dtype=None, copy=None):
        array = pannuke_masks_to_labels(np.asarray(self.masks))[self.part]
        return array if dtype is None else array.astype(dtype)


def _resolve(images: str | os.PathLike, labels: str | os.PathLike | None) -> tuple[Path, Path]:
    images = Path(images)
    folder = images if images.is_dir() else images.parent
    images_path = folder / "images.npy" if images.is_dir() else images
    if labels is not None:
        return images_path, Path(labels)
    # CoNIC ships labels.npy; PanNuke masks.npy
    if not (folder / "labels.npy").is_file() and (folder / "masks.npy").is_file():
        return images_path, folder / "masks.npy"
    return images_path, folder / "labels.npy"


def read_npy(images: str | os.PathLike, labels: str | os.PathLike | None = None, mmap: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read ``(images N×H×W[×C], instance maps N×H×W, class maps N×H×W or None)``.

    ``images`` is the ``images.npy`` path or the folder holding ``images.npy`` and ``labels.npy``.
    With ``mmap`` the arrays are memory-mapped, so only the samples you index are read.
    """
    images_path, labels_path = _resolve(images, labels)
    image_array = _load(images_path, mmap)
    label_array = _load(labels_path, mmap)
    if image_array.ndim not in (3, 4):
        raise ValueError(f"{images_path.name} has shape {image_array.shape}; expected N×H×W×C or N×H×W.")
    pannuke = label_array.ndim == 4 and label_array.shape[-1] == 6
    # PanNuke stores its masks as float64 holding integer ids
    if label_array.dtype.kind not in ("iuf" if pannuke else "iu"):
        raise ValueError(f"{labels_path.name} has dtype {label_array.dtype}; label arrays must be integers.")
    if label_array.ndim == 4 and label_array.shape[-1] == 2:
        instances, classes = label_array[..., 0], label_array[..., 1]
    elif pannuke:
        instances, classes = PanNukeLabels(label_array, 0), PanNukeLabels(label_array, 1)
    elif label_array.ndim == 3:
        instances, classes = label_array, None
    else:
        raise ValueError(f"{labels_path.name} has shape {label_array.shape}; expected N×H×W×2 "
                         f"(instance map, class map), N×H×W (instance maps) or PanNuke's N×H×W×6.")
    if instances.shape != image_array.shape[:3]:
        raise ValueError(f"{images_path.name} holds {image_array.shape[0]} images of "
                         f"{image_array.shape[1:3]} but {labels_path.name} holds {instances.shape[0]} label "
                         f"maps of {instances.shape[1:3]}; they must match one to one.")
    return image_array, instances, classes


def write_npy(folder: str | os.PathLike, images: np.ndarray, instances: np.ndarray,
              classes: np.ndarray | None = None) -> tuple[Path, Path]:
    """Write ``images.npy`` and ``labels.npy`` (uint16 N×H×W×2, or N×H×W without classes) atomically."""
    folder = Path(folder)
    images, instances = np.asarray(images), np.asarray(instances)
    if instances.ndim != 3 or images.shape[:3] != instances.shape:
        raise ValueError(f"images {images.shape} and instance maps {instances.shape} must be N×H×W[×C] and "
                         f"N×H×W with the same N, H, W.")
    if instances.size and (instances.min() < 0 or instances.max() >= 2 ** 16):
        raise ValueError("instance ids must be 0..65535 for labels.npy (uint16); relabel per image.")
    labels = instances.astype(np.uint16)
    if classes is not None:
        classes = np.asarray(classes)
        if classes.shape != instances.shape:
            raise ValueError(f"class maps {classes.shape} must have the instance maps' shape {instances.shape}.")
        labels = np.stack([labels, classes.astype(np.uint16)], axis=-1)
    paths = folder / "images.npy", folder / "labels.npy"
    for path, array in zip(paths, (images, labels)):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:  # a file handle stops np.save from appending ".npy" to the temp name
                np.save(fh, array, allow_pickle=False)
    return paths
