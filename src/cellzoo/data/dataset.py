"""``Dataset``: images paired with instance (+ class) maps from any supported layout, loaded lazily,
with a seeded train/validation split; ``load_shared_dataset`` for the ``../shared/data`` layouts."""
from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from cellzoo._paths import shared_data
from cellzoo.data import _polygons
from cellzoo.data import coco as coco_format
from cellzoo.data import geojson as geojson_format
from cellzoo.data import xml_annotations
from cellzoo.data.class_folders import read_class_folder
from cellzoo.data.io import (IMAGE_SUFFIXES, LABEL_SUFFIXES, labels_as_int32, read_class_map, read_image,
                             read_labels)
from cellzoo.data.npy import _resolve as _resolve_npy
from cellzoo.data.npy import PANNUKE_CLASS_NAMES, PanNukeLabels, read_npy
from cellzoo.data.sample import Sample

#: Suffixes that label / class files may add to the image's stem (``img_label.png`` pairs with ``img.png``).
PAIRING_SUFFIXES = ("_instances", "_instance", "_classes", "_class", "_labels", "_label", "_inst",
                    "_masks", "_mask")
CONSEP_CLASS_NAMES = list(_polygons.KNOWN_CLASS_NAMES[1])
MONUSAC_CLASS_NAMES = list(xml_annotations.MONUSAC_CLASS_NAMES)
NUCLEUS_CLASS_NAMES = ["background", "nucleus"]
SHARED_DATASETS = ("monuseg2018", "consep", "consep_stitched", "dsb2018", "monusac_sample")

Loader = Callable[[], Sample]


# ----------------------------------------------------------------------------- loaders (module level: picklable)
def _load_files(name: str, image_path: Path, labels_path: Path, classes_path: Path | None) -> Sample:
    image = read_image(image_path)
    labels = read_labels(labels_path)
    classes = read_class_map(classes_path) if classes_path is not None else None
    return Sample(name, image, labels, classes,
                  meta={"image_path": str(image_path), "labels_path": str(labels_path),
                        "classes_path": str(classes_path) if classes_path else None,
                        "file_name": image_path.name})


@functools.lru_cache(maxsize=8)
def _npy_arrays(images_path: str, labels_path: str):
    return read_npy(images_path, labels_path, mmap=True)


def _load_npy(name: str, images_path: str, labels_path: str, index: int) -> Sample:
    images, instances, classes = _npy_arrays(images_path, labels_path)
    return Sample(name, np.array(images[index]), labels_as_int32(np.array(instances[index]), name),
                  None if classes is None else np.array(classes[index]).astype(np.uint8),
                  meta={"image_path": images_path, "index": index})


def _load_coco(name: str, image_path: Path, coco: dict) -> Sample:
    image = read_image(image_path)
    labels, classes, _ = coco_format.coco_to_labels(coco, coco["images"][0]["id"], image.shape[:2])
    return Sample(name, image, labels, classes, meta={"image_path": str(image_path), "file_name": image_path.name})


def _load_class_folder(name: str, folder: Path) -> Sample:
    image, labels, classes = read_class_folder(folder)
    return Sample(name, image, labels, classes, meta={"folder": str(folder)})


def _load_polygons(name: str, image_path: Path, annotation_path: Path, class_names: list[str], kind: str) -> Sample:
    image = read_image(image_path)
    reader = geojson_format.read_geojson if kind == "geojson" else xml_annotations.read_xml_annotations
    labels, classes, _ = reader(annotation_path, image.shape[:2], class_names=class_names)
    return Sample(name, image, labels, classes,
                  meta={"image_path": str(image_path), "annotation_path": str(annotation_path),
                        "file_name": image_path.name})


def _return(sample: Sample) -> Sample:
    return sample


# ----------------------------------------------------------------------------- pairing
def _require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}.")
    return path


def _pairing_key(stem: str) -> str:
    lowered = stem.lower()
    for suffix in PAIRING_SUFFIXES:
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _files_by_key(folder: Path, suffixes: tuple[str, ...], strip: bool) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        key = _pairing_key(path.stem) if strip else path.stem
        if key in files:
            raise ValueError(f"{folder}: {files[key].name} and {path.name} both pair with {key!r}; keep one.")
        files[key] = path
    return files


