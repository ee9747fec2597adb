"""End-to-end `segment` throughput of the dense families on this machine.

For each model config, image size (512² … 4096²) and precision (fp32, bf16 autocast) a fresh subprocess
runs the real engine (`cellzoo.infer.segment`, default tiling, channels_last) on a real MoNuSeg test
image mosaicked to the size, and reports network time, post-processing time, MPix/s and peak RSS.

Weights are random unless `--weights CONFIG=FILE` is given, so the *network* time is real but a random
model's maps are not: post-processing is therefore timed separately on maps built from the ground truth
(MoNuSeg test labels mosaicked the same way, i.e. a realistic nucleus density), with the family's own
`postprocess`. End to end = network + post-processing.

Also measured here: FLOPs per MPix (torch.utils.flop_counter on a 256² forward) and the machine's 3×3 conv
throughput (64→64 channels, 256², channels_last) in fp32 and bf16, so each config's network time can be
expressed as a fraction of what the CPU sustains on plain convolutions.

    python benchmarks/inference.py --quick            # 512² and 1024² only
    python benchmarks/inference.py                    # all sizes, writes benchmarks/results/inference.md
    python benchmarks/inference.py --accuracy FILE    # AJI/PQ of a checkpoint on MoNuSeg test, fp32 vs bf16
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "inference.md"

#: name -> (family, config, reparameterize before timing)
CONFIGS: dict[str, tuple[str, dict, bool]] = {
    "repsnet-s (train form)": ("repsnet", {}, False),
    "repsnet-s deploy": ("repsnet", {}, True),
    "repsnet 24-192 deploy": ("repsnet", {"filters": [24, 48, 96, 192], "num_classes": 5, "align_corners": False},
                              True),
    "repsnet 16-128 deploy": ("repsnet", {"filters": [16, 32, 64, 128], "num_classes": 5, "align_corners": False},
                              True),
    # the half-resolution variant (input_stride 2) of the embedded default cellzoo-he
    "repsnet 16-128 s2 deploy": ("repsnet", {"filters": [16, 32, 64, 128], "num_classes": 5, "align_corners": False,
                                             "input_stride": 2}, True),
    # the shipped default itself (trained weights: real maps, so real post-processing time)
    "cellzoo-he (embedded)": ("zoo", {"name": "cellzoo-he"}, False),
    "repsnet 12-96 deploy": ("repsnet", {"filters": [12, 24, 48, 96], "num_classes": 5, "align_corners": False},
                             True),
    "repsnet 8-64 deploy": ("repsnet", {"filters": [8, 16, 32, 64], "num_classes": 5, "align_corners": False},
                            True),
    "fullnet": ("fullnet", {}, False),
    # detection families at the small configurations trained here (scripts/train_detection.py --small)
    "cascade r18 small": ("cascade", {"small": True, "backbone": "resnet18"}, False),
    "scts small": ("scts", {"small": True}, False),
}


def _shared_data() -> Path:
    from cellzoo._paths import shared_data

    return shared_data()


def mosaic(size: int):
    """A size×size H&E image and its instance labels, mosaicked from MoNuSeg test images."""
    import imageio.v3 as iio
    import numpy as np

    folder = _shared_data() / "monuseg2018"
    paths = sorted((folder / "images" / "test").glob("*.png"))
    image = np.zeros((size, size, 3), np.uint8)
    labels = np.zeros((size, size), np.int32)
    k, offset = 0, 0
    for y in range(0, size, 1000):
        for x in range(0, size, 1000):
            path = paths[k % len(paths)]
            k += 1
            h, w = min(1000, size - y), min(1000, size - x)
            image[y:y + h, x:x + w] = iio.imread(path)[:h, :w, :3]
            tile = iio.imread(folder / "labels" / "test" / path.name)[:h, :w].astype(np.int32)
            labels[y:y + h, x:x + w] = np.where(tile > 0, tile + offset, 0)
            offset += int(tile.max()) + 1
    return image, labels


def build(name: str, weights: str | None):
    from cellzoo.models import build_model

    family, config, deploy = CONFIGS[name]
    if family == "zoo":
        from cellzoo.zoo import load_model

        loaded = load_model(config["name"])
        model = loaded[0] if isinstance(loaded, tuple) else loaded
    elif weights:
        from cellzoo.zoo.weights import load_weights

        model = load_weights(weights)[0]
    elif config.get("small"):
        from dataclasses import asdict

        from cellzoo.models import family_class

        small = asdict(family_class(family).Config.small())
        small.update({k: v for k, v in config.items() if k != "small"})
        model = build_model(family, small)
    else:
        model = build_model(family, config)
    if deploy and hasattr(model, "reparameterize"):
        model.reparameterize()
    return model.eval()


def gt_maps(model, labels):
    """Activated dense maps that a perfect model would output, from the model's own training targets."""
    import numpy as np

    classes = np.where(labels > 0, 1 + labels % (model.num_classes - 1), 0).astype(np.uint8) \
        if model.num_classes > 2 else None
    targets = model.targets(labels, classes)
    maps = {}
    for name, how in model.dense_maps.items():
        target = np.asarray(targets[name])
        if how == "softmax":
            n = {"nucleus": 2, "type": model.num_classes}.get(name, 3)
            maps[name] = np.eye(n, dtype=np.float32)[target.astype(np.int64)].transpose(2, 0, 1)
        else:
            maps[name] = target.astype(np.float32)
    return maps


