"""Does the model's inconsistency find the patches it gets wrong? And what does `suggest` cost?

For every MoNuSeg 2018 test image (1000², held out from the default H&E model's training) and every
256² patch of its candidate grid (3×3 per image): the inconsistency that :mod:`cellzoo.annotate.suggest`
computes (1 − PQ between the model's segmentation and those of the mirrored / turned image and of
foreground threshold ±0.1) against the patch's real error (1 − PQ and 1 − AJI against the ground truth).
Prints Spearman correlations (pooled over all patches, and the mean over images of the within-image
correlation, which is what ranking patches of one image needs), the mean error of the most / least
consistent third of the patches, and the time of ``suggest_patches`` vs one ``segment`` per image.
Writes ``benchmarks/results/suggest.md``.

    python benchmarks/suggest.py [--model cellzoo-he] [--images 14]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from cellzoo._atomic import atomic_write_text
from cellzoo._paths import shared_data
from cellzoo.annotate.suggest import box_inconsistency, candidate_boxes, segmentation_variants, suggest_patches
from cellzoo.data.io import read_image, read_labels
from cellzoo.infer import segment
from cellzoo.metrics.instance import aji, panoptic_quality
from cellzoo.types import run_to_end
from cellzoo.zoo import load_model

OUT = Path(__file__).parent / "results" / "suggest.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cellzoo-he")
    parser.add_argument("--images", type=int, default=14)
    args = parser.parse_args()
    model = load_model(args.model)
    paths = sorted((shared_data() / "monuseg2018" / "images" / "test").glob("*.png"))[:args.images]
    rows, within_pq, within_aji, times = [], [], [], []
    for path in paths:
        image = read_image(path)
        truth = read_labels(path.parent.parent.parent / "labels" / "test" / path.name).astype(np.int32)
        started = time.perf_counter()
        segment(model, image)
        one_pass = time.perf_counter() - started
        started = time.perf_counter()
        suggest_patches(image, model, n=6)
        times.append((one_pass, time.perf_counter() - started))
        labels = run_to_end(segmentation_variants(model, image))
        boxes = candidate_boxes(image.shape[:2], 256)
        inconsistency = box_inconsistency(labels, boxes)
        mine = []
        for (y, x, size), value in zip(boxes, inconsistency):
            gt, pred = truth[y:y + size, x:x + size], labels[0][y:y + size, x:x + size]
            mine.append((value, 1 - panoptic_quality(gt, pred)["pq"], 1 - aji(gt, pred)))
        rows.extend(mine)
        values = np.array(mine)
        within_pq.append(spearmanr(values[:, 0], values[:, 1]).correlation)
        within_aji.append(spearmanr(values[:, 0], values[:, 2]).correlation)
        print(f"{path.stem}: within-image Spearman vs 1-PQ {within_pq[-1]:.2f}, vs 1-AJI {within_aji[-1]:.2f}; "
              f"segment {one_pass:.1f} s, suggest {times[-1][1]:.1f} s", flush=True)
    values = np.array(rows)
    pooled_pq = spearmanr(values[:, 0], values[:, 1])
    pooled_aji = spearmanr(values[:, 0], values[:, 2])
    order = np.argsort(values[:, 0], kind="stable")
    third = len(order) // 3
    seg, sug = np.array(times).T
    load = os.getloadavg()
    text = f"""# Suggest: inconsistency vs real error, and cost

`python benchmarks/suggest.py --model {args.model} --images {len(paths)}`; MoNuSeg 2018 test images (1000²),
{len(rows)} patches of 256² (the candidate grid). Inconsistency as `cellzoo.annotate.suggest` computes it; real error
against the ground truth.

| | vs 1 − PQ | vs 1 − AJI |
|---|---|---|
| Spearman, pooled over all patches | {pooled_pq.correlation:.3f} (p {pooled_pq.pvalue:.1g}) | {pooled_aji.correlation:.3f} (p {pooled_aji.pvalue:.1g}) |
| Spearman within an image, mean over images | {np.nanmean(within_pq):.3f} | {np.nanmean(within_aji):.3f} |

Mean 1 − PQ of the most consistent third of the patches: {values[order[:third], 1].mean():.3f}; of the least consistent
third: {values[order[-third:], 1].mean():.3f}.

Cost per 1000² image (this run; 2-core VM, load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, so
shared with other jobs): one segmentation median {np.median(seg):.2f} s, `suggest_patches` (n 6) median {np.median(sug):.2f} s
({np.median(sug / seg):.1f}× a segmentation).
"""
    atomic_write_text(OUT, text)
    print(text)


if __name__ == "__main__":
    main()