def _list_names(names: Sequence[str], limit: int = 10) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _pair(images: dict[str, Path], others: dict[str, Path], images_dir: Path, other_dir: Path, what: str) -> None:
    missing = set(images) - set(others)
    extra = set(others) - set(images)
    problems = []
    if missing:
        problems.append(f"{len(missing)} image(s) in {images_dir} have no {what} in {other_dir}: "
                        f"{_list_names([images[k].name for k in missing])}")
    if extra:
        problems.append(f"{len(extra)} {what} file(s) in {other_dir} have no image in {images_dir}: "
                        f"{_list_names([others[k].name for k in extra])}")
    if problems:
        raise ValueError("; ".join(problems) + ". Files pair by name (label suffixes such as _label, "
                         "_instances, _classes are ignored); rename or remove the unpaired ones.")


# ----------------------------------------------------------------------------- Dataset
class Dataset(Sequence):
    """Samples loaded on access. ``names`` are unique; ``groups`` (default: the names) keep related
    samples — e.g. overlapping patches of one tile — on the same side of :meth:`split`."""

    def __init__(self, names: Sequence[str], loaders: Sequence[Loader], class_names: Sequence[str] | None = None,
                 groups: Sequence[str] | None = None, cache: bool = False):
        if len(names) != len(loaders):
            raise ValueError("Dataset needs one loader per name.")
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if list(names).count(n) > 1})
            raise ValueError(f"sample names must be unique; repeated: {_list_names(duplicates)}.")
        self._names = list(names)
        self._loaders = list(loaders)
        self.class_names = list(class_names) if class_names is not None else list(NUCLEUS_CLASS_NAMES)
        self.groups = list(groups) if groups is not None else list(self._names)
        if len(self.groups) != len(self._names):
            raise ValueError("Dataset needs one group per sample.")
        self._cache: dict[int, Sample] | None = {} if cache else None

    # -- sequence protocol
    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        if isinstance(index, str):
            if index not in self._names:
                raise KeyError(f"no sample named {index!r} (have {_list_names(self._names, 5)}).")
            index = self._names.index(index)
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for a dataset of {len(self)}.")
        index %= len(self)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self._loaders[index]()
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def __contains__(self, name: object) -> bool:
        """``"name" in dataset`` looks at sample names (without loading anything)."""
        return name in self._names

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return f"Dataset({len(self)} samples, classes={self.class_names[1:]})"

    # -- derived datasets
    def subset(self, indices) -> "Dataset":
        indices = [int(i) for i in indices]
        return Dataset([self._names[i] for i in indices], [self._loaders[i] for i in indices],
                       self.class_names, [self.groups[i] for i in indices], cache=self._cache is not None)

    def cached(self) -> "Dataset":
        """The same samples, each kept in memory after its first load (for repeated epochs)."""
        return Dataset(self._names, self._loaders, self.class_names, self.groups, cache=True)

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Seeded, disjoint (train, validation) split covering every sample.

        Whole groups go to one side; about ``val_fraction`` of the groups (at least one, and at least
        one left for training) go to validation. Both parts keep the dataset's order.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        unique_groups = list(dict.fromkeys(self.groups))
        if val_fraction == 0.0:
            return self.subset(range(len(self))), self.subset([])
        if len(unique_groups) < 2:
            raise ValueError(f"cannot split {len(self)} sample(s) in {len(unique_groups)} group(s) into train "
                             f"and validation; add data or use val_fraction=0.")
        n_val = min(max(1, int(round(val_fraction * len(unique_groups)))), len(unique_groups) - 1)
        order = np.random.default_rng(seed).permutation(len(unique_groups))
        val_groups = {unique_groups[i] for i in order[:n_val]}
        val = [i for i, g in enumerate(self.groups) if g in val_groups]
        train = [i for i, g in enumerate(self.groups) if g not in val_groups]
        return self.subset(train), self.subset(val)

    def check(self) -> None:
        """Load every sample; raise one ValueError listing all that fail (shape mismatches, bad files)."""
        problems = []
        for index, name in enumerate(self._names):
            try:
                self._loaders[index]()
            except (ValueError, FileNotFoundError) as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ValueError(f"{len(problems)} of {len(self)} samples cannot be loaded:\n" + "\n".join(problems))

    @staticmethod
    def concat(*datasets: "Dataset") -> "Dataset":
        """Join datasets with the same class names (sample names must stay unique)."""
        if not datasets:
            return Dataset([], [])
        names = datasets[0].class_names
        for other in datasets[1:]:
            if other.class_names != names:
                raise ValueError(f"cannot join datasets with different classes: {names} vs {other.class_names}.")
        return Dataset([n for d in datasets for n in d._names], [f for d in datasets for f in d._loaders], names,
                       [g for d in datasets for g in d.groups])

    # -- constructors
    @classmethod
    def from_samples(cls, samples: Sequence[Sample], class_names: Sequence[str] | None = None) -> "Dataset":
        """Wrap samples already in memory."""
        return cls([s.name for s in samples], [functools.partial(_return, s) for s in samples], class_names)

    @classmethod
    def from_folders(cls, images_dir: str | os.PathLike, labels_dir: str | os.PathLike,
                     classes_dir: str | os.PathLike | None = None,
                     class_names: Sequence[str] | None = None) -> "Dataset":
        """Pair ``images_dir/<stem>.<ext>`` with ``labels_dir/<stem>[_label|_instances|...].<tif|png>`` (and
        class maps in ``classes_dir``). Every image needs a label map and vice versa."""
        images_dir = _require_dir(images_dir, "images")
        labels_dir = _require_dir(labels_dir, "labels")
        images = _files_by_key(images_dir, IMAGE_SUFFIXES, strip=False)
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}.")
        labels = _files_by_key(labels_dir, LABEL_SUFFIXES, strip=True)
        _pair(images, labels, images_dir, labels_dir, "label map")
        classes: dict[str, Path] = {}
        if classes_dir is not None:
            classes_dir = _require_dir(classes_dir, "class maps")
            classes = _files_by_key(classes_dir, LABEL_SUFFIXES, strip=True)
            _pair(images, classes, images_dir, classes_dir, "class map")
        keys = sorted(images)
        if class_names is None and classes_dir is None:
            class_names = NUCLEUS_CLASS_NAMES
        elif class_names is None:  # one pass over the class maps to learn how many classes there are
            top = max(int(read_class_map(p).max(initial=0)) for p in classes.values())
            class_names = ["background"] + [f"class_{k}" for k in range(1, top + 1)]
        return cls(keys, [functools.partial(_load_files, k, images[k], labels[k], classes.get(k)) for k in keys],
                   class_names)

    from_folder = from_folders

    @classmethod
    def from_npy(cls, images: str | os.PathLike, labels: str | os.PathLike | None = None,
                 class_names: Sequence[str] | None = None) -> "Dataset":
        """CoNIC ``images.npy`` + ``labels.npy`` or PanNuke ``images.npy`` + ``masks.npy`` (give the folder
        or the images.npy path); samples are memory-mapped and named by index (``00000``, ``00001``, ...)."""
        image_array, instances, classes = read_npy(images, labels, mmap=True)
        images_path, labels_path = (str(p) for p in _resolve_npy(images, labels))
        width = max(5, len(str(len(image_array))))
        names = [f"{i:0{width}d}" for i in range(len(image_array))]
        if class_names is None and isinstance(classes, PanNukeLabels):
            class_names = PANNUKE_CLASS_NAMES
        if class_names is None:
            top = int(np.max(classes)) if classes is not None and classes.size else 1
            class_names = ["background"] + [f"class_{k}" for k in range(1, top + 1)] if classes is not None \
                else NUCLEUS_CLASS_NAMES
        return cls(names, [functools.partial(_load_npy, n, images_path, labels_path, i) for i, n in enumerate(names)],
                   class_names)

    @classmethod
    def from_coco(cls, json_path: str | os.PathLike | dict, images_dir: str | os.PathLike) -> "Dataset":
        """Images listed in a COCO file (``file_name`` relative to ``images_dir``) with their annotations."""
        coco = coco_format.read_coco(json_path)
        images_dir = _require_dir(images_dir, "images")
        class_names, _ = coco_format.coco_class_names(coco)
        by_image: dict = {info["id"]: [] for info in coco["images"]}
        for annotation in coco["annotations"]:
            by_image.setdefault(annotation.get("image_id"), []).append(annotation)
        names, loaders, missing = [], [], []
        for info in coco["images"]:
            file_name = str(info.get("file_name", ""))
            path = images_dir / file_name
            if not path.is_file() and (images_dir / Path(file_name).name).is_file():
                path = images_dir / Path(file_name).name
            if not path.is_file():
                missing.append(file_name)
                continue
            one = {"images": [info], "annotations": by_image[info["id"]], "categories": coco.get("categories", [])}
            names.append(Path(file_name).stem)
            loaders.append(functools.partial(_load_coco, names[-1], path, one))
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) listed in the COCO file are not in {images_dir}: "
                                    f"{_list_names(missing)}.")
        return cls(names, loaders, class_names)

    @classmethod
    def from_class_folders(cls, root: str | os.PathLike, class_names: Sequence[str] | None = None) -> "Dataset":
        """Every sub-folder of ``root`` holding ``image.<ext>`` + ``class1 … classN`` files."""
        root = _require_dir(root, "class-folder dataset")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        samples = [p for p in folders if any(f.stem.lower() == "image" for f in p.iterdir())]
        if not samples:
            raise ValueError(f"no sample folders with image.<ext> + class1..classN in {root}.")
        top = max((int(m.group(1)) for p in samples for f in p.iterdir()
                   if (m := re.match(r"^class(\d+)$", f.stem, re.IGNORECASE))), default=1)
        if class_names is None:
            class_names = ["background"] + [f"class_{k}" for k in range(1, top + 1)]
        return cls([p.name for p in samples], [functools.partial(_load_class_folder, p.name, p) for p in samples],
                   class_names)

    @classmethod
    def _from_polygons(cls, images_dir, annotations_dir, class_names, kind: str, suffixes) -> "Dataset":
        images_dir = _require_dir(images_dir, "images")
        annotations_dir = _require_dir(annotations_dir, "annotations")
        images = _files_by_key(images_dir, IMAGE_SUFFIXES, strip=False)
        annotations = _files_by_key(annotations_dir, suffixes, strip=True)
        _pair(images, annotations, images_dir, annotations_dir, f"{kind} annotation")
        keys = sorted(images)
        names = list(class_names) if class_names else _scan_class_names([annotations[k] for k in keys], kind)
        return cls(keys, [functools.partial(_load_polygons, k, images[k], annotations[k], names, kind) for k in keys],
                   names)

    @classmethod
    def from_geojson(cls, images_dir: str | os.PathLike, annotations_dir: str | os.PathLike,
                     class_names: Sequence[str] | None = None) -> "Dataset":
        """Images paired by stem with GeoJSON files (``.geojson``/``.json``); class ids are shared across
        files (from ``class_names``, else every classification name in file order)."""
        return cls._from_polygons(images_dir, annotations_dir, class_names, "geojson", (".geojson", ".json"))

    @classmethod
    def from_xml(cls, images_dir: str | os.PathLike, annotations_dir: str | os.PathLike,
                 class_names: Sequence[str] | None = None) -> "Dataset":
        """Images paired by stem with MoNuSeg/MoNuSAC ``.xml`` files."""
        return cls._from_polygons(images_dir, annotations_dir, class_names, "xml", (".xml",))

    @classmethod
    def from_layout(cls, root: str | os.PathLike) -> "Dataset":
        """Guess the layout of ``root``: images.npy + labels.npy; images/ + labels|masks|inst/ (+ classes|class/);
        one COCO .json next to images/; or class folders."""
        root = _require_dir(root, "dataset")
        if (root / "images.npy").is_file():
            return cls.from_npy(root)
        images_dir = root / "images"
        if images_dir.is_dir():
            for labels_name in ("labels", "masks", "inst", "instances"):
                if (root / labels_name).is_dir():
                    # an empty classes/ folder (class-agnostic annotations) means no class maps
                    classes_dir = next((root / c for c in ("classes", "class") if (root / c).is_dir()
                                        and _files_by_key(root / c, LABEL_SUFFIXES, strip=True)), None)
                    return cls.from_folders(images_dir, root / labels_name, classes_dir)
            jsons = sorted(root.glob("*.json"))
            if len(jsons) == 1:
                return cls.from_coco(jsons[0], images_dir)
            for kind, suffixes in (("geojson", ("geojson",)), ("xml", ("xml",))):
                for name in ("annotations", kind):
                    if (root / name).is_dir() and any(p.suffix[1:].lower() in suffixes for p in (root / name).iterdir()):
                        return getattr(cls, f"from_{kind}")(images_dir, root / name)
        try:
            return cls.from_class_folders(root)
        except ValueError:
            pass
        raise ValueError(f"cannot tell the dataset layout of {root}. Expected images.npy + labels.npy; images/ with "
                         f"labels/ (or masks/, inst/) and optional classes/; images/ with one COCO .json; images/ "
                         f"with annotations/*.geojson|*.xml; or <sample>/image.tif + class1.tif … folders.")