def run_one(name: str, size: int, precision: str, weights: str | None, threads: int, repeats: int,
            warmup: int = 2048) -> dict:
    """Runs inside a fresh subprocess so that ru_maxrss is this configuration's peak. One untimed run first
    (oneDNN creates its kernels per shape), then the median of ``repeats`` runs."""
    import resource
    import statistics

    import numpy as np
    import torch

    from cellzoo.infer import segment

    torch.set_num_threads(threads)
    model = build(name, weights)
    image, labels = mosaic(size)
    amp = "bf16" if precision == "bf16" else False
    # warm-up: the whole image up to 2048² (same tile shapes as the timed runs); larger images tile with the
    # same tile shapes as a 2048² crop, so that crop warms up the same kernels at a quarter of the cost.
    # ``warmup`` < 2048 for models whose tiles are small (FullNet): any crop larger than one tile will do
    segment(model, image[:warmup, :warmup], device="cpu", amp=amp)
    runs = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = segment(model, image, device="cpu", amp=amp)
        runs.append((time.perf_counter() - started, result))
    engine_seconds = statistics.median(r[0] for r in runs)
    result = sorted(runs, key=lambda r: r[0])[len(runs) // 2][1]  # the median run's own breakdown
    trained = bool(weights) or CONFIGS[name][0] == "zoo"
    if model.kind == "detection":
        # detections are stitched and painted inside the engine's tile loop: time it end to end
        truth, post_seconds = result, 0.0
        network = total = result.meta["seconds"]
    elif trained:
        # trained weights give real maps: the engine's own end-to-end time and post-processing share
        truth, post_seconds = result, result.meta["postprocess_seconds"]
        network, total = result.meta["seconds"] - post_seconds, result.meta["seconds"]
    else:
        maps = gt_maps(model, labels)
        started = time.perf_counter()
        truth = model.postprocess(maps, **model.default_postprocess_params())
        post_seconds = time.perf_counter() - started
        network = result.meta["network_seconds"]
        total = network + post_seconds
    return {"config": name, "size": size, "precision": precision, "network_s": network,
            "post_s": post_seconds, "total_s": total, "mpix_per_s": size * size / 1e6 / total,
            "post_fraction": post_seconds / total, "engine_s": engine_seconds, "repeats": len(runs),
            "tiles": result.meta["tiles"], "tile": result.meta["tile"], "objects_gt_maps": truth.count,
            "trained_weights": trained, "threads": threads, "warmup": min(warmup, size),
            "objects_gt": int(len(np.unique(labels)) - 1),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def flops_per_mpix(name: str) -> tuple[float, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build(name, None)
    if getattr(model.config, "deploy", None) is False and hasattr(model, "reparameterize"):
        model.reparameterize()  # count the fused convs that inference runs
    x = torch.rand(1, 3, 256, 256) * 255
    x = model.preprocess(x[0].permute(1, 2, 0).numpy())[None] if model.kind == "detection" else x
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return counter.get_total_flops() / (256 * 256) * 1e6 / 1e9, params  # GFLOP per MPix, M parameters


def conv_throughput(threads: int, seconds: float = 2.0) -> dict[str, float]:
    """GFLOP/s of a 64→64 3×3 conv on 1×64×256×256 (channels_last), fp32 and bf16 autocast."""
    import torch

    torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 64, 256, 256).contiguous(memory_format=torch.channels_last)
    flops = 2 * 64 * 64 * 9 * 256 * 256
    out = {}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            conv(x)
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                conv(x)
                count += 1
        out[label] = flops * count / (time.perf_counter() - started) / 1e9
    return out


def accuracy(weights: str, images: int, threads: int) -> dict:
    """AJI / PQ of a checkpoint on MoNuSeg test images in fp32 and bf16 (per image, then averaged)."""
    import imageio.v3 as iio
    import numpy as np
    import torch

    from cellzoo.infer import segment
    from cellzoo.metrics.instance import aji, panoptic_quality
    from cellzoo.zoo.weights import load_weights

    torch.set_num_threads(threads)
    model = load_weights(weights)[0].eval()
    folder = _shared_data() / "monuseg2018"
    rows = {"fp32": [], "bf16": []}
    for path in sorted((folder / "images" / "test").glob("*.png"))[:images]:
        image = iio.imread(path)[..., :3]
        gt = iio.imread(folder / "labels" / "test" / path.name)
        for precision in rows:
            pred = segment(model, image, device="cpu", amp="bf16" if precision == "bf16" else False).labels
            rows[precision].append((aji(gt, pred), panoptic_quality(gt, pred)["pq"]))
    return {p: {"aji": float(np.mean([r[0] for r in v])), "pq": float(np.mean([r[1] for r in v]))}
            for p, v in rows.items()}


def markdown(rows, flops, conv, args, load) -> str:
    lines = [
        "# Inference benchmark (`benchmarks/inference.py`)", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{__import__('torch').__version__}; torch threads per row in the `threads` column (the last run used "
        f"{args.threads}). 1-minute load average when the last run started / ended: {load[0]:.1f} / {load[1]:.1f} "
        f"(the benchmark's own threads count; clearly above its threads means other jobs shared the cores).",
        "",
        "3×3 conv throughput (64→64, 256², channels_last): " + "; ".join(
            f"{threads} thread{'s' if threads != '1' else ''}: fp32 {c['fp32']:.0f} GFLOP/s, bf16 {c['bf16']:.0f} "
            f"GFLOP/s" for threads, c in sorted(conv.items())) + ".", "",
        "Weights are random (network time does not depend on them) and post-processing is timed on maps built "
        "from MoNuSeg ground truth mosaicked to the size, except for rows with trained weights (the embedded "
        "model, detectors): those are the engine's own end-to-end time on the MoNuSeg mosaic. "
        "End to end = network + post-processing. "
        "`conv %` = achieved network GFLOP/s (FLOPs of the input area incl. tiling overlap not counted) over "
        "the conv throughput above at the row's thread count. Each row: one untimed warm-up run (the image, at "
        "most its 2048² corner, or the smaller --warmup-size crop the JSON rows record, still at least one "
        "tile), then the median of the timed runs (3 by default, 1 at 4096²).", "",
        "| config | params (M) | GFLOP/MPix | size | precision | threads | tiles | network s | post s | post % | "
        "MPix/s | conv % | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gflop, params = flops[r["config"]]
        if "error" in r:
            lines.append(f"| {r['config']} | {params:.2f} | {gflop:.0f} | {r['size']}² | {r['precision']} | "
                         f"{r.get('threads', 2)} | | {r['error']} | | | | | |")
            continue
        achieved = gflop * r["size"] ** 2 / 1e6 / r["network_s"]
        reference = conv[str(r.get("threads", 2))][r["precision"]]
        lines.append(
            f"| {r['config']} | {params:.2f} | {gflop:.0f} | {r['size']}² | {r['precision']} | "
            f"{r.get('threads', 2)} | {r['tiles']} | "
            f"{r['network_s']:.2f} | {r['post_s']:.2f} | {100 * r['post_fraction']:.0f} | "
            f"{r['mpix_per_s']:.2f} | {100 * achieved / reference:.0f} | {r['peak_rss_gib']:.2f} |")
    lines += ["", "Detection rows (cascade, scts) use the trained weights given with --weights and run fp32 (the "
              "engine keeps detectors in fp32 on CPU); their time is end to end with the cross-tile stitching, "
              "and their GFLOP/MPix counts one 256² forward including the RoI heads, whose cost follows the "
              "number of detections rather than the area, so `conv %` means little there."]
    lines += ["", "Peers on this machine (2 cores, 1024², end to end; from the project brief): StarDist 0.9.2 "
              "1.88 MPix/s, Cellpose 3 0.11 MPix/s, Cellpose-SAM 0.02 MPix/s. Target for the default H&E model: "
              "≥ 3.8 MPix/s with post-processing ≤ 25 %.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512² and 1024² only")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--configs", nargs="*", default=None, choices=list(CONFIGS))
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--weights", action="append", default=[], metavar="CONFIG=FILE")
    parser.add_argument("--accuracy", default=None, metavar="FILE", help="checkpoint to score in fp32 and bf16")
    parser.add_argument("--images", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per row after a warm-up run (median reported); 1 at 4096²")
    parser.add_argument("--warmup-size", type=int, default=2048,
                        help="edge of the untimed warm-up crop (default 2048; any crop larger than one tile warms "
                             "up the tiled runs' kernels, so a small one saves minutes for the slowest models)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--append", action="store_true",
                        help="merge with the rows of the previous run (kept in <out>.json) instead of replacing them")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._one:  # child process
        name, size, precision, weights, repeats, warmup = json.loads(args._one)
        print(json.dumps(run_one(name, size, precision, weights, args.threads, repeats, warmup)))
        return 0
    if args.accuracy:
        print(json.dumps(accuracy(args.accuracy, args.images, args.threads), indent=1))
        return 0
    sizes = args.sizes or ([512, 1024] if args.quick else [512, 1024, 2048, 4096])
    configs = args.configs or list(CONFIGS)
    weights = dict(item.split("=", 1) for item in args.weights)
    load_before = os.getloadavg()[0]
    conv = {str(args.threads): conv_throughput(args.threads)}  # reference per thread count
    print(f"conv 3x3, {args.threads} threads: fp32 {conv[str(args.threads)]['fp32']:.0f} GFLOP/s, "
          f"bf16 {conv[str(args.threads)]['bf16']:.0f} GFLOP/s", flush=True)
    flops = {name: flops_per_mpix(name) for name in configs}
    rows = []
    for name in configs:
        for size in sizes:
            for precision in args.precisions:
                job = json.dumps([name, size, precision, weights.get(name), args.repeats if size < 4096 else 1,
                                  args.warmup_size])
                command = [sys.executable, __file__, "--_one", job, "--threads", str(args.threads)]
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
                    if done.returncode != 0:
                        row = {"config": name, "size": size, "precision": precision, "threads": args.threads,
                               "error": done.stderr.strip().splitlines()[-1][:80] if done.stderr else "failed"}
                    else:
                        row = json.loads(done.stdout.strip().splitlines()[-1])
                except subprocess.TimeoutExpired:
                    row = {"config": name, "size": size, "precision": precision, "threads": args.threads,
                           "error": f"over {args.timeout} s"}
                rows.append(row)
                print(json.dumps(row), flush=True)
    store = Path(args.out).with_suffix(".json")
    if args.append and store.is_file():
        previous = json.loads(store.read_text())
        keys = {(r["config"], r["size"], r["precision"]) for r in rows}
        rows = [r for r in previous["rows"] if (r["config"], r["size"], r["precision"]) not in keys] + rows
        flops = {**{k: tuple(v) for k, v in previous["flops"].items()}, **flops}
        # keep one reference measurement per thread count for the whole table (older files hold only the
        # 2-thread one, unkeyed)
        earlier = previous["conv"] if "fp32" not in previous["conv"] else {"2": previous["conv"]}
        conv = {**conv, **earlier}
    order = list(CONFIGS)
    rows.sort(key=lambda r: (order.index(r["config"]) if r["config"] in order else 99, r["size"], r["precision"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps({"rows": rows, "flops": flops, "conv": conv}, indent=1))
    text = markdown(rows, flops, conv, args, (load_before, os.getloadavg()[0]))
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
