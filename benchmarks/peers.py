"""Benchmark: cellzoo-he vs StarDist 0.9.2 end to end, side by side in one run (CPU, fp32 by default).

Both segment the same MoNuSeg mosaic (the 14 test images tiled edge to edge, cropped to 1024², 2048², 4096²):

- cellzoo: ``cellzoo.segment("cellzoo-he", mosaic, amp=...)`` — tiles, network, stitching, post-processing.
- StarDist: ``StarDist2D.predict_instances`` with a randomly initialised 2D model (32 rays, grid 2×2, the
  configuration of its published H&E / fluorescence models): its network runs in full on the mosaic, then its
  output is replaced by probability / distance maps derived from the ground truth (``edt_prob``,
  ``star_dist``), so that its NMS and labelling see a realistic candidate set (random weights would give
  none). StarDist runs in its own virtual environment (``benchmarks/.peers-venv``), created on demand;
  it is not a dependency of napari-cellzoo.

Runs are interleaved A B A B …, each in a fresh process; the table gives each side's median seconds and
MPix/s and the **median of the per-pair ratios** (StarDist seconds / cellzoo seconds), with the CPU model
and whether it has native bf16.

    python benchmarks/peers.py [--sizes 1024,2048,4096] [--rounds 3] [--precision fp32]

Writes ``benchmarks/results/peers.md`` (and ``peers.json``). Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
VENV = REPO / "benchmarks" / ".peers-venv"
STARDIST = "stardist==0.9.2"




def make_mosaic(size: int, folder: Path) -> tuple[Path, Path]:
    """The 14 MoNuSeg test images (1000² crops) tiled row by row, cropped to size²; labels with unique ids."""
    sys.path.insert(0, str(REPO / "src"))
    from cellzoo.data import load_shared_dataset

    image_path, labels_path = folder / f"mosaic_{size}.npy", folder / f"mosaic_{size}_labels.npy"
    if image_path.is_file() and labels_path.is_file():
        return image_path, labels_path
    samples = list(load_shared_dataset("monuseg2018", "test"))
    n = -(-size // 1000)
    image = np.zeros((n * 1000, n * 1000, 3), np.uint8)
    labels = np.zeros((n * 1000, n * 1000), np.int32)
    offset = 0
    for k in range(n * n):
        s = samples[k % len(samples)]
        y, x = (k // n) * 1000, (k % n) * 1000
        image[y:y + 1000, x:x + 1000] = s.image[:1000, :1000, :3]
        tile = s.labels[:1000, :1000].astype(np.int32)
        labels[y:y + 1000, x:x + 1000] = np.where(tile > 0, tile + offset, 0)
        offset += int(tile.max())
    np.save(image_path, image[:size, :size])
    np.save(labels_path, labels[:size, :size])
    return image_path, labels_path


CELLZOO_CHILD = """
import json, sys, time, numpy as np, torch
sys.path.insert(0, {src!r})
import cellzoo
image = np.load({image!r})
model = cellzoo.load_model("cellzoo-he")
started = time.perf_counter()
result = cellzoo.segment(model, image, device="cpu", amp={amp})
print(json.dumps({{"seconds": time.perf_counter() - started, "objects": result.count,
                  "precision": result.meta.get("precision"), "threads": torch.get_num_threads()}}))
"""

STARDIST_CHILD = """
import json, os, time, numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from csbdeep.utils import normalize
from stardist import edt_prob, star_dist
from stardist.models import Config2D, StarDist2D
image = np.load({image!r}); labels = np.load({labels!r})
config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=3)
model = StarDist2D(config, name="random", basedir={tmp!r})
model.thresholds = {{"prob": 0.5, "nms": 0.4}}
# ground-truth-derived network output (computed before the clock starts), on StarDist's 2x2 grid
prob = edt_prob(labels)[::2, ::2].astype(np.float32)
dist = star_dist(labels, 32)[::2, ::2].astype(np.float32)
original = model._instances_from_prediction
def from_prediction(shape, _prob, _dist, points=None, **kwargs):
    # the real network pass (random weights) has run and is timed; its NMS gets the ground-truth maps
    return original(shape, prob, dist, points=None, **kwargs)
model._instances_from_prediction = from_prediction
started = time.perf_counter()
x = normalize(image, 1, 99.8, axis=(0, 1))
result, details = model.predict_instances(x, n_tiles=model._guess_n_tiles(x), show_tile_progress=False,
                                          sparse=False)
print(json.dumps({{"seconds": time.perf_counter() - started, "objects": int(len(np.unique(result)) - 1)}}))
"""


def ensure_stardist_venv() -> Path:
    python = VENV / "bin" / "python"
    if python.is_file():
        probe = subprocess.run([str(python), "-c", "import stardist, tensorflow"], capture_output=True)
        if probe.returncode == 0:
            return python
    print(f"creating {VENV} with {STARDIST} and tensorflow (once) …", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", STARDIST, "tensorflow"], check=True)
    return python


def run_child(python: str, code: str) -> dict:
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cellzoo-peers")
    args = parser.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    stardist_python = ensure_stardist_venv()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        image, labels = make_mosaic(size, args.data)
        pairs = []
        for round_ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                a = run_child(sys.executable, CELLZOO_CHILD.format(src=str(REPO / "src"), image=str(image),
                                                                   amp=args.precision == "bf16"))
                b = run_child(str(stardist_python), STARDIST_CHILD.format(image=str(image), labels=str(labels),
                                                                          tmp=tmp))
            pairs.append((a, b))
            print(json.dumps({"size": size, "round": round_, "cellzoo": a, "stardist": b}), file=sys.stderr, flush=True)
        mpix = size * size / 1e6
        rows.append({"size": size, "cellzoo_s": statistics.median(a["seconds"] for a, _ in pairs),
                     "stardist_s": statistics.median(b["seconds"] for _, b in pairs),
                     "ratio": statistics.median(b["seconds"] / a["seconds"] for a, b in pairs),
                     "cellzoo_objects": pairs[-1][0]["objects"], "stardist_objects": pairs[-1][1]["objects"],
                     "precision": pairs[-1][0]["precision"], "mpix": mpix, "pairs": pairs})
    import torch

    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    lines = ["# cellzoo-he vs StarDist 0.9.2, end to end, side by side", "",
             f"Written by `benchmarks/peers.py` on {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}. "
             f"CPU: {cpu_model()} ({os.cpu_count()} cores), native bf16: {bf16}; cellzoo precision: "
             f"{args.precision}. {args.rounds} interleaved rounds per size, each run a fresh process; StarDist's "
             "network output replaced by ground-truth maps (its NMS sees realistic candidates).", "",
             "| size | cellzoo s (median) | cellzoo MPix/s | StarDist s (median) | StarDist MPix/s | ratio (median of pairs) | objects cellzoo / StarDist |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['size']}² | {r['cellzoo_s']:.2f} | {r['mpix'] / r['cellzoo_s']:.2f} | {r['stardist_s']:.2f} | "
                     f"{r['mpix'] / r['stardist_s']:.2f} | {r['ratio']:.2f}× | {r['cellzoo_objects']} / {r['stardist_objects']} |")
    write_results(RESULTS, "peers", rows, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
