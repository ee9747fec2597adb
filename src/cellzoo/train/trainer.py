"""The training generator: events per step and epoch, validation through the real inference engine,
best checkpoint by validation PQ, atomic checkpoints, resume, cancel, seeds, AMP on CUDA."""
from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterable, Mapping, Sequence

import numpy as np
import torch

from .._atomic import atomic_write_bytes
from ..data.augment import build_augment, class_aware_oversampling_weights, random_crop
from ..data.sample import Sample
from ..infer.device import select_device
from ..infer.engine import segment_iter
from ..infer.prepare import prepare_image
from ..models.base import CellModel
from ..types import CancelToken, Message, Progress, TrainStep, Validation, check_cancel, run_to_end

BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"
STATE_NAME = "last_state.pt"
HISTORY_NAME = "history.json"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved into the checkpoints' metadata).

    ``crop``: training tile edge (rounded up to the model's size divisor); ``augment``: names / dict for
    :func:`cellzoo.data.augment.build_augment`; ``val_fraction``: used only when no validation samples
    are given; ``resume``: continue from ``out_dir/last_state.pt`` if present; ``amp``: mixed precision
    on CUDA (ignored elsewhere); ``scheduler``: "plateau" (ReduceLROnPlateau on validation PQ, factor 0.2,
    patience 8, as RepSNet), "cosine" or "none"."""

    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "plateau"
    crop: int = 256
    val_fraction: float = 0.1
    augment: Any = "default"
    oversample_rare: bool = False
    seed: int = 322
    amp: bool = True
    out_dir: str = "cellzoo-training"
    resume: bool = False
    num_workers: int = 0
    max_val_images: int | None = 8
    val_tile: int | None = None
    device: str = "auto"
    data_name: str = ""
    grad_clip: float | None = None
    cpu_bf16: bool = False
    #: SpaceFill: paste up to this many library cells (from the training samples) into empty places per crop
    space_fill: int = 0

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                   "weight_decay must be a finite number >= 0"),
                  (math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"), (self.crop >= 16, "crop must be >= 16 px"),
                  (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
                  (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch must be >= 1"),
                  (self.optimizer in ("adam", "adamw"), "optimizer must be 'adam' or 'adamw'"),
                  (self.scheduler in ("plateau", "cosine", "none"), "scheduler must be plateau, cosine or none"),
                  (self.num_workers >= 0, "num_workers must be >= 0 (0 makes the batches in the main process)")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    best_path: Path | None
    best_metric: float
    history: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False
    last_path: Path | None = None


def split_samples(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded random split; at least one validation sample when ``val_fraction > 0`` and there are ≥ 2."""
    samples = list(samples)
    if val_fraction <= 0 or len(samples) < 2:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(len(samples) - 1, max(1, round(val_fraction * len(samples))))
    return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]


def validation_metrics(model: CellModel, samples: Sequence[Sample], *, device, tile=None, cancel=None):
    """Run the segment engine on each sample and score it with ``cellzoo.metrics``.

    Yields ``Progress("validation", i, n)``; returns mean AJI, Dice, PQ (per image, then averaged)
    and, for typed models with class maps, CoNIC mPQ+ (counts summed over images)."""
    from ..metrics.classes import class_pq_counts, multi_pq_plus
    from ..metrics.instance import aji, dice, panoptic_quality

    rows, counts, coco_pairs = [], [], []
    typed = model.num_classes > 2
    yield Progress("validation", 0, len(samples))
    for index, sample in enumerate(samples):
        check_cancel(cancel)  # between images too: one image can take seconds
        # tile progress is not forwarded: validation reports per image
        prediction = run_to_end(segment_iter(model, sample.image, device=device, tile=tile, amp=False,
                                             channels_last=False, cancel=cancel))
        pq = panoptic_quality(sample.labels, prediction.labels)
        rows.append({"aji": aji(sample.labels, prediction.labels), "dice": dice(sample.labels, prediction.labels),
                     "pq": pq["pq"], "dq": pq["dq"], "sq": pq["sq"]})
        if model.kind == "detection":  # detectors are also scored with COCO mask AP (uses the scores)
            coco_pairs.append((sample.labels, prediction.labels, prediction.scores))
        if typed and sample.classes is not None:
            counts.append(class_pq_counts(sample.labels, prediction.labels, sample.classes,
                                          prediction.class_map(), model.num_classes - 1))
        yield Progress("validation", index + 1, len(samples))
    metrics = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]} if rows else {}
    if counts:
        metrics["mpq+"] = multi_pq_plus(counts)[0]
    if coco_pairs:
        from ..metrics.coco import coco_ap

        coco = coco_ap(*(list(column) for column in zip(*coco_pairs)))
        metrics.update(coco_ap=coco["ap"], coco_ap50=coco["ap50"], coco_ap75=coco["ap75"])
    return metrics


