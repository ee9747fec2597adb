"""Train the embedded default models on ../shared/data train splits only.

    python scripts/train_defaults.py he   --minutes 80 --out runs/he
    python scripts/train_defaults.py fluo --minutes 80 --out runs/fluo
    python scripts/train_defaults.py he --input-stride 2 --crop 320 --scheduler cosine --epochs 60 ...
    python scripts/train_defaults.py fluo --init src/cellzoo/zoo/embedded/cellzoo-fluo.safetensors --lr 3e-4 ...

``he``: narrow RepSNet with the 4 CoNSeP types, trained on CoNSeP train patches (typed) + MoNuSeg train
(untyped: those nuclei are ignored by the type losses). ``fluo``: narrow class-agnostic RepSNet on DSB 2018
train. Validation images are carved from the train splits (by CoNSeP tile, so overlapping patches never
straddle the split). The run stops after ``--minutes`` and keeps the best checkpoint by validation PQ;
``scripts/finalize_default.py`` then tunes post-processing on validation, scores the test split and
embeds the weights.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from cellzoo.data import load_shared_dataset
from cellzoo.data.sample import Sample
from cellzoo.models import build_model
from cellzoo.train import TrainConfig, train_iter
from cellzoo.types import Cancelled, CancelToken, Message, TrainStep, Validation

CONSEP_CLASSES = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")


def tiles_of(sample: Sample, size: int, stride: int) -> list[Sample]:
    """Cut a large image into overlapping tiles so that sampling per tile weighs images by their area."""
    h, w = sample.labels.shape
    ys = list(range(0, max(h - size, 0) + 1, stride)) or [0]
    xs = list(range(0, max(w - size, 0) + 1, stride)) or [0]
    out = []
    for y in ys:
        for x in xs:
            sl = (slice(y, y + size), slice(x, x + size))
            out.append(Sample(f"{sample.name}_{y}_{x}", sample.image[sl], sample.labels[sl],
                              None if sample.classes is None else sample.classes[sl]))
    return out


def materialise(dataset) -> list[Sample]:
    return [dataset[i] for i in range(len(dataset))]


def he_data(seed: int, whole_validation: bool = False):
    """Train and validation samples; the validation subset is small (the trainer scores it every epoch)
    unless ``whole_validation`` (all held-out CoNSeP patches and MoNuSeg tiles, for tuning the finished model)."""
    consep = load_shared_dataset("consep", "train")
    consep_train, consep_val = consep.split(0.1, seed=seed)
    monuseg = load_shared_dataset("monuseg2018", "train")
    monuseg_train, monuseg_val = monuseg.split(0.1, seed=seed)
    train = materialise(consep_train)
    for sample in materialise(monuseg_train):
        train += tiles_of(sample, 333, 222)
    consep_val = materialise(consep_val)
    monuseg_val = [t for s in materialise(monuseg_val) for t in tiles_of(s, 512, 488)]
    val = consep_val + monuseg_val if whole_validation else consep_val[:6] + monuseg_val[:4]
    return train, val, "CoNSeP train patches (typed) + MoNuSeg 2018 train (untyped)"


def fluo_data(seed: int, whole_validation: bool = False):
    dsb = load_shared_dataset("dsb2018", "train")
    train, val = dsb.split(0.1, seed=seed)
    val = materialise(val)
    return materialise(train), val if whole_validation else val[:16], "DSB 2018 train (StarDist subset)"


def at_object_area(samples: list[Sample], object_area: float, scale_range=(0.5, 2.0)) -> list[Sample]:
    """Each sample resized so that its median nucleus area is ``object_area`` px (factor clipped to
    ``scale_range``, skipped within 15 % of 1): the size that scale "auto" brings images to at inference,
    so that the network learns one nucleus size (plus the augmentation's scale jitter) instead of DSB 2018's
    mix of magnifications."""
    from skimage.transform import resize

    from cellzoo.infer.engine import scale_for_object_area

    out = []
    for sample in samples:
        factor = scale_for_object_area(sample.labels, object_area, scale_range, min_objects=1)
        if factor is None:
            out.append(sample)
            continue
        shape = (max(1, round(sample.labels.shape[0] * factor)), max(1, round(sample.labels.shape[1] * factor)))
        image = resize(sample.image, shape + sample.image.shape[2:], order=1, preserve_range=True,
                       anti_aliasing=factor < 1).astype(sample.image.dtype)
        labels = resize(sample.labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        classes = None if sample.classes is None else resize(sample.classes, shape, order=0, preserve_range=True,
                                                              anti_aliasing=False).astype(np.uint8)
        out.append(Sample(sample.name, image, labels, classes, {**sample.meta, "resized_by": factor}))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["he", "fluo"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--filters", default=None,
                        help="level widths of a new model (default 16,32,64,128); a run with --init keeps the "
                             "widths of its weights (widen them with --widen)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps-per-epoch", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=322, help="seeds the validation split (keep it for a continuation)")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seeds sampling and augmentation (default: --seed); give a continuation a new one so that "
                             "it does not replay the crops of the run it continues")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--input-stride", type=int, default=1, choices=[1, 2],
                        help="2: the fast half-resolution RepSNet variant (see RepSNetConfig.input_stride)")
    parser.add_argument("--scheduler", default="plateau", choices=["plateau", "cosine"])
    parser.add_argument("--epochs", type=int, default=10_000,
                        help="with --scheduler cosine the learning rate reaches 0 after this many epochs")
    parser.add_argument("--init", default=None, metavar="FILE.safetensors",
                        help="continue from these weights (e.g. an embedded model) instead of random ones")
    parser.add_argument("--widen", default=None, metavar="F1,F2,...",
                        help="with --init (a re-parameterised model): continue from the same function with these "
                             "wider levels (function-preserving widening, models.repsnet.widen_repsnet)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (AMP is used on CUDA)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (GPU runs)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU (faster where supported)")
    parser.add_argument("--object-area", type=float, default=None,
                        help="resize every training and validation image so its median nucleus area is this many "
                             "px (for a model used with scale 'auto', e.g. 150 for fluo)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.init and args.filters:
        parser.error("--filters has no effect with --init (the model keeps the widths of its weights); "
                     "use --widen F1,F2,.. to continue it at wider levels")
    if args.widen and not args.init:
        parser.error("--widen needs --init (the trained model to widen)")
    if args.which == "he":
        train, val, data_name = he_data(args.seed)
        heads = {"num_classes": 5, "class_names": CONSEP_CLASSES, "boundary_threshold": 4}
        augment = "default"
    else:
        train, val, data_name = fluo_data(args.seed)
        heads = {"num_classes": 2, "class_names": ("background", "nucleus"), "boundary_threshold": 5}
        augment = "fluorescence"
    if args.object_area:
        train, val = at_object_area(train, args.object_area), at_object_area(val, args.object_area)
        data_name += f", each image resized to a median nucleus area of {args.object_area:g} px"
    if args.init:
        from cellzoo.zoo.weights import load_weights

        # a deploy-form (re-parameterised) model trains as a plain conv net: fine for continuing a run
        model = load_weights(args.init)[0].train()
        if args.widen:
            from cellzoo.models.repsnet import widen_repsnet

            model = widen_repsnet(model, tuple(int(f) for f in args.widen.split(",")), seed=args.seed).train()
    else:
        model = build_model("repsnet", {"variant": "S", **heads, "align_corners": False,
                                        "input_stride": args.input_stride,
                                        "filters": tuple(int(f) for f in (args.filters or "16,32,64,128").split(","))})
    filters = tuple(model.config.filters)  # what the run trains (and its summary records)
    config = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                         lr=args.lr, crop=args.crop, augment=augment, oversample_rare=args.which == "he",
                         seed=args.seed if args.train_seed is None else args.train_seed, out_dir=args.out,
                         resume=args.resume, max_val_images=None,
                         data_name=data_name, scheduler=args.scheduler, device=args.device, cpu_bf16=args.bf16,
                         num_workers=args.workers)
    print(f"{args.which}: {len(train)} training tiles, {len(val)} validation images, filters {filters}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)

    cancel = CancelToken()
    timer = threading.Timer(args.minutes * 60, cancel.cancel)
    timer.daemon = True
    timer.start()
    started = time.time()
    gen = train_iter(model, train, val, config, cancel)
    try:
        while True:
            event = next(gen)
            if isinstance(event, TrainStep) and event.step % 10 == 0:
                print(f"[{(time.time() - started) / 60:6.1f} min] epoch {event.epoch} step {event.step} "
                      f"loss {event.losses['total']:.3f} lr {event.lr:.2e}", flush=True)
            elif isinstance(event, Validation):
                print(f"[{(time.time() - started) / 60:6.1f} min] validation epoch {event.epoch}: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in event.metrics.items())
                      + (" (best)" if event.best else ""), flush=True)
            elif isinstance(event, Message):
                print(event.text, flush=True)
    except StopIteration as stop:
        result = stop.value
        best_path, best_pq, epochs = result.best_path, result.best_metric, len(result.history)
    except Cancelled:  # the time budget ran out during validation; best.safetensors is already on disk
        history = json.loads(Path(args.out, "history.json").read_text())
        best_path, best_pq, epochs = Path(args.out, "best.safetensors"), max(
            h["metrics"].get("pq", 0) for h in history), len(history)
    summary = {"which": args.which, "minutes": (time.time() - started) / 60, "best_path": str(best_path),
               "best_val_pq": best_pq, "epochs": epochs, "filters": filters,
               "init": args.init, "input_stride": model.config.input_stride,
               "machine": (torch.cuda.get_device_name() if args.device in ("cuda", "auto") and torch.cuda.is_available()
                           else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU"),
               "data": data_name}
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
