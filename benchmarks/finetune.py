"""Benchmark: fine-tuning from a few corrected patches on a domain the base model never saw.

Setting: base ``cellzoo-he`` (RepSNet-S trained on H&E only: CoNSeP + MoNuSeg train), target DSB 2018
fluorescence (StarDist's subset). The base scores 0 there (it reads bright nuclei on a dark background as
background), so every gain is learnt from the corrections. Budget: k ∈ {1, 2, 4, 8} patches of 256² whose
ground truth stands in for the user's corrections, taken from a pool of unlabelled DSB *train* images;
scored on the 50 DSB *test* images (AJI / PQ), never seen in any step.

Methods per k:
  (a) random     — k random 256² windows of random pool images;
  (b) suggested  — the top k of :func:`cellzoo.annotate.suggest.suggest_patches` over the pool (base model);
  (c) suggested+pseudo — (b), then a second fine-tune of the (b) model on the same patches plus its own
      confident predictions on the pool images that hold no suggested patch (pseudo-labels).
Each fine-tune is :func:`cellzoo.train.finetune.finetune_iter` with its default recipe
(:meth:`FinetuneRecipe.for_data`), on one thread; "CPU min" is the process CPU time of the fine-tune
(suggestion and pseudo-labelling included, test scoring excluded).

Each cell is cached in ``benchmarks/results/finetune.json`` as soon as it ends, so ``--resume`` continues a
run; ``--cells 2:random,2:suggested`` runs those cells only. Writes ``benchmarks/results/finetune.md`` and
prints the table::

    python benchmarks/finetune.py --cells 2:random,2:suggested --resume
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cellzoo._atomic import atomic_write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CACHE = RESULTS / "finetune.json"
REPORT = RESULTS / "finetune.md"
METHODS = ("random", "suggested", "suggested+pseudo")
KS = (1, 2, 4, 8)
PATCH = 256


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_cache() -> dict:
    return json.loads(CACHE.read_text()) if CACHE.is_file() else {"cells": {}}


def save_cache(cache: dict) -> None:
    atomic_write_text(CACHE, json.dumps(cache, indent=1))


def pool_and_test(seed: int, pool_size: int):
    from cellzoo.data import load_shared_dataset

    train = load_shared_dataset("dsb2018", "train")
    order = np.random.default_rng(seed).permutation(len(train))
    pool = [train[int(i)] for i in order if min(train[int(i)].labels.shape) >= PATCH][:pool_size]
    test = list(load_shared_dataset("dsb2018", "test"))
    return pool, test


def crop(sample, y: int, x: int, size: int = PATCH):
    from cellzoo.data.sample import Sample

    window = (slice(y, y + size), slice(x, x + size))
    return Sample(f"{sample.name}@{y},{x}", sample.image[window].copy(), sample.labels[window].copy())


def random_patches(pool, k: int, seed: int):
    rng = np.random.default_rng([seed, k])
    chosen = rng.choice(len(pool), size=k, replace=k > len(pool))
    out = []
    for index in chosen:
        s = pool[int(index)]
        h, w = s.labels.shape
        out.append(crop(s, int(rng.integers(h - PATCH + 1)), int(rng.integers(w - PATCH + 1))))
    return out, sorted({int(i) for i in chosen})


def suggested_patches(pool, k: int, seed: int):
    from cellzoo.annotate.suggest import suggest_patches

    picks = suggest_patches([s.image for s in pool], "cellzoo-he", n=k, patch=PATCH, device="cpu", seed=seed)
    return [crop(pool[p.image_index], p.y, p.x, p.size) for p in picks], sorted({p.image_index for p in picks})


def score(model, test) -> dict:
    import torch

    from cellzoo.train.trainer import validation_metrics
    from cellzoo.types import run_to_end

    metrics = run_to_end(validation_metrics(model, test, device=torch.device("cpu")))
    return {"aji": metrics["aji"], "pq": metrics["pq"], "dice": metrics["dice"]}


def run_cell(k: int, method: str, pool, test, seed: int) -> dict:
    import torch

    from cellzoo.infer.engine import resolve_model
    from cellzoo.train.finetune import FinetuneRecipe, finetune, prepare_finetune_data

    started = time.process_time()
    if method == "random":
        patches, used = random_patches(pool, k, seed)
    else:
        patches, used = suggested_patches(pool, k, seed)
    data = prepare_finetune_data(patches, seed=seed)
    model = resolve_model("cellzoo-he")
    recipe = FinetuneRecipe.for_data(data.train, seed=seed)
    result = finetune(model, data, recipe, device="cpu")
    rounds = [{"steps": result.steps, "improved": result.improved, "val_before": result.before,
               "val_after": result.after, "notes": result.notes}]
    if method == "suggested+pseudo":
        unlabelled = [pool[i].image for i in range(len(pool)) if i not in used]
        second = finetune(model, data, recipe, device="cpu", pseudo_images=unlabelled, base_name="round 1")
        rounds.append({"steps": second.steps, "improved": second.improved, "val_before": second.before,
                       "val_after": second.after, "notes": second.notes})
    cpu_minutes = (time.process_time() - started) / 60
    after = score(model, test)
    torch.manual_seed(0)
    return {"k": k, "method": method, "patches": [p.name for p in patches], "test_after": after,
            "cpu_minutes": cpu_minutes, "rounds": rounds, "notes": list(data.notes),
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def write_report(cache: dict) -> str:
    base = cache.get("base_test", {})
    lines = ["# Fine-tuning from a few corrected patches (cellzoo-he → DSB 2018 fluorescence)", "",
             "Written by `benchmarks/finetune.py`. Base `cellzoo-he` (trained on H&E only); target: DSB 2018 "
             "fluorescence, never seen by the base. Corrections = ground truth of k 256² patches from a pool of "
             f"{cache.get('pool_size', '?')} DSB *train* images; scores on the 50 DSB *test* images. Recipe: "
             "`FinetuneRecipe.for_data` defaults, one thread.", "",
             f"Seed {cache.get('seed')}; CPU: {cache.get('cpu', '?')}, one thread, machine shared with other jobs "
             "(CPU time is process time, not wall time).", "",
             f"Base on the test split: AJI {base.get('aji', float('nan')):.4f}, PQ {base.get('pq', float('nan')):.4f}.", "",
             "| k | method | test AJI before → after | test PQ before → after | Δ AJI | kept tuned? | CPU min |",
             "|---|---|---|---|---|---|---|"]
    for k in KS:
        for method in METHODS:
            cell = cache["cells"].get(f"{k}:{method}")
            if cell is None:
                continue
            after = cell["test_after"]
            kept = " / ".join("yes" if r["improved"] else "no (base kept)" for r in cell["rounds"])
            lines.append(f"| {k} | {method} | {base.get('aji', 0):.4f} → {after['aji']:.4f} | "
                         f"{base.get('pq', 0):.4f} → {after['pq']:.4f} | {after['aji'] - base.get('aji', 0):+.4f} | "
                         f"{kept} | {cell['cpu_minutes']:.1f} |")
    ran = [key for key in (f"{k}:{m}" for k in KS for m in METHODS) if key in cache["cells"]]
    missing = [key for key in (f"{k}:{m}" for k in KS for m in METHODS) if key not in cache["cells"]]
    lines += ["", f"Cells run: {', '.join(ran) or 'none'}.", f"Cells not run: {', '.join(missing) or 'none'}."]
    if cache.get("notes"):
        lines += ["", *cache["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=None, help="k:method,... (default: the whole grid, k=2 first)")
    parser.add_argument("--resume", action="store_true", help="skip cells already in finetune.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=24, help="unlabelled DSB train images to pick patches from")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    cache = load_cache() if args.resume else {"cells": {}}
    if cache.get("seed", args.seed) != args.seed or cache.get("pool_size", args.pool) != args.pool:
        raise SystemExit("the cache was made with another --seed/--pool; drop --resume to start again")
    cache.update(seed=args.seed, pool_size=args.pool, cpu=cpu_model())
    pool, test = pool_and_test(args.seed, args.pool)
    if "base_test" not in cache:
        from cellzoo.infer.engine import resolve_model

        cache["base_test"] = score(resolve_model("cellzoo-he"), test)
        save_cache(cache)
    order = [f"{k}:{m}" for k in (2, 1, 4, 8) for m in METHODS]
    cells = args.cells.split(",") if args.cells else order
    for key in cells:
        k_text, method = key.split(":", 1)
        if method not in METHODS or int(k_text) < 1:
            raise SystemExit(f"bad cell {key!r}: use k:method with method in {METHODS}")
        if key in cache["cells"]:
            continue
        print(f"running {key} ...", file=sys.stderr, flush=True)
        cache["cells"][key] = run_cell(int(k_text), method, pool, test, args.seed)
        save_cache(cache)
        atomic_write_text(REPORT, write_report(cache))
    report = write_report(cache)
    atomic_write_text(REPORT, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