def _scan_class_names(paths: Sequence[Path], kind: str) -> list[str]:
    """Class names used anywhere in the annotation files, so ids agree across samples (the same rules
    as reading one file: stored class ids, a shared dataset's list, else order of appearance)."""
    names: list[str] = []
    ids: list = []
    for path in paths:
        if kind == "geojson":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON ({exc}).") from exc
            for feature in geojson_format._features(data, path.name):
                properties = (feature or {}).get("properties") or {}
                names.append(geojson_format._class_name(properties))
                ids.append(properties.get("class_id"))
        else:
            import xml.etree.ElementTree as ET

            try:
                root = ET.parse(path).getroot()
            except ET.ParseError as exc:
                raise ValueError(f"{path} is not well-formed XML ({exc}).") from exc
            names.extend(xml_annotations._annotation_class(a) for a in root.iter("Annotation"))
    if kind == "geojson":
        from_ids = geojson_format._names_from_ids([(n, None, None) for n in names], ids)
        if from_ids:
            return from_ids
    if not any(names):
        return list(NUCLEUS_CLASS_NAMES)
    return _polygons.default_class_names(names)


# ----------------------------------------------------------------------------- shared datasets
def _consep_tile(name: str) -> str:
    return name.rsplit("_", 1)[0]


def load_shared_dataset(name: str, split: str | None = None, root: str | os.PathLike | None = None) -> Dataset:
    """One of the ``../shared/data`` datasets (``root`` overrides where that folder is).

    ``monuseg2018``, ``dsb2018``, ``consep`` (256×256 patches; grouped by tile so :meth:`Dataset.split`
    never puts overlapping patches of one tile on both sides): split "train" or "test".
    ``consep_stitched``: the 1000×1000 test tiles (split "test"). ``monusac_sample``: split "all" (or None).
    """
    base = Path(root) if root is not None else shared_data()
    splits = {"monuseg2018": ("train", "test"), "dsb2018": ("train", "test"), "consep": ("train", "test"),
              "consep_stitched": ("test",), "monusac_sample": ("all",)}
    if name not in splits:
        raise ValueError(f"unknown shared dataset {name!r}; choose one of {', '.join(SHARED_DATASETS)}.")
    if split is None and len(splits[name]) == 1:
        split = splits[name][0]
    if split not in splits[name]:
        extra = " (the stitched train tiles have no images; use 'consep' patches for training)" \
            if name == "consep_stitched" else ""
        raise ValueError(f"{name} has split(s) {', '.join(splits[name])}, not {split!r}{extra}.")
    if not base.is_dir():
        raise FileNotFoundError(f"shared data folder not found: {base}; pass root= or set $CELLZOO_SHARED.")
    if name == "monuseg2018":
        return Dataset.from_folders(base / name / "images" / split, base / name / "labels" / split,
                                    class_names=NUCLEUS_CLASS_NAMES)
    if name == "dsb2018":
        return Dataset.from_folders(base / name / split / "images", base / name / split / "masks",
                                    class_names=NUCLEUS_CLASS_NAMES)
    if name == "consep":
        folder = base / "consep" / split
        data = Dataset.from_folders(folder / "images", folder / "inst", folder / "class", CONSEP_CLASS_NAMES)
        data.groups = [_consep_tile(n) for n in data.names]
        return data
    if name == "consep_stitched":
        folder = base / "consep" / "stitched" / split
        return Dataset.from_folders(folder / "images", folder / "inst", folder / "class", CONSEP_CLASS_NAMES)
    folder = base / "monusac_sample"
    return Dataset.from_folders(folder / "images", folder / "inst", folder / "class", MONUSAC_CLASS_NAMES)
