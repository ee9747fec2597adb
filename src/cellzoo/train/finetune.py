"""Fine-tuning a trained model on a few corrected images: the recipe, the honest before/after and the guard.

The loop is segment → correct → fine-tune → re-segment. With a handful of corrections the ordinary
training defaults (:class:`~cellzoo.train.trainer.TrainConfig`: AdamW 3e-4 from step 0, epochs of
``ceil(n / batch)`` steps, best by validation PQ) wreck a trained model, so every ``--base`` run (CLI,
widget, Python) goes through here instead:

* :func:`prepare_finetune_data` removes duplicate images by content (whatever their source: a layer pair,
  a folder), keeps validation apart from training, and with fewer than ``MIN_VAL_IMAGES`` + 1 images
  holds out a stripe of each image (saying so in ``notes``);
* :func:`finetune_iter` scores the base on the held-out data first, fine-tunes with
  :class:`FinetuneRecipe`, keeps the best state seen on the held-out data, and returns
  :class:`FinetuneResult` whose ``improved`` is True only when the tuned model beats the base by
  ``recipe.min_gain``. When it does not, ``model`` is given back its base weights and the tuned weights are
  written under a name that says so, with ``"finetune": {"improved": false, ...}`` in their metadata.

Contract with the fine-tune widget (H5): the widget calls ``prepare_finetune_data`` then ``finetune_iter``
and registers / pre-selects the result only when ``result.improved``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterable, Sequence

import numpy as np
import torch

from .._atomic import atomic_write_bytes
from ..data.augment import build_augment, random_crop
from ..data.sample import Sample
from ..infer.prepare import prepare_image
from ..types import CancelToken, Message, Progress, TrainStep, Validation

#: with at least this many corrected images, whole images are held out; fewer: a stripe of each. Measured
#: (benchmarks/results/finetune.md, cellzoo-fluo → MoNuSeg, 4 patches): holding out 1 of 4 whole patches
#: trained on three tissues and judged on one patch's 35 nuclei — one seed stopped early and kept the base
#: (test AJI 0.07) where the same four patches otherwise reached 0.38; a stripe of each keeps every corrected
#: tissue in training and validates on all of them
MIN_VAL_IMAGES = 1
MIN_WHOLE_IMAGE_SPLIT = 8
#: tuned weights that beat the base / that did not
TUNED_NAME = "finetuned.safetensors"
NOT_BETTER_NAME = "finetuned-not-better.safetensors"
HISTORY_NAME = "finetune_history.json"


def selection_score(metrics: dict[str, float]) -> float:
    """The held-out number that decides "better": mean of AJI and PQ (both instance-level; PQ alone
    rewards dropping hard nuclei, AJI alone rewards merging)."""
    return 0.5 * (float(metrics.get("aji", 0.0)) + float(metrics.get("pq", 0.0)))


# ----------------------------------------------------------------------------- the recipe
@dataclass
class FinetuneRecipe:
    """The fine-tuning defaults (measured: see benchmarks/results/finetune.md).

    ``lr``: peak AdamW learning rate, reached after ``warmup_steps`` linear steps, then cosine to 0; ``None``
    (default) chooses it from the base's held-out score (:func:`auto_lr`): ``lr_new_domain`` where the base
    fails (a new domain: much to learn), ``lr_near_domain`` where it already scores well (a nudge; Adam's
    first steps move every weight by about lr whatever its gradient, which in a fused, BatchNorm-free
    network at 3e-4 wrecks a good model in one step);
    ``pull_to_base``: decoupled L2-SP, every step moves each weight ``lr * pull_to_base`` of the way back to
    its base value (no weight decay toward zero); ``freeze_encoder_steps``: the encoder stays fixed for these
    first steps (decoder and heads adapt first); ``bn``: "frozen" keeps BatchNorm statistics of the base
    (batches of a few crops of one image give useless statistics), "train" updates them; ``object_crops``:
    share of crops centred on an annotated nucleus (the rest uniform); ``eval_every``: steps between
    held-out evaluations (the best state is kept), ``patience``: evaluations without improvement before
    stopping; ``min_gain``: the tuned model must beat the base's :func:`selection_score` by this much, and by
    ``noise_margin / sqrt(held-out nuclei)`` when that is more (:func:`required_gain`: a gain measured on a
    few held-out nuclei is mostly noise, and picking the best of several evaluations on them favours it);
    ``time_budget_s``: wall-clock limit of the training (``None``: none)."""

    steps: int = 200
    lr: float | None = None
    lr_new_domain: float = 1e-3
    lr_near_domain: float = 3e-5
    warmup_steps: int = 20
    batch_size: int = 4
    crop: int = 256
    pull_to_base: float = 0.0
    freeze_encoder_steps: int = 0
    bn: str = "frozen"
    object_crops: float = 0.5
    augment: Any = ("flip", "scale", "brightness", "stain")
    grad_clip: float | None = 1.0
    eval_every: int = 25
    patience: int = 4
    min_gain: float = 0.01
    noise_margin: float = 0.5
    seed: int = 0
    time_budget_s: float | None = None
    #: pseudo-labels: keep predicted instances whose score is at least this; share of crops from pseudo images
    pseudo_min_score: float = 0.8
    pseudo_share: float = 0.5
    #: synthesis: share of corrected-image crops that get new nuclei pasted into their empty places (cells
    #: of the corrected images, re-sized, turned and re-lit: :class:`cellzoo.data.spacefill.SpaceFill`), and
    #: how many per crop. 0 (default) until the benchmark shows it helps: benchmarks/results/finetune.md
    synthesis: float = 0.0
    synthesis_cells: int = 8

    def __post_init__(self) -> None:
        checks = [(self.steps >= 1, "steps must be >= 1"), (self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "lr must be a finite number > 0 (or None: from the base's score)"),
                  (self.lr_new_domain > 0 and self.lr_near_domain > 0, "lr_new_domain / lr_near_domain must be > 0"),
                  (self.warmup_steps >= 0, "warmup_steps must be >= 0"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.crop >= 16, "crop must be >= 16 px"), (self.pull_to_base >= 0, "pull_to_base must be >= 0"),
                  (self.bn in ("frozen", "train"), "bn must be 'frozen' or 'train'"),
                  (0.0 <= self.object_crops <= 1.0, "object_crops must be in [0, 1]"),
                  (self.eval_every >= 1, "eval_every must be >= 1"), (self.noise_margin >= 0, "noise_margin must be >= 0"), (self.patience >= 1, "patience must be >= 1"),
                  (0.0 <= self.pseudo_share < 1.0, "pseudo_share must be in [0, 1)"),
                  (0.0 <= self.synthesis <= 1.0, "synthesis must be in [0, 1]"),
                  (self.synthesis_cells >= 1, "synthesis_cells must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"FinetuneRecipe: {message}")

    @classmethod
    def for_data(cls, n_pixels_or_samples: int | Sequence[Sample], **overrides: Any) -> "FinetuneRecipe":
        """The recipe with its number of steps scaled to the amount of corrected data: a number of
        training pixels (or a list of samples, whose pixels are counted). ``overrides`` win."""
        if isinstance(n_pixels_or_samples, (int, np.integer)):
            pixels = int(n_pixels_or_samples)
        else:
            pixels = sum(int(s.labels.size) for s in n_pixels_or_samples)
        # measured (cellzoo-he → DSB, 2 patches): the held-out score plateaus by ~150 steps at lr 1e-3
        # (true AJI 0.45 at 150 steps, 0.44 at 400); more data gets more steps, up to MAX_STEPS
        steps = int(np.clip(round(MIN_STEPS + STEPS_PER_MPX * pixels / 1e6), MIN_STEPS, MAX_STEPS))
        values = {"steps": steps, "warmup_steps": max(5, steps // 10), "eval_every": max(10, steps // 8)}
        values.update(overrides)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if isinstance(out["augment"], tuple):
            out["augment"] = list(out["augment"])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FinetuneRecipe":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown fine-tuning option(s) {unknown}; valid: {sorted(names)}")
        return cls(**values)


#: FinetuneRecipe.for_data: steps = MIN_STEPS + STEPS_PER_MPX × training megapixels, at most MAX_STEPS
MIN_STEPS, STEPS_PER_MPX, MAX_STEPS = 200, 250.0, 600


# ----------------------------------------------------------------------------- data: duplicates, hold-out
@dataclass
class FinetuneData:
    """Training and held-out samples, never overlapping in content. ``notes`` say what was done."""

    train: list[Sample]
    val: list[Sample]
    notes: list[str] = field(default_factory=list)
    duplicates_removed: int = 0
    holdout_region: bool = False


def _thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    """Gray size×size block means, z-scored: equal for re-encoded / re-scaled copies of one image."""
    from skimage.transform import resize

    gray = prepare_image(image).mean(axis=2)
    thumb = resize(gray, (size, size), anti_aliasing=True, preserve_range=True).ravel()
    std = thumb.std()
    return (thumb - thumb.mean()) / std if std > 0 else thumb * 0.0


def image_fingerprint(image: np.ndarray) -> tuple[str, np.ndarray, float]:
    """(sha256 of the pixels, z-scored 32×32 thumbnail, aspect ratio) of one image."""
    array = np.ascontiguousarray(np.asarray(image))
    digest = hashlib.sha256(str((array.shape, array.dtype.str)).encode() + array.tobytes()).hexdigest()
    return digest, _thumbnail(array), array.shape[0] / array.shape[1]


def same_content(a: tuple[str, np.ndarray, float], b: tuple[str, np.ndarray, float], threshold: float = 0.98) -> bool:
    """Exact copy (same hash) or near copy (same aspect within 2 % and thumbnails correlated ≥ ``threshold``)."""
    if a[0] == b[0]:
        return True
    if abs(a[2] - b[2]) > 0.02 * max(a[2], b[2]):
        return False
    if not a[1].any() or not b[1].any():
        return False
    return float(np.dot(a[1], b[1]) / a[1].size) >= threshold


def _unique(samples: Sequence[Sample], prints: list) -> tuple[list[Sample], list, list[tuple[str, str]]]:
    kept, kept_prints, dropped = [], [], []
    for sample, fp in zip(samples, prints):
        twin = next((k for k, kfp in zip(kept, kept_prints) if same_content(fp, kfp)), None)
        if twin is None:
            kept.append(sample)
            kept_prints.append(fp)
        else:
            dropped.append((sample.name, twin.name))
    return kept, kept_prints, dropped


def _region(sample: Sample, window: tuple[slice, slice], suffix: str) -> Sample:
    return Sample(f"{sample.name}{suffix}", np.ascontiguousarray(sample.image[window]),
                  np.ascontiguousarray(sample.labels[window]),
                  None if sample.classes is None else np.ascontiguousarray(sample.classes[window]),
                  dict(sample.meta))


def holdout_stripe(sample: Sample, fraction: float = 0.25, gap: int = 16) -> tuple[Sample, Sample]:
    """(training part, held-out part) of one image: the last ``fraction`` of its longer axis is held out,
    ``gap`` pixels between them are used by neither (a nucleus on the cut is not seen on both sides)."""
    h, w = sample.labels.shape
    along_x = w >= h
    length = w if along_x else h
    held = max(1, int(round(length * fraction)))
    cut = length - held
    train_end = max(1, cut - gap)
    if along_x:
        train_window = (slice(None), slice(0, train_end))
        val_window = (slice(None), slice(cut, None))
        side = "right"
    else:
        train_window = (slice(0, train_end), slice(None))
        val_window = (slice(cut, None), slice(None))
        side = "bottom"
    return (_region(sample, train_window, f" [train: all but {side} {fraction:.0%}]"),
            _region(sample, val_window, f" [held out: {side} {fraction:.0%}]"))


def prepare_finetune_data(train_samples: Iterable[Sample], val_samples: Iterable[Sample] | None = None, *,
                          val_fraction: float = 0.25, seed: int = 0, holdout_fraction: float = 0.25) -> FinetuneData:
    """Training / held-out samples for :func:`finetune_iter`, de-duplicated by content.

    Duplicates among the training samples (exact pixels, or a near copy: same aspect, thumbnails
    correlated ≥ 0.98) are dropped; a validation sample that duplicates a training one is dropped from
    validation. Without validation samples: with at least ``MIN_WHOLE_IMAGE_SPLIT`` images, a seeded
    ``val_fraction`` of whole images is held out; with fewer (one corrected image, or two), the last
    ``holdout_fraction`` of each image's longer axis is held out and the rest trains (``holdout_region``)."""
    train = list(train_samples)
    if not train:
        raise ValueError("no corrected images to fine-tune on: give at least one image with its labels")
    notes: list[str] = []
    prints = [image_fingerprint(s.image) for s in train]
    train, prints, dropped = _unique(train, prints)
    removed = len(dropped)
    if dropped:
        notes.append(f"{len(dropped)} duplicate training image(s) removed: "
                     + ", ".join(f"{a!r} = {b!r}" for a, b in dropped[:5]))
    val = list(val_samples) if val_samples is not None else []
    if val:
        val_prints = [image_fingerprint(s.image) for s in val]
        val, val_prints, val_dropped = _unique(val, val_prints)
        in_train = [s.name for s, fp in zip(val, val_prints) if any(same_content(fp, t) for t in prints)]
        val = [s for s in val if s.name not in in_train]
        removed += len(val_dropped) + len(in_train)
        if val_dropped:
            notes.append(f"{len(val_dropped)} duplicate validation image(s) removed")
        if in_train:
            notes.append(f"{len(in_train)} validation image(s) are also training images and were removed from "
                         f"validation: {', '.join(in_train[:5])}")
    holdout = False
    if not val:
        if len(train) >= MIN_WHOLE_IMAGE_SPLIT:
            order = np.random.default_rng(seed).permutation(len(train))
            n_val = min(len(train) - 1, max(MIN_VAL_IMAGES, round(val_fraction * len(train))))
            val = [train[i] for i in order[:n_val]]
            train = [train[i] for i in order[n_val:]]
            notes.append(f"held out {len(val)} of {len(train) + len(val)} images for validation")
        else:
            pairs = [holdout_stripe(s, holdout_fraction) for s in train]
            train = [p[0] for p in pairs]
            val = [p[1] for p in pairs]
            holdout = True
            which = "one image" if len(pairs) == 1 else f"{len(pairs)} images"
            notes.append(f"{which}: held out the last {holdout_fraction:.0%} of each image (right or bottom "
                         "stripe) for validation; the rest trains")
    return FinetuneData(train=train, val=val, notes=notes, duplicates_removed=removed, holdout_region=holdout)