def _detection_losses(model: CellModel, batch, device: torch.device, amp_dtype) -> dict[str, torch.Tensor]:
    """Detection families (Cascade, SCTS) take lists (the number of objects differs per crop) and
    compute their losses inside ``forward(images, targets)``; ``model.loss`` passes them on."""
    from ..models._detection_common import targets_to_torch

    images = [image.to(device) for image, _t in batch]
    targets = [targets_to_torch(target, device) for _i, target in batch]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = model(images, targets)
    return model.loss(outputs, targets)


class _AugmentWithFill:
    """Space-filling augmentation (cells of the training set pasted into empty places) before ``augment``
    (a class rather than a closure so that worker processes started by "spawn" can receive it)."""

    def __init__(self, augment, train_samples: Sequence[Sample], config: TrainConfig) -> None:
        from ..data.spacefill import SpaceFill, build_cell_library

        self.augment = augment
        self.fill = SpaceFill(build_cell_library(train_samples, max_cells=5000, seed=config.seed),
                              n_cells=config.space_fill)

    def __call__(self, image, labels, classes, rng):
        return self.augment(*self.fill(image, labels, classes, rng), rng)


class _BatchMaker:
    """Builds training batch ``(epoch, step)`` on the CPU: crops drawn by class-aware sampling, augmented,
    cropped to size, preprocessed, with the model's targets. Each batch has its own generator, seeded by
    (seed, epoch, step), so a batch is the same whether it is made here or in a worker process, in any
    order, and a resumed run draws exactly the batches the uninterrupted one would have."""

    def __init__(self, model: CellModel, train_samples: Sequence[Sample], config: TrainConfig, crop: int) -> None:
        self.model = model  # only its CPU-side preprocess and targets are used here (no parameters)
        self.samples = list(train_samples)
        self.prepared = [prepare_image(s.image) for s in self.samples]
        weights = class_aware_oversampling_weights(self.samples) if config.oversample_rare else \
            np.ones(len(self.samples))
        self.pick = weights / weights.sum()
        self.augment = build_augment(config.augment)
        if config.space_fill:
            self.augment = _AugmentWithFill(self.augment, self.samples, config)
        self.crop = crop
        # augment a larger window than the crop so that scaling / elastic moves do not bring in padding
        self.window = int(math.ceil(crop * 1.3))
        self.batch_size = config.batch_size
        self.seed = config.seed

    def __getstate__(self) -> dict[str, Any]:
        # workers started by "spawn" (macOS, Windows) receive a pickled copy: send the model's CPU copy,
        # not the tensors of a model that the trainer has moved to the GPU meanwhile
        import copy

        return {**self.__dict__, "model": copy.deepcopy(self.model).cpu()}

    def crops(self, epoch: int, step: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        rng = np.random.default_rng([self.seed, epoch, step])
        out = []
        for index in rng.choice(len(self.samples), size=self.batch_size, p=self.pick):
            sample = self.samples[index]
            triple = random_crop(self.prepared[index], sample.labels.astype(np.int32, copy=False), sample.classes,
                                 self.window, rng)
            triple = self.augment(*triple, rng)
            out.append(random_crop(*triple, self.crop, rng))
        return out

    def __call__(self, epoch: int, step: int):
        """Dense families: (images N×C×H×W, {target: N×...}) as CPU tensors. Detection families: per crop
        (image tensor, targets) — their number of objects differs, so they stay lists."""
        crops = self.crops(epoch, step)
        if self.model.kind == "detection":
            return [(self.model.preprocess(image), self.model.targets(labels, classes))
                    for image, labels, classes in crops]
        images = torch.stack([self.model.preprocess(image) for image, _l, _c in crops])
        per_sample = [self.model.targets(labels, classes) for _i, labels, classes in crops]
        return images, {key: torch.from_numpy(np.stack([t[key] for t in per_sample])) for key in per_sample[0]}


class _StepBatches(torch.utils.data.Dataset):
    """Batches indexed by (epoch, step), for a DataLoader whose worker processes make them ahead of time."""

    def __init__(self, maker: _BatchMaker) -> None:
        self.maker = maker

    def __getitem__(self, key: tuple[int, int]):
        return self.maker(*key)


def _unchanged(batch):
    return batch


def _batches(maker: _BatchMaker, epochs: range, steps_per_epoch: int, num_workers: int, pin_memory: bool = False):
    """Yield ((epoch, step), batch) in order; with ``num_workers`` > 0 the batches are made by that many
    processes (2 batches ahead each), so augmentation and targets overlap the model's steps; ``pin_memory``
    (CUDA) lets the copies to the GPU run asynchronously."""
    order = [(epoch, step) for epoch in epochs for step in range(1, steps_per_epoch + 1)]
    if num_workers <= 0:
        for key in order:
            yield key, maker(*key)
        return
    loader = torch.utils.data.DataLoader(_StepBatches(maker), batch_size=None, sampler=order,
                                         num_workers=num_workers, collate_fn=_unchanged,
                                         worker_init_fn=_one_thread_per_worker, pin_memory=pin_memory)
    yield from zip(order, loader)


def _one_thread_per_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the workers are the parallelism; more threads each would oversubscribe the cores


def train_iter(model: CellModel, train_samples: Iterable[Sample], val_samples: Iterable[Sample] | None,
               config: TrainConfig, cancel: CancelToken | None = None) -> Generator[Any, None, TrainResult]:
    """Train ``model`` in place. Yields :class:`TrainStep` per step, :class:`Validation` per epoch and
    :class:`Progress` during validation; returns :class:`TrainResult`. ``best.safetensors`` is written
    whenever validation PQ improves, ``last.safetensors`` + ``last_state.pt`` after every epoch."""
    from ..zoo.weights import load_weights, save_weights

    if model.kind not in ("dense", "detection"):
        raise ValueError(f"the trainer handles dense and detection families; {model.family!r} is "
                         f"a {model.kind} model")
    train_samples = list(train_samples)
    val_samples = list(val_samples) if val_samples is not None else None
    if val_samples is None:
        train_samples, val_samples = split_samples(train_samples, config.val_fraction, config.seed)
    if not train_samples:
        raise ValueError("no training samples: give at least one annotated image")
    if config.max_val_images is not None:
        val_samples = val_samples[: config.max_val_images]

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, device_name = select_device(config.device)
    use_amp = bool(config.amp) and device.type == "cuda"
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
    # bf16 autocast on CPU is opt-in: ~1.5-2x faster convs on CPUs with AVX512-BF16/AMX, weights stay fp32
    if config.cpu_bf16 and device.type == "cpu":
        amp_dtype = torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    yield Message(f"training {model.family} on {device_name} with {len(train_samples)} training and "
                  f"{len(val_samples)} validation images" + (f", AMP {amp_dtype}" if amp_dtype else ""))

    torch.manual_seed(config.seed)
    crop = -(-config.crop // model.size_divisor) * model.size_divisor
    make_batch = _BatchMaker(model, train_samples, config, crop)
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(len(train_samples) / config.batch_size))

    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.2, patience=8)
    elif config.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    else:
        scheduler = None

    best_metric, start_epoch, history = -math.inf, 1, []
    best_path = out_dir / BEST_NAME
    state_path = out_dir / STATE_NAME
    if config.resume and state_path.is_file():
        from ..zoo.safe_load import safe_torch_load

        state = safe_torch_load(state_path)  # weights_only, with a clear message for a damaged or malicious file
        if "model" in state:
            # the state file carries its own weights: one atomic file, so a kill between writing
            # last.safetensors and last_state.pt cannot pair one epoch's weights with another's optimizer
            model.load_state_dict(state["model"])
        else:  # a state written before the weights were kept in it: only if both files are of the same epoch
            from ..zoo.weights import read_metadata

            last_epoch = read_metadata(out_dir / LAST_NAME).get("epoch")
            if last_epoch is not None and int(last_epoch) != int(state["epoch"]):
                raise ValueError(f"cannot resume: {out_dir / LAST_NAME} is from epoch {last_epoch} but {state_path} "
                                 f"from epoch {state['epoch']} (the run was stopped between the two writes); "
                                 "start a new run or remove --resume")
            resumed, _meta = load_weights(out_dir / LAST_NAME, device=device)
            model.load_state_dict(resumed.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])  # the batches need no state: see _BatchMaker
        best_metric = float(state["best_metric"])
        start_epoch = int(state["epoch"]) + 1
        history = json.loads(state["history"])
        yield Message(f"resumed from {state_path} after epoch {start_epoch - 1}")

    training_meta = {"config": config.to_dict(), "data": config.data_name,
                     "train_images": [s.name for s in train_samples][:1000],
                     "val_images": [s.name for s in val_samples][:1000]}
    cancelled = False
    batches = _batches(make_batch, range(start_epoch, config.epochs + 1), steps_per_epoch, config.num_workers,
                       pin_memory=device.type == "cuda")
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            model.train()
            epoch_losses: dict[str, list[float]] = {}
            started = time.perf_counter()
            for step in range(1, steps_per_epoch + 1):
                if cancel is not None and cancel.cancelled:
                    cancelled = True
                    break
                batch_key, batch = next(batches)
                if batch_key != (epoch, step):  # the loader keeps its sampler's order; anything else is a bug
                    raise RuntimeError(f"batch {batch_key} arrived for epoch {epoch}, step {step}")
                optimizer.zero_grad(set_to_none=True)
                if model.kind == "detection":
                    losses = _detection_losses(model, batch, device, amp_dtype)
                else:
                    images, targets = batch
                    images = images.to(device, non_blocking=True)
                    targets = {name: value.to(device, non_blocking=True) for name, value in targets.items()}
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        outputs = model(images)
                    losses = model.loss(outputs, targets)
                if cancel is not None and cancel.cancelled:  # skip the backward pass (most of a step)
                    cancelled = True
                    break
                total = losses["total"]
                if not torch.isfinite(total):
                    raise RuntimeError(f"training diverged at epoch {epoch}, step {step} (loss {float(total)}); "
                                       "lower the learning rate")
                scaler.scale(total).backward()
                if config.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                    scheduler.step()
                values = {k: float(v.detach()) for k, v in losses.items()}
                for key, value in values.items():
                    epoch_losses.setdefault(key, []).append(value)
                yield TrainStep(epoch, step, steps_per_epoch, values, optimizer.param_groups[0]["lr"])
            if cancelled:
                break

            record: dict[str, Any] = {"epoch": epoch, "seconds": time.perf_counter() - started,
                                      "loss": {k: float(np.mean(v)) for k, v in epoch_losses.items()}}
            if val_samples:
                metrics = yield from validation_metrics(model, val_samples, device=device, tile=config.val_tile,
                                                        cancel=cancel)
                score = metrics["pq"]
            else:
                metrics, score = {}, -record["loss"]["total"]
            record["metrics"] = metrics
            is_best = score > best_metric
            if is_best:
                best_metric = score
                save_weights(model, best_path, {"metrics": metrics, "epoch": epoch, "training": training_meta})
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(score)
            record["best"] = is_best
            history.append(record)
            save_weights(model, out_dir / LAST_NAME, {"metrics": metrics, "epoch": epoch, "training": training_meta})
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else {},
                     "rng": {"torch": torch.get_rng_state()}, "epoch": epoch, "best_metric": best_metric,
                     "history": json.dumps(history)}
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write_bytes(state_path, buffer.getvalue())
            atomic_write_bytes(out_dir / HISTORY_NAME, json.dumps(history, indent=1).encode())
            model.train()
            yield Validation(epoch, metrics, is_best)

        return TrainResult(best_path if best_path.is_file() else None, best_metric, history, cancelled,
                           out_dir / LAST_NAME if (out_dir / LAST_NAME).is_file() else None)
    finally:
        batches.close()  # stops the worker processes, also after a cancel or an error


def train(model: CellModel, train_samples, val_samples, config: TrainConfig, cancel=None, on_event=None) -> TrainResult:
    """Run :func:`train_iter` to the end."""
    return run_to_end(train_iter(model, train_samples, val_samples, config, cancel), on_event)
