"""Evaluate predictions against ground truth over many images: the engine behind the CLI and the widget.

Per image (:func:`image_metrics`): AJI, AJI+, pixel Dice, DQ/SQ/PQ, F1 and DSB AP at IoU 0.5,
COCO AP/AP50/AP75 and, with class maps, per-class PQ. Over the dataset
(:attr:`EvaluationResult.summary`): the per-image values averaged over images (as HoVer-Net
and RepSNet report them), plus dataset-level COCO AP (one COCO evaluation over all images),
CoNIC mPQ+ and per-class PQ (counts summed over images first) and per-class F1.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterable, Mapping, Sequence

import numpy as np

from cellzoo._atomic import atomic_write_text
from cellzoo.types import CancelToken, Instances, Message, Progress, check_cancel, run_to_end

from .classes import class_f1_counts, class_pq_counts, f1_from_counts, multi_pq_plus, pq_from_counts
from .coco import DEFAULT_MAX_DETS, CocoImage, coco_ap_images, coco_image
from .instance import aji, aji_plus, detection_scores, dice, panoptic_quality
from .overlap import check_label_pair, overlap_table

#: per-image columns averaged over images in the summary
MEAN_COLUMNS = ("aji", "aji_plus", "dice", "dq", "sq", "pq", "f1_50", "dsb_ap50")
#: per-image counts at IoU > 0.5 (CSV columns) from which the pooled figures are summed
COUNT_COLUMNS = ("tp_50", "fp_50", "fn_50", "iou_sum_50")
#: CSV columns for every image, in order (``pq_<class>`` columns follow when classes are given).
COLUMNS = ("image", "aji", "aji_plus", "dice", "dq", "sq", "pq", "f1_50", "dsb_ap50", "ap", "ap50", "ap75",
           *COUNT_COLUMNS)
#: dataset-level figures from the counts summed over all images first (StarDist's and COCO-style papers'
#: protocol), next to the per-image means (the DSB 2018 challenge's and HoVer-Net's)
POOLED_COLUMNS = ("pooled_dsb_ap50", "pooled_f1_50", "pooled_dq", "pooled_sq", "pooled_pq")
#: suffixes stripped from prediction / class file stems before pairing by name
PAIRING_SUFFIXES = ("_instances", "_classes")
_LABEL_SUFFIXES = (".tif", ".tiff", ".png")


# ----------------------------------------------------------------------------- inputs
def _read_labels(path: Path) -> np.ndarray:
    from cellzoo.data.io import read_labels

    return read_labels(path)


def _read_class_map(path: Path) -> np.ndarray:
    from cellzoo.data.io import read_class_map

    return read_class_map(path)


def _as_labels(value: Any) -> tuple[np.ndarray, np.ndarray | None, dict[int, float] | None]:
    """(instance map, class map or None, scores or None) from an array, a path or an Instances."""
    if isinstance(value, Instances):
        classes = value.class_map() if (value.classes is not None or value.class_of) else None
        return np.asarray(value.labels), classes, (dict(value.scores) or None)
    if isinstance(value, (str, os.PathLike)):
        return _read_labels(Path(value)), None, None
    return np.asarray(value), None, None


def _as_classes(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return _read_class_map(Path(value))
    return np.asarray(value)


@dataclass
class EvalPair:
    """One image to evaluate; each map is an array, a file path or (prediction) an Instances."""

    name: str
    gt: Any
    pred: Any
    gt_classes: Any = None
    pred_classes: Any = None


def _as_pair(item: Any, index: int) -> EvalPair:
    if isinstance(item, EvalPair):
        return item
    if isinstance(item, Mapping):
        return EvalPair(str(item.get("name", f"image_{index}")), item["gt"], item["pred"],
                        item.get("gt_classes"), item.get("pred_classes"))
    item = tuple(item)
    if len(item) == 2:
        return EvalPair(f"image_{index}", *item)
    if len(item) in (3, 5):
        return EvalPair(str(item[0]), *item[1:])
    raise ValueError("each pair must be (gt, pred), (name, gt, pred) or (name, gt, pred, gt_classes, "
                     f"pred_classes); item {index} has {len(item)} elements")


def _pairing_stem(path: Path) -> str:
    stem = path.stem
    for suffix in PAIRING_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _label_files(path: Path, want_classes: bool, role: str) -> dict[str, Path]:
    """Label files under ``path`` keyed by pairing stem; class folders prefer ``*_classes`` files."""
    if path.is_file():
        return {_pairing_stem(path): path}
    if not path.is_dir():
        raise FileNotFoundError(f"{role} path {path} does not exist; give a label file or a folder of them")
    files = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in _LABEL_SUFFIXES]
    class_files = [p for p in files if p.stem.endswith("_classes")]
    if want_classes:
        chosen = class_files or files
    else:
        chosen = [p for p in files if p not in class_files] or files
    out: dict[str, Path] = {}
    for p in chosen:
        stem = _pairing_stem(p)
        if stem in out:
            raise ValueError(f"{role} folder {path} holds two files for image {stem!r}: "
                             f"{out[stem].name} and {p.name}; keep one")
        out[stem] = p
    if not out:
        raise ValueError(f"{role} folder {path} holds no label files ({', '.join(_LABEL_SUFFIXES)})")
    return out


def pair_files(gt: str | os.PathLike, pred: str | os.PathLike, gt_classes=None, pred_classes=None,
               *, only_paired: bool = False) -> tuple[list[EvalPair], list[str]]:
    """Pair GT and prediction files (or folders) by stem.

    A trailing ``_instances`` / ``_classes`` on a file stem is ignored, so ``img1.png`` pairs
    with ``img1_instances.tif`` and ``img1_classes.tif``. Returns ``(pairs, notes)``: notes list
    predictions without GT, which are skipped. A GT image without prediction is an error, unless
    ``only_paired``: then the pairs present are scored and the missing ones listed in the notes.
    """
    if (gt_classes is None) != (pred_classes is None):
        raise ValueError("per-class metrics need both --gt-classes and --pred-classes (or neither)")
    gt_files = _label_files(Path(gt), False, "ground-truth")
    pred_files = _label_files(Path(pred), False, "prediction")
    single = Path(gt).is_file() and Path(pred).is_file()
    if single:  # two explicit files pair whatever their names
        pred_files = {next(iter(gt_files)): next(iter(pred_files.values()))}
    missing = sorted(gt_files.keys() - pred_files.keys())
    notes = []
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        if not only_paired:
            raise ValueError(f"{len(missing)} ground-truth image(s) have no prediction in {pred}: {shown}; "
                             "predictions pair with GT by file stem (a trailing _instances is ignored). "
                             "To score only the pairs present, pass --only-paired")
        if len(missing) == len(gt_files):
            raise ValueError(f"no ground-truth image has a prediction in {pred}; predictions pair with GT by file "
                             "stem (a trailing _instances is ignored)")
        notes.append(f"scored only the {len(gt_files) - len(missing)} image(s) with a prediction; "
                     f"{len(missing)} ground-truth image(s) have none: {', '.join(missing)}")
        gt_files = {stem: path for stem, path in gt_files.items() if stem in pred_files}
    extra = sorted(pred_files.keys() - gt_files.keys())
    if extra:
        notes.append(f"skipped {len(extra)} prediction(s) without ground truth: {', '.join(extra[:5])}")
    gcls = pcls = {}
    if gt_classes is not None:
        gcls = _label_files(Path(gt_classes), True, "ground-truth class")
        pcls = _label_files(Path(pred_classes), True, "predicted class")
        if single:
            gcls = {next(iter(gt_files)): next(iter(gcls.values()))}
            pcls = {next(iter(gt_files)): next(iter(pcls.values()))}
        for role, table in (("ground-truth class", gcls), ("predicted class", pcls)):
            lacking = sorted(gt_files.keys() - table.keys())
            if lacking:
                raise ValueError(f"no {role} map for image(s) {', '.join(lacking[:5])}; "
                                 "class maps pair by stem like the instance maps")
    pairs = [EvalPair(stem, gt_files[stem], pred_files[stem], gcls.get(stem), pcls.get(stem))
             for stem in sorted(gt_files)]
    return pairs, notes


# ----------------------------------------------------------------------------- one image
def _class_count(gt_classes, pred_classes, class_names) -> int:
    declared = len(class_names) - 1 if class_names else 0
    seen = max(int(np.max(gt_classes, initial=0)), int(np.max(pred_classes, initial=0)))
    if class_names and seen > declared:
        raise ValueError(f"the class maps hold class id {seen} but the class names name only ids 1..{declared} "
                         f"({', '.join(class_names[1:])}); give a name for every class id, or check the maps")
    return max(declared, seen)


#: COCO AP is left out (NaN, with a note) for images with more objects than this: pycocotools holds a
#: GT × detection IoU matrix per image and one RLE per object (1e6 one-pixel objects took 2 GB and a minute
#: before the matrix was even built)
COCO_AP_MAX_OBJECTS = 20000


def class_label(class_names: Sequence[str] | None, k: int) -> str:
    """Column-safe name of class id ``k`` (``class_names[k]`` or the id itself)."""
    name = class_names[k] if class_names and k < len(class_names) else str(k)
    return "".join(ch if ch.isalnum() else "_" for ch in str(name).strip().lower()) or str(k)


def _image_row(name: str, gt: np.ndarray, pred: np.ndarray, gt_classes, pred_classes, class_names,
               scores, max_dets) -> tuple[dict, CocoImage, np.ndarray | None, np.ndarray | None]:
    gt, pred = check_label_pair(gt, pred)
    if gt.ndim != 2:
        raise ValueError(f"image {name}: instance maps must be 2-D, got shape {gt.shape}")
    table = overlap_table(gt, pred)
    pq = panoptic_quality(table)
    det = detection_scores(table, thresholds=(0.5,))[0.5]
    if max(len(table.gt_ids), len(table.pred_ids)) > COCO_AP_MAX_OBJECTS:
        coco = None
        ap = {"ap": math.nan, "ap50": math.nan, "ap75": math.nan}
    else:
        coco = coco_image(gt, pred, scores)
        ap = coco_ap_images([coco], max_dets)
    row: dict[str, Any] = {"image": name, "aji": aji(table), "aji_plus": aji_plus(table), "dice": dice(table),
                           "dq": pq["dq"], "sq": pq["sq"], "pq": pq["pq"], "f1_50": det["f1"],
                           "dsb_ap50": det["dsb_ap"], **ap,
                           "tp_50": int(pq["tp"]), "fp_50": int(pq["fp"]), "fn_50": int(pq["fn"]),
                           "iou_sum_50": float(pq["iou_sum"])}
    pq_counts = f1_counts = None
    if gt_classes is not None and pred_classes is not None:
        n = _class_count(gt_classes, pred_classes, class_names)
        pq_counts = class_pq_counts(gt, pred, gt_classes, pred_classes, n)
        f1_counts = class_f1_counts(gt, pred, gt_classes, pred_classes, n)
        for k, value in enumerate(pq_from_counts(pq_counts), start=1):
            row[f"pq_{class_label(class_names, k)}"] = float(value)
    return row, coco, pq_counts, f1_counts


def pooled_scores(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """DSB AP@0.5 = ΣTP / Σ(TP + FP + FN), F1, DQ, SQ and PQ from the IoU > 0.5 counts summed over all
    images (a dataset with no object on either side scores 1.0, as a single empty image does)."""
    tp, fp, fn = (sum(int(r[k]) for r in rows) for k in ("tp_50", "fp_50", "fn_50"))
    iou_sum = sum(float(r["iou_sum_50"]) for r in rows)
    if tp + fp + fn == 0:
        return {key: 1.0 for key in POOLED_COLUMNS}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / tp if tp else 0.0
    return {"pooled_dsb_ap50": tp / (tp + fp + fn), "pooled_f1_50": 2 * tp / (2 * tp + fp + fn),
            "pooled_dq": dq, "pooled_sq": sq, "pooled_pq": dq * sq}


def image_metrics(gt: np.ndarray, pred: np.ndarray, gt_classes: np.ndarray | None = None,
                  pred_classes: np.ndarray | None = None, *, class_names: Sequence[str] | None = None,
                  scores: Mapping[int, float] | None = None, name: str = "image",
                  max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> dict[str, Any]:
    """The CSV row of one image: ``image, aji, aji_plus, dice, dq, sq, pq, f1_50, dsb_ap50, ap,
    ap50, ap75`` plus ``pq_<class>`` when both class maps are given (``class_names[k]`` names
    class id ``k``; ``class_names[0]`` is the background). Empty-image conventions are those of
    the single metrics: 1.0 when GT and prediction are both empty, 0.0 when one is; COCO AP and a
    class's PQ are NaN where the GT (for AP) or GT and prediction (for a class) hold nothing.
    """
    if (gt_classes is None) != (pred_classes is None):
        raise ValueError("per-class metrics need both class maps (gt_classes and pred_classes) or neither")
    return _image_row(name, gt, pred, gt_classes, pred_classes, class_names, scores, max_dets)[0]


# ----------------------------------------------------------------------------- many images
def _nanmean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else float("nan")


@dataclass
class EvaluationResult:
    """Per-image rows (dicts with the CSV columns) and the dataset summary."""

    per_image: list[dict[str, Any]]
    summary: dict[str, Any]
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def columns(self) -> list[str]:
        cols = list(COLUMNS)
        for row in self.per_image:
            cols.extend(k for k in row if k not in cols)
        return cols

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per image (atomically). NaN is written as an empty cell."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        for row in self.per_image:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        atomic_write_text(path, buffer.getvalue())
        return Path(path)

    def format_table(self) -> str:
        """Summary as aligned text: image-averaged metrics, then dataset-level ones."""
        s = self.summary
        lines = [f"{s.get('n_images', len(self.per_image))} image(s)", ""]
        width = max([len(k) for k in s] + [10])

        def add(key, label=None):
            if key in s:
                value = s[key]
                text = "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.6f}"
                lines.append(f"  {(label or key):<{width}}  {text}")

        lines.append("mean over images")
        for key in MEAN_COLUMNS:
            add(key)
        lines.append("pooled over images (counts summed first: StarDist / COCO-style papers)")
        for key in POOLED_COLUMNS:
            add(key)
        lines.append("dataset level")
        for key in ("ap", "ap50", "ap75", "mpq_plus"):
            add(key)
        for key in s:
            if key.startswith(("pq_", "f1_")) and key not in MEAN_COLUMNS:
                add(key)
        return "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return value


def evaluate_iter(pairs: Iterable[Any], *, class_names: Sequence[str] | None = None,
                  cancel: CancelToken | None = None, max_dets: Sequence[int] = DEFAULT_MAX_DETS,
                  total: int | None = None) -> Generator[Progress | Message, None, EvaluationResult]:
    """Evaluate image pairs one at a time, yielding ``Progress("evaluate", done, total)`` per image.

    ``pairs``: :class:`EvalPair` items, dicts, or tuples ``(gt, pred)``, ``(name, gt, pred)`` or
    ``(name, gt, pred, gt_classes, pred_classes)``; maps may be arrays, file paths or (for the
    prediction) :class:`~cellzoo.types.Instances` whose scores then feed COCO AP.
    ``class_names[k]`` names class id ``k`` (``[0]`` = background). The cancel token is checked
    between images (raising :class:`~cellzoo.types.Cancelled`). Returns an :class:`EvaluationResult`.
    """
    if total is None:  # a generator has no length: progress then reports total 0 (unknown)
        total = len(pairs) if hasattr(pairs, "__len__") else 0
    names = list(class_names) if class_names else None
    rows: list[dict] = []
    cocos: list[CocoImage] = []
    pq_counts: list[np.ndarray] = []
    f1_counts: list[np.ndarray] = []
    with_classes = None
    notes: list[str] = []
    for index, item in enumerate(pairs):
        check_cancel(cancel)
        pair = _as_pair(item, index)
        gt, gt_cls_inline, _ = _as_labels(pair.gt)
        pred, pred_cls_inline, scores = _as_labels(pair.pred)
        gt_classes = _as_classes(pair.gt_classes)
        pred_classes = _as_classes(pair.pred_classes)
        gt_classes = gt_classes if gt_classes is not None else gt_cls_inline
        if pred_classes is None and gt_classes is not None:
            pred_classes = pred_cls_inline  # an Instances' own classes count only when the GT has classes
        has = gt_classes is not None and pred_classes is not None
        if (gt_classes is None) != (pred_classes is None):
            raise ValueError(f"image {pair.name}: per-class metrics need both class maps (or neither)")
        if with_classes is None:
            with_classes = has
        elif with_classes != has:
            raise ValueError(f"image {pair.name}: class maps are given for some images but not others")
        try:
            row, coco, pq_c, f1_c = _image_row(pair.name, gt, pred, gt_classes, pred_classes, names, scores,
                                               max_dets)
        except ValueError as exc:
            raise ValueError(f"image {pair.name}: {exc}") from None
        rows.append(row)
        if coco is None:
            notes.append(f"image {pair.name}: COCO AP left out (more than {COCO_AP_MAX_OBJECTS:,} objects); "
                         f"the other metrics are complete")
        else:
            cocos.append(coco)
        if pq_c is not None:
            pq_counts.append(pq_c)
            f1_counts.append(f1_c)
        yield Progress("evaluate", index + 1, total, pair.name)
    if not rows:
        raise ValueError("nothing to evaluate: no image pairs were given")
    check_cancel(cancel)
    summary: dict[str, Any] = {"n_images": len(rows)}
    for key in MEAN_COLUMNS:
        summary[key] = _nanmean(r[key] for r in rows)
    summary.update(pooled_scores(rows))
    summary.update(coco_ap_images(cocos, max_dets) if cocos else {"ap": math.nan, "ap50": math.nan, "ap75": math.nan})
    if pq_counts:
        width = max(c.shape[0] for c in pq_counts)
        pad = lambda c, w: np.vstack([c, np.zeros((w - c.shape[0], c.shape[1]))])  # noqa: E731
        mpq, per_class = multi_pq_plus([pad(c, width) for c in pq_counts])
        f1 = f1_from_counts(np.sum([pad(c, width) for c in f1_counts], axis=0))
        summary["mpq_plus"] = mpq
        for k in range(1, width + 1):
            summary[f"pq_{class_label(names, k)}"] = float(per_class[k - 1])
        for k in range(1, width + 1):
            summary[f"f1_{class_label(names, k)}"] = float(f1[k - 1])
    return EvaluationResult(rows, summary, names, notes)


def _as_image_list(value: Any, role: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike, Instances)):
        return [value]
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            return [value]
        if value.ndim == 3:
            return list(value)
        raise ValueError(f"{role} array must be 2-D (one image) or 3-D (a stack), got shape {value.shape}")
    return list(value)


def evaluate(gt: Any, pred: Any, gt_classes: Any = None, pred_classes: Any = None, *,
             class_names: Sequence[str] | None = None, cancel: CancelToken | None = None,
             max_dets: Sequence[int] = DEFAULT_MAX_DETS, on_event=None) -> EvaluationResult:
    """Evaluate predictions against ground truth and return an :class:`EvaluationResult`.

    ``gt``/``pred`` (and the optional class maps) are each a 2-D array, a 3-D stack, a list of
    arrays, a label file or a folder of label files (paired by stem, see :func:`pair_files`).
    """
    notes: list[str] = []
    if isinstance(gt, (str, os.PathLike)) and isinstance(pred, (str, os.PathLike)):
        pairs, notes = pair_files(gt, pred, gt_classes, pred_classes)
    else:
        gts, preds = _as_image_list(gt, "ground-truth"), _as_image_list(pred, "prediction")
        if len(gts) != len(preds):
            raise ValueError(f"{len(gts)} ground-truth image(s) but {len(preds)} prediction(s); "
                             "pass one prediction per GT image")
        gcls = _as_image_list(gt_classes, "ground-truth class") or [None] * len(gts)
        pcls = _as_image_list(pred_classes, "predicted class") or [None] * len(gts)
        if len(gcls) != len(gts) or len(pcls) != len(gts):
            raise ValueError("pass one class map per image for both ground truth and prediction")
        pairs = [EvalPair(f"image_{i}", g, p, gc, pc) for i, (g, p, gc, pc) in enumerate(zip(gts, preds, gcls, pcls))]
    result = run_to_end(evaluate_iter(pairs, class_names=class_names, cancel=cancel, max_dets=max_dets), on_event)
    result.notes = notes + result.notes
    return result