# ----------------------------------------------------------------------------- result
@dataclass
class FinetuneResult:
    """``before`` / ``after``: the same held-out images scored with the base and with the best tuned state.
    ``improved``: the tuned model beat the base by ``recipe.min_gain`` (:func:`selection_score`).
    ``best_path``: the tuned weights (``finetuned.safetensors``, or ``finetuned-not-better.safetensors``
    when not improved; ``None`` without ``out_dir`` or when cancelled before any evaluation)."""

    before: dict[str, float]
    after: dict[str, float]
    improved: bool
    best_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False
    steps: int = 0

    def summary(self) -> str:
        """One line: base → tuned on the held-out data, and what was kept."""
        b, a = self.before, self.after
        numbers = (f"PQ {b.get('pq', float('nan')):.3f} → {a.get('pq', float('nan')):.3f}, "
                   f"AJI {b.get('aji', float('nan')):.3f} → {a.get('aji', float('nan')):.3f}")
        if self.improved:
            return f"improved on the held-out data: {numbers}" + (f"; saved {self.best_path}" if self.best_path else "")
        where = f"; tuned weights at {self.best_path} if you want them" if self.best_path else ""
        return f"did not beat the base: {numbers}; kept the base{where}"


# ----------------------------------------------------------------------------- training
class _CropSource:
    """Crops of one training image: uniform, or centred on an annotated nucleus (jittered)."""

    def __init__(self, sample: Sample, uncertain: np.ndarray | None = None) -> None:
        from scipy import ndimage

        self.image = prepare_image(sample.image)
        self.labels = sample.labels.astype(np.int32, copy=False)
        self.classes = sample.classes
        self.uncertain = uncertain
        ids = np.unique(self.labels)
        ids = ids[ids > 0]
        self.centres = np.array(ndimage.center_of_mass(np.ones_like(self.labels), self.labels, ids)) \
            if ids.size else np.zeros((0, 2))

    def crop(self, size: int, rng: np.random.Generator, centred: bool):
        h, w = self.labels.shape
        if centred and len(self.centres) and h >= size and w >= size:
            cy, cx = self.centres[rng.integers(len(self.centres))]
            jitter = rng.integers(-size // 4, size // 4 + 1, size=2)
            y = int(np.clip(cy - size // 2 + jitter[0], 0, h - size))
            x = int(np.clip(cx - size // 2 + jitter[1], 0, w - size))
            window = (slice(y, y + size), slice(x, x + size))
            return (self.image[window], self.labels[window],
                    None if self.classes is None else self.classes[window])
        if self.uncertain is not None:  # pseudo-labels: the candidate crop with the least uncertain area
            best, best_bad = None, math.inf
            for _ in range(8):
                y = int(rng.integers(max(1, h - size + 1)))
                x = int(rng.integers(max(1, w - size + 1)))
                bad = float(self.uncertain[y:y + size, x:x + size].mean())
                if bad < best_bad:
                    best, best_bad = (y, x), bad
            y, x = best
            window = (slice(y, y + size), slice(x, x + size))
            return random_crop(self.image[window], self.labels[window],
                               None if self.classes is None else self.classes[window], size, rng)
        return random_crop(self.image, self.labels, self.classes, size, rng)


def pseudo_label_samples(model, images: Sequence[np.ndarray], *, min_score: float, device="cpu",
                         cancel: CancelToken | None = None) -> Generator[Any, None, list[tuple[Sample, np.ndarray]]]:
    """The model's confident instances on unlabelled images as training samples: instances scored below
    ``min_score`` are removed from the labels and marked uncertain (with a 3-px margin), so crops are drawn
    where little is uncertain. Yields Progress; returns (sample, uncertain mask) pairs."""
    from scipy import ndimage

    from ..infer.engine import segment_iter
    from ..types import run_to_end

    out = []
    yield Progress("pseudo-labels", 0, len(images))
    for index, image in enumerate(images):
        result = run_to_end(segment_iter(model, image, device=device, amp=False, channels_last=False, cancel=cancel))
        labels = result.labels.astype(np.int32)
        low = [i for i, s in result.scores.items() if s < min_score]
        uncertain = np.isin(labels, low) if low else np.zeros(labels.shape, bool)
        uncertain = ndimage.binary_dilation(uncertain, iterations=3)
        labels[uncertain] = 0
        classes = None
        if result.classes is not None:
            classes = np.where(labels > 0, result.classes, 0).astype(np.uint8)
        out.append((Sample(f"pseudo-{index}", np.asarray(image), labels, classes), uncertain))
        yield Progress("pseudo-labels", index + 1, len(images))
    return out


def _set_bn(model: torch.nn.Module, mode: str) -> None:
    if mode == "frozen":
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


#: base selection scores at / below which the new-domain lr applies (the base fails here: 0.03–0.12 for
#: cellzoo-fluo on MoNuSeg patches, where a mapping that started lowering the lr from 0 gave 3.9e-4 to a base
#: at 0.107 and its single corrected patch taught it nothing for the test split, test AJI 0.08, while a base at
#: 0.03 got 7.6e-4 and reached 0.44), and at / above which the near-domain lr applies; log-linear between
FAILING_BASE_SCORE, GOOD_BASE_SCORE = 0.2, 0.4


def count_nuclei(samples: Sequence[Sample]) -> int:
    return int(sum(np.count_nonzero(np.bincount(np.asarray(s.labels).ravel().astype(np.int64))[1:]) for s in samples))


def required_gain(recipe: FinetuneRecipe, n_nuclei: int) -> float:
    """How much the tuned model must beat its base (:func:`selection_score`) on held-out data holding
    ``n_nuclei`` annotated nuclei: ``max(min_gain, noise_margin / sqrt(n))``. A per-nucleus score spreads
    by about 0.35 between nuclei, so a mean over n of them is uncertain by ~0.35/sqrt(n); 0.5/sqrt(n) is
    ~1.5 of those standard errors. Measured need (benchmarks/results/finetune.md, he-to-monusac): with
    ~10-40 held-out nuclei, held-out gains of +0.05 to +0.08 came with test drops of 0.08 to 0.15 AJI."""
    return float(max(recipe.min_gain, recipe.noise_margin / math.sqrt(max(1, n_nuclei))))


#: metadata of the base that describe how to run it and still hold for the tuned model
INHERITED_METADATA = ("class_names", "class_colors", "normalization", "pixel_size_um", "default_scale",
                      "object_area", "scale_range", "licence", "training_data")


def tuned_metadata(base_meta: dict[str, Any], train: Sequence[Sample]) -> dict[str, Any]:
    """How to run the tuned model: the base's run settings, except that it runs at the corrections' own scale
    (``default_scale`` 1 where the base's was "auto") and ``object_area`` (what an explicit scale "auto" aims
    at) becomes the median area of the corrected nuclei. The tuned model learnt the user's images at their
    size; "auto" decides the size from the model's own first pass, and a model tuned on two patches is not yet
    sure enough for that: measured (cellzoo-fluo tuned on 2 MoNuSeg patches, held-out AJI 0.53), "auto" shrank
    four MoNuSeg test images to 0.50–0.73× (AJI 0.035–0.060) where scale 1 gave 0.078–0.181."""
    meta = {key: base_meta[key] for key in INHERITED_METADATA if base_meta.get(key) is not None}
    if meta.get("default_scale") == "auto":
        meta["default_scale"] = 1.0
    if meta.get("object_area"):
        from ..infer.engine import AUTO_SCALE_MIN_OBJECTS

        areas = np.concatenate([np.bincount(np.asarray(s.labels).ravel().astype(np.int64))[1:] for s in train])
        areas = areas[areas > 0]
        if areas.size >= AUTO_SCALE_MIN_OBJECTS:
            meta["object_area"] = float(np.median(areas))
    return meta


def auto_lr(base_score: float, recipe: FinetuneRecipe) -> float:
    """Peak learning rate for a base that scores ``base_score`` (:func:`selection_score`) on the held-out
    data: ``lr_new_domain`` up to ``FAILING_BASE_SCORE``, log-linear to ``lr_near_domain`` at ``GOOD_BASE_SCORE``
    and above."""
    if recipe.lr is not None:
        return recipe.lr
    q = float(np.clip((base_score - FAILING_BASE_SCORE) / (GOOD_BASE_SCORE - FAILING_BASE_SCORE), 0.0, 1.0))
    if q in (0.0, 1.0):
        return recipe.lr_new_domain if q == 0.0 else recipe.lr_near_domain
    return float(math.exp((1 - q) * math.log(recipe.lr_new_domain) + q * math.log(recipe.lr_near_domain)))


def _lr_at(step: int, recipe: FinetuneRecipe, total: int, peak: float) -> float:
    if recipe.warmup_steps and step <= recipe.warmup_steps:
        return peak * step / recipe.warmup_steps
    span = max(1, total - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def finetune_iter(model, data: FinetuneData, recipe: FinetuneRecipe | None = None, *, device: str = "auto",
                  cancel: CancelToken | None = None, out_dir: str | Path | None = None,
                  pseudo_images: Sequence[np.ndarray] | None = None,
                  base_name: str | None = None) -> Generator[Any, None, FinetuneResult]:
    """Fine-tune ``model`` (a dense :class:`~cellzoo.models.base.CellModel` or a zoo name) on ``data``.

    Yields Message, Progress (held-out scoring), TrainStep per step and Validation per evaluation
    (``epoch`` = evaluation number); returns :class:`FinetuneResult`. The base is scored on ``data.val``
    first; the best tuned state on ``data.val`` is kept. Afterwards ``model`` holds the tuned weights when
    ``improved``, else its base weights. ``pseudo_images``: unlabelled images whose confident predictions
    (by the base) join the training crops (``recipe.pseudo_share`` of them). ``recipe=None``:
    :meth:`FinetuneRecipe.for_data` of the training pixels."""
    from ..infer.device import select_device
    from ..infer.engine import resolve_model
    from ..zoo.weights import save_weights
    from .trainer import validation_metrics

    if isinstance(model, str):
        base_name = base_name or model
        model = resolve_model(model)
    base_name = base_name or (getattr(model, "metadata", None) or {}).get("name") or model.family
    if model.kind != "dense":
        raise ValueError(f"fine-tuning handles dense families (RepSNet, FullNet); {model.family!r} is a "
                         f"{model.kind} model")
    if not data.train:
        raise ValueError("no training images left after de-duplication")
    if not data.val:
        raise ValueError("no held-out images: build the data with prepare_finetune_data")
    recipe = recipe or FinetuneRecipe.for_data(data.train)
    device, device_name = select_device(device)
    model.to(device)
    notes = list(data.notes)
    yield Message(f"fine-tuning {base_name} on {device_name}: {len(data.train)} training and {len(data.val)} "
                  f"held-out image(s), {recipe.steps} steps")
    for note in data.notes:
        yield Message(note)

    held_out_nuclei = count_nuclei(data.val)
    needed = required_gain(recipe, held_out_nuclei)
    notes.append(f"held-out data: {held_out_nuclei} annotated nuclei; a tuned model is kept if it beats the base "
                 f"by ≥ {needed:.3f} (mean of AJI and PQ)")
    yield Message(notes[-1])
    before = yield from validation_metrics(model, data.val, device=device, cancel=cancel)
    yield Message(f"base on the held-out data: PQ {before.get('pq', 0):.4f}, AJI {before.get('aji', 0):.4f}")
    yield Validation(0, before, False)
    peak_lr = auto_lr(selection_score(before), recipe)
    if recipe.lr is None:
        notes.append(f"learning rate {peak_lr:.2g}, from the base's held-out score {selection_score(before):.3f}")
        yield Message(notes[-1])
    base_state = _state_copy(model)
    base_meta = dict(getattr(model, "metadata", None) or {})
    run_meta = tuned_metadata(base_meta, data.train)
    if run_meta.get("default_scale") != base_meta.get("default_scale"):
        notes.append(f"the tuned model runs at scale 1, the scale of the corrections (the base: "
                     f"{base_meta.get('default_scale')}); scale \"auto\", when asked for, aims at the corrected "
                     f"nuclei's median area {run_meta.get('object_area', 0):.0f} px (base: "
                     f"{base_meta.get('object_area', 0):.0f} px)")
        yield Message(notes[-1])
    # the tuned model is scored as it will run: with its own metadata
    model.metadata = {**base_meta, **run_meta}
    base_params = {name: p.detach().clone() for name, p in model.named_parameters()}

    rng = np.random.default_rng(recipe.seed)
    torch.manual_seed(recipe.seed)
    sources = [_CropSource(s) for s in data.train]
    pseudo_sources: list[_CropSource] = []
    if pseudo_images:
        pairs = yield from pseudo_label_samples(model, list(pseudo_images), min_score=recipe.pseudo_min_score,
                                                device=device, cancel=cancel)
        pseudo_sources = [_CropSource(s, uncertain) for s, uncertain in pairs]
        kept = sum(int(len(np.unique(s.labels)) - 1) for s, _u in pairs)
        notes.append(f"pseudo-labels: {kept} confident instances (score ≥ {recipe.pseudo_min_score}) on "
                     f"{len(pairs)} unlabelled image(s)")
        yield Message(notes[-1])
    # crops no larger than the smallest training image: a padded crop would show reflected nuclei labelled
    # as background; the augmentation window is 30 % larger where the images allow (scaling brings no padding)
    smallest = min(min(s.labels.shape) for s in data.train)
    divisor = model.size_divisor
    crop = max(divisor, min(-(-recipe.crop // divisor) * divisor, smallest // divisor * divisor))
    window = max(crop, min(int(math.ceil(crop * 1.3)), smallest))
    augment = build_augment(list(recipe.augment) if isinstance(recipe.augment, tuple) else recipe.augment)
    synthesise = None
    if recipe.synthesis > 0:
        from ..data.spacefill import SpaceFill, build_cell_library

        library = build_cell_library(data.train, max_cells=2000, seed=recipe.seed)
        if library:
            synthesise = SpaceFill(library, n_cells=recipe.synthesis_cells)
            notes.append(f"synthesis: {recipe.synthesis:.0%} of the crops get up to {recipe.synthesis_cells} of "
                         f"{len(library)} corrected nuclei pasted into their empty places")
            yield Message(notes[-1])

    def make_batch():
        images, targets = [], []
        for _ in range(recipe.batch_size):
            use_pseudo = bool(pseudo_sources) and rng.random() < recipe.pseudo_share
            pool = pseudo_sources if use_pseudo else sources
            source = pool[rng.integers(len(pool))]
            triple = source.crop(window, rng, centred=not use_pseudo and rng.random() < recipe.object_crops)
            if synthesise is not None and not use_pseudo and rng.random() < recipe.synthesis:
                triple = synthesise(np.asarray(triple[0], np.float32), triple[1], triple[2], rng)
            triple = augment(np.array(triple[0], np.float32), np.array(triple[1]),
                             None if triple[2] is None else np.array(triple[2]), rng)
            image, labels, classes = random_crop(*triple, crop, rng)
            images.append(model.preprocess(image))
            targets.append(model.targets(labels, classes))
        return (torch.stack(images).to(device),
                {k: torch.from_numpy(np.stack([t[k] for t in targets])).to(device) for k in targets[0]})

    parameters = [p for p in model.parameters() if p.requires_grad]
    encoder_params = {id(p) for name, p in model.named_parameters() if name.startswith("encoder.")}
    optimizer = torch.optim.AdamW(parameters, lr=peak_lr, weight_decay=0.0)
    history: list[dict[str, Any]] = [{"step": 0, "metrics": before, "score": selection_score(before)}]
    best_score, best_metrics, best_state, best_step = -math.inf, None, None, 0
    evals_without_gain, cancelled, step = 0, False, 0
    started = time.perf_counter()
    losses_window: list[float] = []
    for step in range(1, recipe.steps + 1):
        if cancel is not None and cancel.cancelled:
            cancelled = True
            step -= 1
            break
        model.train()
        _set_bn(model, recipe.bn)
        encoder_frozen = step <= recipe.freeze_encoder_steps
        lr = _lr_at(step, recipe, recipe.steps, peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = make_batch()
        optimizer.zero_grad(set_to_none=True)
        losses = model.loss(model(images), targets)
        total = losses["total"]
        if not torch.isfinite(total):
            notes.append(f"training diverged at step {step} (loss {float(total)}); stopped")
            yield Message(notes[-1], "warning")
            break
        total.backward()
        if encoder_frozen:
            for p in parameters:
                if id(p) in encoder_params:
                    p.grad = None
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, recipe.grad_clip)
        optimizer.step()
        if recipe.pull_to_base:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.sub_(lr * recipe.pull_to_base * (p - base_params[name]))
        values = {k: float(v.detach()) for k, v in losses.items()}
        losses_window.append(values["total"])
        yield TrainStep(1, step, recipe.steps, values, lr)

        out_of_time = recipe.time_budget_s is not None and time.perf_counter() - started > recipe.time_budget_s
        if step % recipe.eval_every == 0 or step == recipe.steps or out_of_time:
            metrics = yield from validation_metrics(model, data.val, device=device, cancel=cancel)
            score = selection_score(metrics)
            is_best = score > best_score
            if is_best:
                best_score, best_metrics, best_state, best_step = score, metrics, _state_copy(model), step
                evals_without_gain = 0
            else:
                evals_without_gain += 1
            history.append({"step": step, "metrics": metrics, "score": score, "best": is_best,
                            "loss": float(np.mean(losses_window)) if losses_window else None,
                            "seconds": time.perf_counter() - started})
            losses_window = []
            yield Validation(len(history) - 1, metrics, is_best)
            if evals_without_gain >= recipe.patience:
                notes.append(f"stopped early at step {step}: {recipe.patience} evaluations without gain")
                yield Message(notes[-1])
                break
            if out_of_time:
                notes.append(f"stopped at step {step}: time budget of {recipe.time_budget_s:g} s used")
                yield Message(notes[-1])
                break
    model.eval()

    after = best_metrics if best_metrics is not None else dict(before)
    improved = best_metrics is not None and selection_score(after) >= selection_score(before) + needed
    finetune_meta = {"base": base_name, "before": before, "after": after, "improved": bool(improved),
                     "best_step": best_step, "steps_run": step, "lr": peak_lr, "recipe": recipe.to_dict(),
                     "selection": "mean of AJI and PQ on the held-out data", "min_gain": recipe.min_gain,
                     "required_gain": needed, "held_out_nuclei": held_out_nuclei,
                     "notes": notes, "train_images": [s.name for s in data.train][:200],
                     "val_images": [s.name for s in data.val][:200], "holdout_region": data.holdout_region}
    best_path = None
    if best_state is not None:
        model.load_state_dict(best_state)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            best_path = save_weights(model, out / (TUNED_NAME if improved else NOT_BETTER_NAME),
                                     {**run_meta, "metrics": after, "finetune": finetune_meta})
            atomic_write_bytes(out / HISTORY_NAME, json.dumps(history, indent=1).encode())
    if not improved:
        model.load_state_dict(base_state)
        model.metadata = base_meta
    model.to(device).eval()
    result = FinetuneResult(before=before, after=after, improved=bool(improved), best_path=best_path, notes=notes,
                            history=history, cancelled=cancelled, steps=step)
    yield Message(result.summary(), "info" if improved else "warning")
    return result


def finetune(model, data: FinetuneData, recipe: FinetuneRecipe | None = None, on_event=None, **kwargs) -> FinetuneResult:
    """Run :func:`finetune_iter` to the end."""
    from ..types import run_to_end

    return run_to_end(finetune_iter(model, data, recipe, **kwargs), on_event)


__all__ = ["FinetuneRecipe", "FinetuneData", "FinetuneResult", "prepare_finetune_data", "finetune_iter", "finetune",
           "auto_lr", "image_fingerprint", "same_content", "holdout_stripe", "pseudo_label_samples", "selection_score"]
