"""Finish a default model trained by ``scripts/train_defaults.py``: fuse it, tune its post-processing on the
validation images, score it on the standard test split (fp32 and bf16) and embed it in the package.

    python scripts/finalize_default.py he   --run runs/he   --name cellzoo-he
    python scripts/finalize_default.py fluo --run runs/fluo --name cellzoo-fluo

Only validation images (carved from the train splits) choose the thresholds; the test split is scored once.
The figures go into the weights' metadata, the registry entry and benchmarks/results/default_models.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_defaults  # noqa: E402  (same folder: the validation split must be the training run's)

from cellzoo.data import load_shared_dataset  # noqa: E402
from cellzoo.infer import segment  # noqa: E402
from cellzoo.metrics import evaluate  # noqa: E402
from cellzoo.models import build_model  # noqa: E402
from cellzoo.types import run_to_end  # noqa: E402
from cellzoo.infer import segment_iter  # noqa: E402
from cellzoo.metrics.instance import aji, panoptic_quality  # noqa: E402
from cellzoo.zoo.locations import EMBEDDED_DIR  # noqa: E402
from cellzoo.zoo.weights import load_weights, save_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "src" / "cellzoo" / "zoo" / "registry.json"
RESULTS = REPO / "benchmarks" / "results" / "default_models.md"

#: recover_min_size None = min_size; a lower bound keeps small isolated nuclei (found by the recovery step)
#: without keeping the boundary split's small pieces (DSB 2018 validation: AP@0.5 +0.01 at min_size 32)
GRID = {"boundary_threshold": [3, 4, 5, 6, 7, 8], "foreground_threshold": [0.3, 0.4, 0.5, 0.6],
        "min_size": [8, 16, 24, 32], "recover_min_size": [None, 8, 16]}
#: median object areas (px) tried as the model's ``object_area`` for scale "auto" (fluorescence: DSB 2018 mixes
#: magnifications, nucleus areas in its train split range from ~50 to ~2000 px)
OBJECT_AREAS = [90, 120, 150, 180, 250]
SCALE_RANGE = (0.5, 2.0)


def _objective(gt, pred) -> float:
    """Mean of AJI and PQ: what the thresholds and the object area are chosen by."""
    return 0.5 * (aji(gt, pred) + panoptic_quality(gt, pred)["pq"])


def tune(model, val) -> tuple[dict, float]:
    """Grid-search the post-processing thresholds on the validation images (maps computed once)."""
    maps = [run_to_end(segment_iter(model, s.image, amp=False, keep_maps=True)).meta["maps"] for s in val]
    print(f"validation maps ready for {len(val)} images; searching {GRID}", flush=True)
    best, best_score = {}, -1.0
    for values in itertools.product(*GRID.values()):
        params = dict(zip(GRID, values))
        if params["recover_min_size"] is not None and params["recover_min_size"] >= params["min_size"]:
            continue  # a bound at or above min_size changes nothing or only adds what min_size removes
        scores = []
        for sample, m in zip(val, maps):
            pred = model.postprocess(m, **params).labels
            scores.append(_objective(sample.labels, pred))
        if np.mean(scores) > best_score:
            best, best_score = params, float(np.mean(scores))
    return best, best_score


def tune_scale(model, val) -> tuple[float | None, float, float]:
    """Choose the ``object_area`` for scale "auto" on validation images: (area or None when no area beats
    segmenting at scale 1, its score, the score at scale 1); same objective as the thresholds."""
    from cellzoo.infer.engine import scale_for_object_area

    first = [segment(model, s.image, amp=False, scale=1.0) for s in val]
    base = float(np.mean([_objective(s.labels, r.labels) for s, r in zip(val, first)]))
    best_area, best_score = None, base
    for area in OBJECT_AREAS:
        scores = []
        for sample, result in zip(val, first):
            factor = scale_for_object_area(result.labels, area, SCALE_RANGE)
            pred = result.labels if factor is None else segment(model, sample.image, amp=False, scale=factor).labels
            scores.append(_objective(sample.labels, pred))
        print(f"object_area {area}: {np.mean(scores):.4f} (scale 1: {base:.4f})", flush=True)
        if np.mean(scores) > best_score:
            best_area, best_score = area, float(np.mean(scores))
    return best_area, best_score, base


def score(model, dataset, amp, class_names=None) -> tuple[dict, float]:
    gts, preds, gt_classes, pred_classes, seconds = [], [], [], [], 0.0
    for i in range(len(dataset)):
        sample = dataset[i]
        started = time.perf_counter()
        result = segment(model, sample.image, amp=amp)
        seconds += time.perf_counter() - started
        gts.append(sample.labels)
        preds.append(result.labels)
        gt_classes.append(sample.classes)
        pred_classes.append(result.class_map() if class_names else None)
    typed = class_names is not None and all(c is not None for c in gt_classes)
    result = evaluate(gts, preds, gt_classes=gt_classes if typed else None,
                      pred_classes=pred_classes if typed else None,
                      **({"class_names": list(class_names)} if typed else {}))
    return result.summary, seconds


def _deploy_model(path: Path):
    """(re-parameterised RepSNet, metadata) of a trainer or finished checkpoint."""
    trained, meta = load_weights(path)
    # train_defaults.py trains with align_corners=False; runs made before it did (authors' True, random 256²
    # crops, so the network saw every sub-pixel offset within ±0.25 coarse px) are switched to False, which
    # is inside that range and, unlike True, makes tiled and whole-image passes agree.
    config = trained.config_dict()
    config["align_corners"] = False
    model = build_model("repsnet", config)
    model.load_state_dict(trained.state_dict())
    return model.reparameterize(), meta


def _device_text(machine: str) -> str:
    if machine.endswith("CPU"):
        return f"{machine} (2-core AMD EPYC, AVX512-BF16), bf16 autocast"
    return f"{machine}, AMP"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["he", "fluo"])
    parser.add_argument("--run", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", type=int, default=322)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default="best.safetensors",
                        help="which file of the run to finish (best by validation PQ, or last); several, comma-"
                             "separated: each is tuned and the one with the best validation objective is finished")
    parser.add_argument("--keep-better-embedded", action=argparse.BooleanOptionalAction, default=True,
                        help="tune the model now embedded under --name the same way and write nothing when it "
                             "scores at least as well on validation (default)")
    parser.add_argument("--object-area", type=float, default=None,
                        help="the run was trained with train_defaults.py --object-area A: tune the thresholds on "
                             "validation images resized the same way (the size scale 'auto' brings images to)")
    parser.add_argument("--tune-scale", action=argparse.BooleanOptionalAction, default=None,
                        help="choose an object area for scale 'auto' on the whole validation split "
                             "(default: for fluo, whose test images mix magnifications)")
    parser.add_argument("--earlier-record", default=None, metavar="FILE.safetensors",
                        help="a finished model whose training record describes the weights this run started from "
                             "(needed when the run's --init was a raw trainer checkpoint, which carries no record)")
    parser.add_argument("--whole-validation", action=argparse.BooleanOptionalAction, default=True,
                        help="tune the thresholds on the whole held-out validation split (default) instead of the "
                             "small subset the trainer scores every epoch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    history = json.loads((run / "history.json").read_text())

    data = train_defaults.he_data if args.which == "he" else train_defaults.fluo_data
    # the whole held-out split, at the images' own size: what the object area for scale "auto" is chosen on,
    # and (by default) what the thresholds are tuned on
    _train, whole_val, data_name = data(args.seed, whole_validation=True)
    val = whole_val if args.whole_validation else data(args.seed)[1]
    if args.object_area:
        val = train_defaults.at_object_area(val, args.object_area)
        data_name += f", each image resized to a median nucleus area of {args.object_area:g} px"
    tuned = []
    for checkpoint in [c.strip() for c in args.checkpoint.split(",") if c.strip()]:
        candidate, candidate_meta = _deploy_model(run / checkpoint)
        candidate_params, candidate_score = tune(candidate, val)
        print(f"{checkpoint}: {candidate_params} (validation objective {candidate_score:.4f})", flush=True)
        tuned.append((candidate_score, checkpoint, candidate, candidate_meta, candidate_params))
    val_score, args.checkpoint, model, meta, params = max(tuned, key=lambda t: t[0])
    embedded = EMBEDDED_DIR / f"{args.name}.safetensors"
    if args.keep_better_embedded and embedded.is_file():
        _params, embedded_score = tune(_deploy_model(embedded)[0], val)
        print(f"now embedded: validation objective {embedded_score:.4f}", flush=True)
        if embedded_score >= val_score:
            print(f"{embedded} scores at least as well on validation ({embedded_score:.4f} vs {val_score:.4f} for "
                  f"{run / args.checkpoint}): nothing written", flush=True)
            return 0
    for key, value in params.items():
        setattr(model.config, key, value)
    print(f"tuned on {len(val)} validation images: {params} (mean of AJI and PQ {val_score:.3f})", flush=True)
    scale_meta = {}
    if args.tune_scale if args.tune_scale is not None else args.which == "fluo":
        area, with_scale, at_one = tune_scale(model, whole_val)
        scale_meta = {"scale_tuning": {"validation_images": len(whole_val), "objective_at_scale_1": round(at_one, 4),
                                       "objective_auto": round(with_scale, 4), "object_areas_tried": OBJECT_AREAS}}
        if area is not None:
            scale_meta.update(object_area=area, scale_range=list(SCALE_RANGE), default_scale="auto")
            model.metadata = {**(getattr(model, "metadata", None) or {}), **scale_meta}
        print(f"scale: object_area {area} on {len(whole_val)} validation images ({at_one:.4f} -> {with_scale:.4f})",
              flush=True)

    tests = {"he": [("MoNuSeg 2018 test", "monuseg2018", "test", None),
                    ("CoNSeP test (stitched tiles)", "consep_stitched", "test", model.class_names)],
             "fluo": [("DSB 2018 test", "dsb2018", "test", None)]}[args.which]
    metrics: dict[str, dict] = {}
    for title, name, split, class_names in tests:
        dataset = load_shared_dataset(name, split)
        for precision, amp in (("fp32", False), ("bf16", "bf16")):
            values, seconds = score(model, dataset, amp, class_names)
            keep = {k: round(float(v), 4) for k, v in values.items()
                    if isinstance(v, (int, float)) and not (isinstance(v, float) and np.isnan(v))}
            keep["seconds_per_image"] = round(seconds / len(dataset), 3)
            metrics[f"{title} ({precision})"] = keep
            print(title, precision, json.dumps(keep), flush=True)

    epochs = len(history)
    best_epoch = max(history, key=lambda h: h.get("metrics", {}).get("pq", -1))["epoch"]
    training = {"data": data_name, "script": "scripts/train_defaults.py", "epochs": epochs, "best_epoch": best_epoch,
                "steps": epochs * int(meta.get("training", {}).get("config", {}).get("steps_per_epoch") or 0),
                "minutes": round(float(summary.get("minutes", sum(h["seconds"] for h in history) / 60)), 1),
                "device": _device_text(summary.get("machine") or f"{platform.machine()}, CPU"),
                "validation_pq": history[best_epoch - 1]["metrics"].get("pq"),
                "checkpoint": {"best.safetensors": f"best.safetensors (epoch {best_epoch})",
                               "last.safetensors": f"last.safetensors (epoch {epochs}, validation PQ "
                                                   f"{history[-1]['metrics'].get('pq', float('nan')):.3f})"
                               }.get(args.checkpoint, args.checkpoint)}
    if summary.get("init"):
        # a continued run: keep the earlier training's record next to this one
        from cellzoo.zoo.weights import read_metadata

        init_meta = read_metadata(args.earlier_record or summary["init"])
        earlier = init_meta.get("training", {})
        init_filters = list(init_meta.get("config", {}).get("filters") or [])
        if init_filters and summary.get("filters") and init_filters != list(summary["filters"]):
            # train_defaults.py --widen: the run continued the earlier model's function at wider levels
            training["widened_from"] = init_filters
        # finishing the same run twice: the init file may be this run's own earlier output (an embedded model
        # continued in place), whose record already describes this run; step back to what came before it
        while earlier.get("minutes") == training["minutes"] and "continued_from" in earlier:
            earlier = earlier["continued_from"]
        earlier = {k: v for k, v in earlier.items()
                   if k in ("data", "epochs", "steps", "minutes", "total_minutes", "lr", "device", "note",
                            "continued_from")}
        training["continued_from"] = earlier
        training["total_minutes"] = round(training["minutes"] + float(earlier.get("total_minutes",
                                                                                  earlier.get("minutes", 0))), 1)
    registry = json.loads(REGISTRY.read_text())
    entries = registry["models"] if isinstance(registry, dict) else registry
    entry = next(e for e in entries if e["name"] == args.name)
    out_meta = {k: entry[k] for k in ("class_colors", "normalization", "pixel_size_um", "licence", "training_data")
                if k in entry}
    out_meta.update({"name": args.name, "metrics": metrics, "training": training, "postprocess_tuned_on": "validation",
                     "postprocess_tuning": {"validation_images": len(val), "objective": round(val_score, 4)},
                     **scale_meta})
    path = save_weights(model, EMBEDDED_DIR / f"{args.name}.safetensors", out_meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")

    entry["config"] = {k: v for k, v in model.config_dict().items() if k != "loss_weights"}
    # the registry keeps a flat summary (fp32, test splits); the full tables live in the weights' metadata
    short = {"MoNuSeg 2018 test (fp32)": "monuseg_test", "CoNSeP test (stitched tiles) (fp32)": "consep_test",
             "DSB 2018 test (fp32)": "dsb2018_test"}
    keys = ("aji", "dice", "pq", "mpq_plus", "dsb_ap50", "ap")
    entry["metrics"] = {f"{short[t]}_{k}": v[k] for t, v in metrics.items() if t in short for k in keys if k in v}
    entry["training_data"] = entry.get("training_data") or data_name
    entry["notes"] = (entry.get("notes", "").split(" Trained")[0] +
                      f" Trained {training.get('total_minutes', training['minutes'])} min on {training['device']}; "
                      f"last run {epochs} epochs of {training['steps'] // max(epochs, 1)} steps.")
    REGISTRY.write_text(json.dumps(registry, indent=1) + "\n")

    lines = RESULTS.read_text().splitlines() if RESULTS.is_file() else [
        "# Embedded default models: test-split figures (`scripts/finalize_default.py`)", ""]
    lines += [f"## {args.name}", "", f"Training: {json.dumps(training)}",
              f"Post-processing (tuned on {len(val)} validation images): {json.dumps(params)}",
              *([f"Scale: {json.dumps(scale_meta)}"] if scale_meta else []), "",
              "| test set | AJI | Dice | PQ | DSB AP@0.5 | mPQ+ | COCO AP | s/image |",
              "|---|---|---|---|---|---|---|---|"]
    for key, v in metrics.items():
        lines.append(f"| {key} | {v.get('aji', float('nan')):.3f} | {v.get('dice', float('nan')):.3f} | "
                     f"{v.get('pq', float('nan')):.3f} | {v.get('dsb_ap50', float('nan')):.3f} | "
                     f"{v.get('mpq_plus', float('nan')):.3f} | {v.get('ap', float('nan')):.3f} | "
                     f"{v['seconds_per_image']:.2f} |")
    lines.append("")
    RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
