"""Train a detection family (Cascade Mask R-CNN or SCTS) on a shared dataset with the package's trainer,
then score the best checkpoint on the test split and store the numbers in its metadata.

Examples (DSB 2018; real runs want a GPU):
    python scripts/train_detection.py --family cascade --backbone resnet18 --data dsb2018 \
        --epochs 60 --steps 200 --batch 4 --crop 256 --space-fill 10 --out runs/cascade_r18_dsb
    python scripts/train_detection.py --family scts --data dsb2018 --epochs 60 --steps 200 \
        --mean 0 --std 255 --out runs/scts_dsb
    # CPU smoke run of the whole path (small configs, minutes):
    python scripts/train_detection.py --family cascade --small --epochs 1 --steps 5 --crop 128 \
        --max-val 2 --max-test 3 --out /tmp/cascade_smoke

Writes ``<out>/best.safetensors`` (trainer), ``<out>/<family>_<data>.safetensors`` (best weights with the
test metrics, device and training time in the metadata) and ``<out>/test_metrics.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cellzoo._atomic import atomic_write_text
from cellzoo.data import load_shared_dataset
from cellzoo.infer import segment
from cellzoo.infer.device import select_device
from cellzoo.metrics import coco_ap, dsb_ap, panoptic_quality
from cellzoo.metrics.evaluate import evaluate
from cellzoo.models import build_model
from cellzoo.models.cascade import CascadeConfig
from cellzoo.models.scts import SCTSConfig
from cellzoo.train import TrainConfig, train_iter
from cellzoo.types import Message, TrainStep, Validation, run_to_end
from cellzoo.zoo.weights import load_weights, save_weights


def build(args, class_names: list[str]):
    if args.family == "cascade":
        cfg = CascadeConfig.small() if args.small else CascadeConfig()
        cfg = dataclasses.replace(cfg, backbone=args.backbone, class_names=class_names,
                                  mask_dice_weight=args.dice)
    else:
        cfg = SCTSConfig.small() if args.small else SCTSConfig()
        cfg = dataclasses.replace(cfg, class_names=class_names, mask_dice_weight=args.dice)
        if args.mean is not None:
            cfg = dataclasses.replace(cfg, mean=(args.mean,) * 3, std=(args.std,) * 3)
    return build_model(args.family, dataclasses.asdict(cfg))


def test_metrics(model, samples, device: str) -> dict[str, float]:
    """COCO mask AP / AP50 / AP75 (maxDets up to 1000), DSB-style AP@0.5 and PQ as means over the images and
    pooled over them, and AJI."""
    gts, preds, scores, dsb, pq = [], [], [], [], []
    for sample in samples:
        result = segment(model, sample.image, device=device, amp=False)
        gts.append(sample.labels)
        preds.append(result.labels)
        scores.append(result.scores)
        dsb.append(dsb_ap(sample.labels, result.labels, 0.5))
        pq.append(panoptic_quality(sample.labels, result.labels)["pq"])
    coco = coco_ap(gts, preds, scores)
    pooled = evaluate(gts, preds).summary  # counts summed over images first (StarDist's protocol)
    return {"coco_ap": coco["ap"], "coco_ap50": coco["ap50"], "coco_ap75": coco["ap75"],
            "dsb_ap50": float(np.mean(dsb)), "pooled_dsb_ap50": float(pooled["pooled_dsb_ap50"]),
            "pq": float(np.mean(pq)), "pooled_pq": float(pooled["pooled_pq"]), "aji": float(pooled["aji"]),
            "images": len(samples)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["cascade", "scts"], required=True)
    p.add_argument("--backbone", default="resnet18", help="Cascade only: resnet18/34/50/101/152")
    p.add_argument("--small", action="store_true", help="small heads / fewer proposals (CPU experiments)")
    p.add_argument("--data", default="dsb2018", choices=["dsb2018", "consep", "monuseg2018"])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--steps", type=int, default=200, help="steps per epoch")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--dice", type=float, default=0.0, help="weight of the mask Dice term")
    p.add_argument("--space-fill", type=int, default=0, help="cells pasted per crop by SpaceFill (0: off)")
    p.add_argument("--augment", default=None, help="trainer augmentation spec (default by dataset)")
    p.add_argument("--mean", type=float, default=None, help="SCTS input mean on 0-255 (default 11.79)")
    p.add_argument("--std", type=float, default=15.7, help="SCTS input std with --mean")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-val", type=int, default=8)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-only", default=None, metavar="WEIGHTS",
                   help="skip training: score this checkpoint on the test split and record the metrics")
    args = p.parse_args(argv)
    if args.eval_only:
        return record_test(args, Path(args.eval_only), train_seconds=None)

    torch.manual_seed(0)
    data = load_shared_dataset(args.data, "train")
    class_names = ["background", "nucleus"] if args.data != "consep" else list(data.class_names)
    train_set, val_set = data.split(0.1, seed=0)
    train_samples = list(train_set.cached())[: args.max_train]
    val_samples = list(val_set)[: args.max_val]
    model = build(args, class_names)
    augment = args.augment or ("fluorescence" if args.data == "dsb2018" else "default")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = dict(epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch, lr=args.lr,
                   weight_decay=0.05, crop=args.crop, augment=augment, out_dir=args.out, resume=args.resume,
                   device=args.device, data_name=f"{args.data} train", max_val_images=args.max_val,
                   grad_clip=10.0, scheduler="cosine")
    if args.space_fill:
        if "space_fill" not in fields:
            print("this trainer has no space_fill option; train without it", file=sys.stderr)
            return 2
        options["space_fill"] = args.space_fill
    config = TrainConfig(**options)
    _device, device_name = select_device(args.device)
    started = time.perf_counter()

    def report(event):
        if isinstance(event, TrainStep) and (event.step % 10 == 0 or event.step == event.steps_per_epoch):
            print(f"epoch {event.epoch} step {event.step}/{event.steps_per_epoch} "
                  f"total {event.losses['total']:.3f}", flush=True)
        elif isinstance(event, Message):
            print(event.text, flush=True)
        elif isinstance(event, Validation):
            print(f"epoch {event.epoch} validation {json.dumps(event.metrics)} best={event.best}", flush=True)

    result = run_to_end(train_iter(model, train_samples, val_samples, config), report)
    train_seconds = time.perf_counter() - started
    return record_test(args, result.best_path or result.last_path, train_seconds)


def record_test(args, weights: Path, train_seconds: float | None) -> int:
    _device, device_name = select_device(args.device)
    best, meta = load_weights(weights)
    test = load_shared_dataset(args.data, "test")
    test_samples = list(test)[: args.max_test]
    metrics = test_metrics(best, test_samples, args.device)
    print("test", json.dumps(metrics), flush=True)
    meta.update(name=f"{args.family}_{args.data}", metrics_test=metrics, test_split=f"{args.data} test",
                device=device_name, train_seconds=None if train_seconds is None else round(train_seconds, 1),
                licence="CC0-1.0 data" if args.data == "dsb2018" else "research / non-commercial data")
    out = Path(args.out)
    final = save_weights(best, out / f"{args.family}_{args.data}.safetensors", meta)
    atomic_write_text(out / "test_metrics.json", json.dumps({"weights": str(final), "device": device_name,
                                                             "train_seconds": train_seconds, **metrics}, indent=1))
    print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
