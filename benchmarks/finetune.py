"""Benchmark: fine-tuning from a few corrected patches on a domain the base model never saw.

Two settings (``--setting``), each a base model and a target domain it was never trained on:

- ``he-to-dsb``: base ``cellzoo-he`` (RepSNet-S trained on H&E only: CoNSeP + MoNuSeg train), target DSB 2018
  fluorescence (StarDist's subset). The base scores 0 there (it reads bright nuclei on a dark background as
  background), so every gain is learnt from the corrections. Pool: 24 DSB *train* images; test: the 50 DSB
  *test* images.
- ``fluo-to-monuseg``: base ``cellzoo-fluo`` (trained on DSB fluorescence only), target MoNuSeg 2018 H&E.
  The base finds some nuclei there (dark nuclei on a light background after its normalisation), so this
  setting also tests the guard. Pool: 12 MoNuSeg *train* images (1000²); test: the 14 MoNuSeg *test* images.
- ``he-to-monusac``: base ``cellzoo-he`` on the MoNuSAC 2020 sample (H&E of other organs, scanners and
  annotators; never trained on): a base that already works, where the guard matters most. Pool: the left
  halves of the three regions (two are large enough for 256² patches); test: their right halves (small: a
  third domain, as the issue asks, not a precise figure).
- ``he-to-monusac-cross``: the same base and data, but the corrections come from one region (epithelium) and
  the test is the two others (a lymphocyte cluster, blood): the case a held-out stripe of the corrected image
  cannot foresee; run to show the limit of the guard, not a target.

Budget: k ∈ {1, 2, 4, 8} patches of 256² whose ground truth stands in for the user's corrections, taken
from the pool; scored on the target's test split (AJI / PQ), never seen in any step.

Methods per k:
  (a) random     — k random 256² windows of random pool images;
  (b) suggested  — the top k of :func:`cellzoo.annotate.suggest.suggest_patches` over the pool (base model);
  (c) suggested+pseudo — (b), then a second fine-tune of the (b) model on the same patches plus its own
      confident predictions on the pool images that hold no suggested patch (pseudo-labels);
  (e) suggested-colour — (b) with Suggest's ranking term for the nuclear share off (the A/B of that term:
      without a usable model the ranking is then representativeness alone);
  (d) suggested+synthesis — (b) with half the crops carrying extra corrected nuclei pasted into their
      empty places (``FinetuneRecipe.synthesis``; SpaceFill of the corrected cells).
Each fine-tune is :func:`cellzoo.train.finetune.finetune_iter` with its default recipe
(:meth:`FinetuneRecipe.for_data`), on one thread; "CPU min" is the process CPU time of the fine-tune
(suggestion and pseudo-labelling included, test scoring excluded).

Seeds (``--seeds 0,1,2``): one run per cell and seed; a seed draws the random patches, the suggestion's
k-means and the fine-tune's crops (the pool of unlabelled images stays the same). Single runs
swing by ±0.1 AJI, so the table gives each cell's mean over its seeds and the methods are compared on the
seeds both have.

Each run is cached in ``benchmarks/results/finetune*.json`` as soon as it ends (under a file lock, re-read
before writing, so two processes — one per core — can fill one setting), so ``--resume`` continues;
``--cells 2:random,2:suggested`` runs those cells only. Writes ``benchmarks/results/finetune.md`` and prints
the table::

    python benchmarks/finetune.py --setting fluo-to-monuseg --cells 2:random,2:suggested --seeds 0,1,2 --resume
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cellzoo._atomic import atomic_write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
REPORT = RESULTS / "finetune.md"
#: setting → (base model, target dataset, default pool size, human-readable target)
SETTINGS = {
    "he-to-dsb": ("cellzoo-he", "dsb2018", 24, "DSB 2018 fluorescence"),
    "fluo-to-monuseg": ("cellzoo-fluo", "monuseg2018", 12, "MoNuSeg 2018 H&E"),
    "he-to-monusac": ("cellzoo-he", "monusac_sample", 2, "the MoNuSAC 2020 sample (H&E, other organs and scanners)"),
    "he-to-monusac-cross": ("cellzoo-he", "monusac_cross", 1,
                            "MoNuSAC, corrections on one tissue, test on the others (what the guard cannot see)"),
}


def cache_path(setting: str) -> Path:
    # he-to-dsb keeps the file name of the first runs (finetune.json), so their cells are resumed
    return RESULTS / ("finetune.json" if setting == "he-to-dsb" else f"finetune_{setting}.json")
#: suggested-colour: Suggest's ranking without the nuclear share (representativeness alone where there is no
#: inconsistency), the A/B for that ranking term
METHODS = ("random", "suggested", "suggested+pseudo", "suggested+synthesis", "suggested-colour")
KS = (1, 2, 4, 8)
PATCH = 256




def load_cache(setting: str) -> dict:
    path = cache_path(setting)
    return json.loads(path.read_text()) if path.is_file() else {"cells": {}}


def save_cache(cache: dict) -> None:
    """Merge ``cache`` into the file under a lock: runs and suggestions another process saved meanwhile stay."""
    import fcntl

    path = cache_path(cache.get("setting", "he-to-dsb"))
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = json.loads(path.read_text()) if path.is_file() else {"cells": {}}
        for key in ("cells", "suggestions"):
            merged = {**on_disk.get(key, {}), **cache.get(key, {})}
            cache[key] = merged
        atomic_write_text(path, json.dumps({**on_disk, **cache}, indent=1))


def run_key(k: int, method: str, seed: int) -> str:
    """Cache key of one run (seed 0 keeps the key of the single-seed runs)."""
    return f"{k}:{method}" if seed == 0 else f"{k}:{method}@{seed}"


def runs_of(cells: dict, k: int, method: str) -> dict[int, dict]:
    """seed → run of cell k:method."""
    out = {}
    for key, run in cells.items():
        name, _, seed = key.partition("@")
        if name == f"{k}:{method}":
            out[int(seed or 0)] = run
    return out


def pool_and_test(dataset: str, seed: int, pool_size: int):
    from cellzoo.data import load_shared_dataset

    if dataset == "monusac_cross":  # pool: the largest region (epithelium); test: the other two (lymphocytes, blood)
        regions = sorted(load_shared_dataset("monusac_sample"), key=lambda s: -s.labels.size)
        return regions[:1], regions[1:]
    if dataset == "monusac_sample":
        # three regions of three tissues, no splits: the left half of each region is the pool, the right half
        # (beyond a 32-px gap) the test, so the corrections and the test show the same tissues
        from cellzoo.data.sample import Sample

        pool, test = [], []
        for region in load_shared_dataset(dataset):
            half = region.labels.shape[1] // 2
            for part, window in (("left", slice(0, half - 16)), ("right", slice(half + 16, None))):
                labels = region.labels[:, window]
                sample = Sample(f"{region.name} {part}", region.image[:, window].copy(), labels.copy())
                if part == "right":
                    test.append(sample)
                elif min(labels.shape) >= PATCH:
                    pool.append(sample)
        return pool, test
    train = load_shared_dataset(dataset, "train")
    order = np.random.default_rng(seed).permutation(len(train))
    pool = [train[int(i)] for i in order if min(train[int(i)].labels.shape) >= PATCH][:pool_size]
    test = list(load_shared_dataset(dataset, "test"))
    return pool, test


def crop(sample, y: int, x: int, size: int = PATCH):
    from cellzoo.data.sample import Sample

    window = (slice(y, y + size), slice(x, x + size))
    return Sample(f"{sample.name}@{y},{x}", sample.image[window].copy(), sample.labels[window].copy())


def random_patches(pool, k: int, seed: int):
    """k random 256² windows of random pool images that do not overlap one another (a user corrects distinct
    patches; overlapping ones would also leak training pixels into the held-out patches)."""
    rng = np.random.default_rng([seed, k])
    out, taken, used = [], [], set()
    for _attempt in range(1000):
        if len(out) == k:
            break
        index = int(rng.integers(len(pool)))
        s = pool[index]
        h, w = s.labels.shape
        y, x = int(rng.integers(h - PATCH + 1)), int(rng.integers(w - PATCH + 1))
        if any(i == index and abs(y - ty) < PATCH and abs(x - tx) < PATCH for i, ty, tx in taken):
            continue
        taken.append((index, y, x))
        used.add(index)
        out.append(crop(s, y, x))
    if len(out) < k:
        raise SystemExit(f"the pool holds fewer than {k} non-overlapping {PATCH}² patches")
    return out, sorted(used)


def suggested_patches(pool, k: int, seed: int, cache: dict, nuclear_share: bool = True):
    """The top k of suggest_patches over the pool (the base model's features and inconsistency); the boxes
    are cached per k (suggested and suggested+pseudo share them; their CPU time is counted in both)."""
    from cellzoo.annotate.suggest import suggest_patches

    key = (str(k) if seed == 0 else f"{k}@{seed}") + ("" if nuclear_share else "-colour")
    saved = cache.setdefault("suggestions", {}).get(key)
    if saved is None:
        started = time.process_time()
        picks = suggest_patches([s.image for s in pool], cache["base"], n=k, patch=PATCH, device="cpu", seed=seed,
                                nuclear_share=nuclear_share)
        saved = {"boxes": [[p.image_index, p.y, p.x, p.size] for p in picks],
                 "cpu_minutes": (time.process_time() - started) / 60}
        cache["suggestions"][key] = saved
        save_cache(cache)
    boxes = saved["boxes"]
    return ([crop(pool[i], y, x, size) for i, y, x, size in boxes], sorted({b[0] for b in boxes}),
            saved["cpu_minutes"])


def score(model, test) -> dict:
    import torch

    from cellzoo.train.trainer import validation_metrics
    from cellzoo.types import run_to_end

    metrics = run_to_end(validation_metrics(model, test, device=torch.device("cpu")))
    return {"aji": metrics["aji"], "pq": metrics["pq"], "dice": metrics["dice"]}


def run_cell(k: int, method: str, pool, test, seed: int, cache: dict) -> dict:
    import torch

    from cellzoo.infer.engine import resolve_model
    from cellzoo.train.finetune import FinetuneRecipe, finetune, prepare_finetune_data

    started = time.process_time()
    suggest_minutes = 0.0
    if method == "random":
        patches, used = random_patches(pool, k, seed)
    else:
        patches, used, suggest_minutes = suggested_patches(pool, k, seed, cache,
                                                           nuclear_share=method != "suggested-colour")
        started = time.process_time()
    data = prepare_finetune_data(patches, seed=seed)
    model = resolve_model(cache["base"])
    recipe = FinetuneRecipe.for_data(data.train, seed=seed, **({"synthesis": 0.5} if "synthesis" in method else {}))
    result = finetune(model, data, recipe, device="cpu")
    rounds = [{"steps": result.steps, "improved": result.improved, "val_before": result.before,
               "val_after": result.after, "notes": result.notes}]
    if method == "suggested+pseudo":
        unlabelled = [pool[i].image for i in range(len(pool)) if i not in used]
        second = finetune(model, data, recipe, device="cpu", pseudo_images=unlabelled, base_name="round 1")
        rounds.append({"steps": second.steps, "improved": second.improved, "val_before": second.before,
                       "val_after": second.after, "notes": second.notes})
    cpu_minutes = (time.process_time() - started) / 60 + suggest_minutes
    after = score(model, test)
    torch.manual_seed(0)
    return {"k": k, "method": method, "patches": [p.name for p in patches], "test_after": after,
            "cpu_minutes": cpu_minutes, "rounds": rounds, "notes": list(data.notes),
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def setting_section(cache: dict) -> list[str]:
    base = cache.get("base_test", {})
    b_aji, b_pq = base.get("aji", float("nan")), base.get("pq", float("nan"))
    setting = cache.get("setting", "he-to-dsb")
    base_name, dataset, _, target = SETTINGS[setting]
    cells = cache["cells"]
    lines = [f"## `{setting}`: {base_name} → {target}", "",
             f"Base `{base_name}`, never trained on {target}. Corrections = ground truth of k 256² patches from a "
             f"pool of {cache.get('pool_size', '?')} {dataset} *train* images (pool drawn with seed "
             f"{cache.get('seed')}); scores on all {dataset} *test* images. CPU: {cache.get('cpu', '?')}, torch on one "
             "thread (CPU min = process time of suggestion + fine-tune + pseudo-labelling; test scoring excluded). "
             "Each row: the mean over its seeds (one run each), the runs' test AJI in seed order.", "",
             f"Base on the test split: AJI {b_aji:.4f}, PQ {b_pq:.4f}.", "",
             "| k | method | seeds | test AJI after (mean) | per seed | test PQ after (mean) | Δ AJI | kept tuned? | CPU min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in KS:
        for method in METHODS:
            runs = runs_of(cells, k, method)
            if not runs:
                continue
            seeds = sorted(runs)
            ajis = [runs[sd]["test_after"]["aji"] for sd in seeds]
            pqs = [runs[sd]["test_after"]["pq"] for sd in seeds]
            kept = ", ".join("/".join("yes" if r["improved"] else "no" for r in runs[sd]["rounds"]) for sd in seeds)
            lines.append(f"| {k} | {method} | {','.join(map(str, seeds))} | {_mean(ajis):.4f} | "
                         f"{' '.join(f'{a:.3f}' for a in ajis)} | {_mean(pqs):.4f} | {_mean(ajis) - b_aji:+.4f} | "
                         f"{kept} | {_mean([runs[sd]['cpu_minutes'] for sd in seeds]):.1f} |")
    checks = []
    two = [(m, runs_of(cells, 2, m)) for m in ("random", "suggested", "suggested+pseudo")]
    two = [(m, r) for m, r in two if r]
    if two:
        method, runs = max(two, key=lambda item: _mean([r["test_after"]["aji"] for r in item[1].values()]))
        gain = _mean([r["test_after"]["aji"] for r in runs.values()]) - b_aji
        minutes = max(r["cpu_minutes"] for r in runs.values())
        ok = gain >= 0.03 and minutes <= 10
        checks.append(f"- k = 2, ≤ 10 CPU-min, AJI ≥ base + 0.03: best {method} (mean of {len(runs)} seeds) "
                      f"{gain:+.4f}, longest run {minutes:.1f} min → {'met' if ok else 'NOT met'}")
    if cells:
        worst_key, worst = min(cells.items(), key=lambda item: item[1]["test_after"]["aji"])
        drop = worst["test_after"]["aji"] - b_aji
        checks.append(f"- guard, no run below base − 0.005 AJI: lowest {worst_key} {drop:+.4f} → "
                      f"{'met' if drop >= -0.005 else 'NOT met'}")
    for k in (1, 2, 4):
        r, g = runs_of(cells, k, "random"), runs_of(cells, k, "suggested")
        common = sorted(set(r) & set(g))
        if common:
            gap = _mean([g[sd]["test_after"]["aji"] - r[sd]["test_after"]["aji"] for sd in common])
            checks.append(f"- k = {k}: suggested − random = {gap:+.4f} AJI (mean over seeds {','.join(map(str, common))})"
                          f" → {'met' if gap >= 0.01 else 'NOT met'} (target ≥ +0.01)")
    ran = [f"{k}:{m} ({len(runs_of(cells, k, m))})" for k in KS for m in METHODS if runs_of(cells, k, m)]
    missing = [f"{k}:{m}" for k in KS for m in METHODS if not runs_of(cells, k, m)]
    lines += ["", "Targets (issue 15):", *checks, "", f"Cells run (seeds): {', '.join(ran) or 'none'}.",
              f"Cells not run: {', '.join(missing) or 'none'}."]
    if cache.get("notes"):
        lines += ["", *cache["notes"]]
    return lines


def write_report() -> str:
    lines = ["# Fine-tuning from a few corrected patches, on domains the base never saw", "",
             "Written by `benchmarks/finetune.py` (one section per `--setting`; each cell is one run of the "
             "default recipe, `FinetuneRecipe.for_data`, through `cellzoo.train.finetune.finetune`, whose guard "
             "keeps the base when the held-out corrected data does not improve by max(0.01, 0.5/√n held-out nuclei)). "
             "Synthesis = corrected nuclei pasted into the empty places of half the training crops "
             "(`FinetuneRecipe.synthesis`). he-to-monusac-cross is not a target setting: corrections on one tissue "
             "(epithelium), test on two others (a lymphocyte cluster, blood) — what a guard that only sees held-out "
             "corrected data cannot catch.", ""]
    for setting in SETTINGS:
        if cache_path(setting).is_file():
            lines += setting_section(load_cache(setting)) + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="he-to-dsb")
    parser.add_argument("--cells", default=None, help="k:method,... (default: the whole grid, k=2 first)")
    parser.add_argument("--resume", action="store_true", help="skip cells already in the setting's cache")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds (default 0)")
    parser.add_argument("--pool-seed", type=int, default=0, help="draws the pool of unlabelled images")
    parser.add_argument("--pool", type=int, default=None, help="unlabelled train images to pick patches from "
                        "(default: 24 for he-to-dsb, 12 for fluo-to-monuseg)")
    parser.add_argument("--report-only", action="store_true", help="rewrite finetune.md from the caches")
    args = parser.parse_args(argv)
    if args.report_only:
        report = write_report()
        atomic_write_text(REPORT, report)
        print(report)
        return 0

    import torch

    torch.set_num_threads(1)
    base_name, dataset, default_pool, _ = SETTINGS[args.setting]
    pool_size = args.pool or default_pool
    if not args.resume and cache_path(args.setting).is_file():
        cache_path(args.setting).unlink()  # a fresh start (a second process beside this one takes --resume)
    cache = load_cache(args.setting)
    if cache.get("seed", args.pool_seed) != args.pool_seed or cache.get("pool_size", pool_size) != pool_size:
        raise SystemExit("the cache was made with another --pool-seed/--pool; drop --resume to start again")
    cache.update(setting=args.setting, base=base_name, seed=args.pool_seed, pool_size=pool_size, cpu=cpu_model())
    seeds = [int(x) for x in args.seeds.split(",")]
    pool, test = pool_and_test(dataset, args.pool_seed, pool_size)
    if "base_test" not in cache:
        from cellzoo.infer.engine import resolve_model

        cache["base_test"] = score(resolve_model(base_name), test)
        save_cache(cache)
    order = [f"{k}:{m}" for k in (2, 1, 4, 8) for m in METHODS]
    cells = args.cells.split(",") if args.cells else order
    for seed in seeds:
        for cell in cells:
            k_text, method = cell.split(":", 1)
            if method not in METHODS or int(k_text) < 1:
                raise SystemExit(f"bad cell {cell!r}: use k:method with method in {METHODS}")
            key = run_key(int(k_text), method, seed)
            if key in load_cache(args.setting)["cells"] or key in cache["cells"]:
                continue  # done (perhaps by another process on the other core)
            print(f"running {args.setting} {key} ...", file=sys.stderr, flush=True)
            cache["cells"][key] = run_cell(int(k_text), method, pool, test, seed, cache)
            save_cache(cache)
            atomic_write_text(REPORT, write_report())
    report = write_report()
    atomic_write_text(REPORT, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
