"""Benchmark: cellzoo.metrics vs HoVer-Net's published metric functions on the MoNuSeg test set.

GT of each of the 14 MoNuSeg test images (1000x1000) is compared with a seeded perturbed
copy (eroded, merged, split and dropped nuclei; ``cellzoo.metrics.perturb_labels``).
Every cellzoo metric is timed per image; HoVer-Net's ``get_fast_aji``, ``get_fast_aji_plus``,
``get_fast_pq`` and ``get_dice_1`` run on the same pairs in the same process and their values
are asserted equal to ours. Writes ``benchmarks/results/metrics.md``.

HoVer-Net's functions come from the PyPI package ``hover-net==0.0.10`` (unchanged copies of
vqdang/hover_net's ``metrics/stats_utils.py``), installed for the benchmark only, outside the
project's environment::

    pip install --no-deps --target .venv-bench/site hover-net==0.0.10
    OMP_NUM_THREADS=1 python benchmarks/metrics.py [--images 14] [--repeat 3]

The module file is loaded directly because the package's ``__init__`` imports OpenCV.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import tempfile
import importlib.util
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cellzoo._atomic import atomic_write_text  # noqa: E402
from cellzoo._paths import shared_data  # noqa: E402
from cellzoo.cli import main as cellzoo_cli  # noqa: E402
from cellzoo.data.io import read_class_map, read_labels, write_labels  # noqa: E402
from cellzoo.metrics import (aji, aji_no_reuse, aji_plus, class_f1_counts, class_pq_counts, coco_ap,  # noqa: E402
                             detection_scores, dice, dsb_map, glas_object_metrics, overlap_table,
                             panoptic_quality, perturb_labels)

DEFAULT_HOVERNET = REPO / ".venv-bench" / "site" / "hover_net" / "metrics" / "stats_utils.py"


def load_hovernet(path: Path):
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("hovernet_stats_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_time(fn, repeat: int) -> tuple[float, object]:
    """Fastest of ``repeat`` runs (the machine is shared, so the minimum is the least disturbed)."""
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=14, help="how many MoNuSeg test images (max 14)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cellzoo metric and image (min taken)")
    parser.add_argument("--hovernet", type=Path, default=DEFAULT_HOVERNET, help="path of HoVer-Net's stats_utils.py")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "metrics.md")
    args = parser.parse_args(argv)

    hv = load_hovernet(args.hovernet)
    files = sorted((shared_data() / "monuseg2018" / "labels" / "test").glob("*.png"))[: args.images]
    if not files:
        raise SystemExit(f"no MoNuSeg test labels under {shared_data()}")
    load_start = os.getloadavg()
    ours: dict[str, list[float]] = {}
    theirs: dict[str, list[float]] = {}
    equal: dict[str, list[float]] = {}  # max |ours - theirs| per metric
    values: dict[str, list[float]] = {}
    n_objects = []
    hv_values: dict[str, list[float]] = {}
    pred_dir = Path(tempfile.mkdtemp(prefix="cellzoo-bench-pred-"))
    all_files = len(files) == len(list(files[0].parent.glob("*.png")))
    gt_dir = files[0].parent if all_files else Path(tempfile.mkdtemp(prefix="cellzoo-bench-gt-"))

    def record(table, key, seconds):
        table.setdefault(key, []).append(seconds)

    for seed, f in enumerate(files):
        gt = read_labels(f)
        pred = perturb_labels(gt, seed)
        write_labels(pred_dir / f"{f.stem}_instances.tif", pred)  # for the CLI run below
        if not all_files:
            write_labels(gt_dir / f.name, gt)
        n_objects.append((len(np.unique(gt)) - 1, len(np.unique(pred)) - 1))

        def four():
            t = overlap_table(gt, pred)
            return aji(t), aji_plus(t), dice(t), panoptic_quality(t)

        s, (a, ap, d, pq) = best_time(four, args.repeat)
        record(ours, "AJI + AJI+ + Dice + PQ (one table)", s)
        for name, fn in (("table only", lambda: overlap_table(gt, pred)),
                         ("AJI", lambda: aji(gt, pred)),
                         ("AJI+", lambda: aji_plus(gt, pred)),
                         ("Dice (pixel)", lambda: dice(gt, pred)),
                         ("DQ/SQ/PQ", lambda: panoptic_quality(gt, pred)),
                         ("AJI no reuse (FullNet)", lambda: aji_no_reuse(gt, pred)),
                         ("P/R/F1 + DSB AP at 0.5/0.75/0.9", lambda: detection_scores(gt, pred)),
                         ("DSB mean AP 0.5:0.95", lambda: dsb_map(gt, pred)),
                         ("COCO AP/AP50/AP75 (maxDets 10000)", lambda: coco_ap(gt, pred))):
            s, _ = best_time(fn, args.repeat)
            record(ours, name, s)
        s, _ = best_time(lambda: glas_object_metrics(gt, pred), 1)
        record(ours, "GlaS object F1/Dice/Hausdorff", s)
        for key, v in (("aji", a), ("aji_plus", ap), ("dice", d), ("pq", pq["pq"])):
            values.setdefault(key, []).append(v)

        if hv is not None:
            assert len(np.unique(gt)) == gt.max() + 1 and len(np.unique(pred)) == pred.max() + 1, \
                "HoVer-Net's fast functions need contiguous ids"
            for name, fn, mine in (("AJI", lambda: hv.get_fast_aji(gt, pred), a),
                                   ("AJI+", lambda: hv.get_fast_aji_plus(gt, pred), ap),
                                   ("Dice (pixel)", lambda: hv.get_dice_1(gt, pred), d)):
                s, v = best_time(fn, 1)
                record(theirs, name, s)
                hv_values.setdefault(name, []).append(float(v))
                equal.setdefault(name, []).append(abs(float(v) - mine))
            s, (stats, _) = best_time(lambda: hv.get_fast_pq(gt, pred), 1)
            record(theirs, "DQ/SQ/PQ", s)
            for key, v in zip(("dq", "sq", "pq"), stats):
                hv_values.setdefault(key, []).append(float(v))
            # HoVer-Net adds 1e-6 to SQ's denominator (TP + 1e-6); everything else is identical
            equal.setdefault("DQ/SQ/PQ", []).append(max(abs(stats[0] - pq["dq"]), abs(stats[1] - pq["sq"]),
                                                        abs(stats[2] - pq["pq"])))
            theirs.setdefault("AJI + AJI+ + Dice + PQ (one table)", []).append(
                theirs["AJI"][-1] + theirs["AJI+"][-1] + theirs["Dice (pixel)"][-1] + theirs["DQ/SQ/PQ"][-1])
        print(f"{f.stem}: {n_objects[-1][0]} GT / {n_objects[-1][1]} predicted nuclei, "
              f"ours 4 metrics {ours['AJI + AJI+ + Dice + PQ (one table)'][-1]:.4f} s"
              + (f", HoVer-Net {theirs['AJI + AJI+ + Dice + PQ (one table)'][-1]:.2f} s" if hv else ""),
              flush=True)

    # the CLI on the same pairs: its printed image means must equal HoVer-Net's means
    captured = io.StringIO()
    cli_args = ["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--quiet"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(captured):
        rc = cellzoo_cli(cli_args)
    cli_seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"cellzoo evaluate failed with exit code {rc}")
    printed = {}
    for line in captured.getvalue().splitlines():
        parts = line.split()
        if len(parts) == 2 and line.startswith("  "):
            printed[parts[0]] = float("nan") if parts[1] == "n/a" else float(parts[1])
    hv_key = {"aji": "AJI", "aji_plus": "AJI+", "dice": "Dice (pixel)", "dq": "dq", "sq": "sq", "pq": "pq"}

    # typed nuclei: CoNSeP stitched test tiles (4 types), GT vs perturbed copy with GT classes
    consep = shared_data() / "consep" / "stitched" / "test"
    for seed, f in enumerate(sorted((consep / "inst").glob("*.png"))[: args.images]):
        gt, gcls = read_labels(f), read_class_map(consep / "class" / f.name)
        pred = perturb_labels(gt, seed)
        pcls = np.where(pred > 0, gcls, 0).astype(np.uint8)
        s, _ = best_time(lambda: class_pq_counts(gt, pred, gcls, pcls, 4), args.repeat)
        record(ours, "per-class PQ counts (CoNSeP, 4 types)", s)
        s, _ = best_time(lambda: class_f1_counts(gt, pred, gcls, pcls, 4), args.repeat)
        record(ours, "per-class F1 counts (CoNSeP, 4 types)", s)
    load_end = os.getloadavg()
    shutil.rmtree(pred_dir, ignore_errors=True)
    if not all_files:
        shutil.rmtree(gt_dir, ignore_errors=True)

    # ------------------------------------------------------------------ report
    tolerance = {"AJI": 1e-12, "AJI+": 1e-12, "Dice (pixel)": 1e-12, "DQ/SQ/PQ": 1e-6}
    all_equal = True
    lines = [
        "# Metrics benchmark: cellzoo.metrics vs HoVer-Net's `stats_utils`",
        "",
        f"Generated by `benchmarks/metrics.py` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Data: {len(files)} MoNuSeg 2018 test images (1000x1000, {sum(n for n, _ in n_objects)} GT nuclei) "
        "against seeded perturbed copies (`perturb_labels`: 30 % eroded, ~5 % merged, ~5 % split, ~3 % dropped); "
        "per-class rows on CoNSeP stitched test tiles.",
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, NumPy {np.__version__}, `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`. "
        f"**The machine was shared with other engineers' jobs**: load average {load_start[0]:.1f} at the start and "
        f"{load_end[0]:.1f} at the end on 2 cores, so absolute times are inflated and noisy; ours are the "
        f"minimum of {args.repeat} runs, HoVer-Net's a single run per image.",
        "",
        "| metric | ours s/img | HoVer-Net s/img | ratio | equal? |",
        "|---|---:|---:|---:|---|",
    ]
    for name, times in ours.items():
        mine = float(np.mean(times))
        if name in theirs:
            other = float(np.mean(theirs[name]))
            if name in equal:
                diff = max(equal[name])
                ok = diff <= tolerance[name]
                all_equal &= ok
                verdict = f"yes (max diff {diff:.1e})" if ok else f"**NO** (max diff {diff:.1e})"
            else:
                ok = all(max(equal[k]) <= tolerance[k] for k in tolerance if k in equal)
                verdict = "yes (all four)" if ok else "**NO**"
            lines.append(f"| {name} | {mine:.4f} | {other:.3f} | {other / mine:.0f}x | {verdict} |")
        else:
            lines.append(f"| {name} | {mine:.4f} | – | – | – |")
    lines += [
        "",
        f"## `cellzoo evaluate` on the same {len(files)} pairs",
        "",
        f"`cellzoo evaluate --gt {'../shared/data/monuseg2018/labels/test' if all_files else '<copies of the GT files>'} "
        "--pred <perturbed copy>` "
        f"took {cli_seconds:.1f} s in all (reading files and COCO AP included). Printed means vs the mean "
        "of HoVer-Net's per-image values:",
        "",
        "| metric | printed | HoVer-Net mean | abs diff | equal (1e-6)? |",
        "|---|---:|---:|---:|---|",
    ]
    for key, name in hv_key.items():
        if hv is None or name not in hv_values:
            lines.append(f"| {key} | {printed.get(key, float('nan')):.6f} | – | – | – |")
            continue
        ref = float(np.mean(hv_values[name]))
        diff = abs(printed[key] - ref)
        ok = diff <= 1e-6
        all_equal &= ok
        lines.append(f"| {key} | {printed[key]:.6f} | {ref:.9f} | {diff:.1e} | {'yes' if ok else '**NO**'} |")
    lines += [
        "",
        "Dataset-level values printed by the CLI: " + ", ".join(
            f"{k} {printed[k]:.4f}" for k in ("ap", "ap50", "ap75") if k in printed) + ".",
        "",
        "Mean values over the images (ours): " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in values.items()) + ".",
        "",
        "Notes: the \"one table\" row builds the contingency table once and derives all four metrics from it "
        "(what `image_metrics` and `evaluate` do); single-metric rows each rebuild the table. "
        "HoVer-Net's PQ divides the IoU sum by TP + 1e-6, hence the 1e-6 tolerance for DQ/SQ/PQ; "
        "AJI, AJI+ and Dice agree to the last bit on these images. "
        "COCO AP uses faster-coco-eval with maxDets (1, 100, 10000); it is cross-checked against plain "
        "pycocotools in `tests/metrics/test_typed_glas_coco.py`.",
    ]
    lines += ["", "Caution on the ratios: HoVer-Net ran once per image, ours took the best of "
              f"{args.repeat}, and the load from other jobs changed from minute to minute, so the ratios are "
              "inflated. On an idle machine of this kind HoVer-Net takes ~1.1 s (AJI) + ~1.0 s (PQ) per image "
              "(figures from the issue); compare those with our 4-metric time above for a conservative ratio."]
    if hv is None:
        lines.append("")
        lines.append(f"HoVer-Net's functions were not found at {args.hovernet}; only our timings are shown.")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print(text)
    if hv is not None and not all_equal:
        print("values differ from HoVer-Net's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
