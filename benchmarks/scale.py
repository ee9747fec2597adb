"""Benchmark: peak memory and throughput from 2048² to whole-slide sizes (cellzoo-he, CPU).

For each size a pyramidal, tiled TIFF (0.25 µm/px, three levels) is made from MoNuSeg 2018 test images
mirrored edge to edge (tissue everywhere; written tile by tile, so making it needs no memory either). Each
measurement runs in a fresh process and reports wall seconds, MPix/s and the process's peak RSS:

- ``memory``: the whole image read into memory and segmented by ``cellzoo.infer.segment`` (sizes ≤ 4096²);
- ``slide``: ``cellzoo.slide.segment_slide`` — regions of 2048² with their margin, labels into OME-Zarr;
- ``cluster``: the same on a dask LocalCluster of 2 single-threaded worker processes (peak RSS = the
  largest of the driver and its workers; ``--cluster-sizes``).

    python benchmarks/scale.py [--sizes 2048,4096,10000] [--precision bf16,fp32] [--cluster-sizes 4096] [--merge]

Writes ``benchmarks/results/scale.md`` (and ``scale.json``) and prints the table. Run it on a quiet machine.
``--merge`` keeps the rows of earlier runs that this run does not measure again (each row says when it
ran), so a long size (40000²: ~20 min per precision on 2 cores) can be added on its own.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

RESULTS = REPO / "benchmarks" / "results"
MPP = 0.25
TILE = 256




def monuseg_block():
    """All MoNuSeg test images side by side (2 rows of 7 × 1000²): the texture the mosaic mirrors."""
    from cellzoo.data import load_shared_dataset

    images = [s.image[:1000, :1000, :3] for s in load_shared_dataset("monuseg2018", "test")]
    return np.concatenate([np.concatenate(images[:7], 1), np.concatenate(images[7:14], 1)], 0)


def mosaic_window(block: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Pixels [y:y+h, x:x+w] of the infinite mirrored tiling of ``block``."""
    bh, bw = block.shape[:2]
    ys = np.arange(y, y + h) % (2 * bh)
    xs = np.arange(x, x + w) % (2 * bw)
    ys = np.where(ys < bh, ys, 2 * bh - 1 - ys)
    xs = np.where(xs < bw, xs, 2 * bw - 1 - xs)
    return block[ys][:, xs]


def make_slide(path: Path, size: int, block: np.ndarray, levels: int = 3) -> Path:
    import tifffile

    def tiles(step: int):
        shape = -(-size // step)
        for ty in range(0, shape, TILE):
            for tx in range(0, shape, TILE):
                h, w = min(TILE, shape - ty), min(TILE, shape - tx)
                window = mosaic_window(block, ty * step, tx * step, h * step, w * step)[::step, ::step]
                out = np.zeros((TILE, TILE, 3), np.uint8)
                out[:h, :w] = window
                yield out

    opts = dict(tile=(TILE, TILE), photometric="rgb", compression="zlib", resolutionunit="CENTIMETER", dtype=np.uint8)
    partial = path.with_name(f".{path.name}.part")  # a run cut short leaves no slide that looks complete
    with tifffile.TiffWriter(partial, bigtiff=True) as tif:
        tif.write(tiles(1), shape=(size, size, 3), subifds=levels - 1, resolution=(1e4 / MPP, 1e4 / MPP), **opts)
        for level in range(1, levels):
            step = 2 ** level
            tif.write(tiles(step), shape=(-(-size // step), -(-size // step), 3), subfiletype=1,
                      resolution=(1e4 / (MPP * step),) * 2, **opts)
    os.replace(partial, path)
    return path


def child(mode: str, slide: str, precision: str, out: str) -> dict:
    """One measurement (run in a fresh process)."""
    import torch

    from cellzoo.infer import segment
    from cellzoo.slide import open_slide, segment_slide

    torch.set_num_threads(os.cpu_count() or 1)
    amp = precision == "bf16"
    started = time.perf_counter()
    if mode == "memory":
        source = open_slide(slide)
        image = source.read(0, 0, 0, *source.shape)
        result = segment("cellzoo-he", image, device="cpu", amp=amp)
        count, precision_ran = result.count, result.meta.get("precision")
    else:
        result = segment_slide("cellzoo-he", slide, out, device="cpu", amp=amp, overwrite=True,
                               scheduler="local:2" if mode == "cluster" else None)
        count, precision_ran = result.count, result.meta.get("precision")
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB → GiB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    return {"seconds": seconds, "count": count, "peak_rss_gib": max(rss, children), "precision": precision_ran}


def measure(mode: str, slide: Path, size: int, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        code = ("import json, sys; sys.path.insert(0, %r); import scale; "
                "print(json.dumps(scale.child(%r, %r, %r, %r)))") % (str(REPO / "benchmarks"), mode, str(slide),
                                                                     precision, out)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr[-800:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(mode=mode, size=size, mpix_per_s=size * size / 1e6 / row["seconds"])
    return row


def report(rows: list[dict], meta: dict) -> str:
    lines = ["# Scale: peak memory and throughput, 2048² to whole-slide sizes (cellzoo-he, CPU)", "",
             f"Written by `benchmarks/scale.py` on {meta['when']}. CPU: {meta['cpu']} ({meta['cores']} cores); "
             f"native bf16: {meta['bf16']}. Slides: pyramidal tiled TIFFs of mirrored MoNuSeg test images "
             "(tissue everywhere), 0.25 µm/px; regions of 2048² plus margin. Each row is one fresh process.", "",
             "| size | path | precision | seconds | MPix/s | peak RSS (GiB) | nuclei | run at (UTC) |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["size"], r["requested"] != "bf16", MODES.index(r["mode"]))):
        when = (r.get("when") or meta["when"])[:16].replace("T", " ")
        if "error" in r:
            lines.append(f"| {r['size']}² | {r['mode']} | {r['requested']} | failed: {r['error'].splitlines()[-1][:80]} "
                         f"| | | | {when} |")
            continue
        lines.append(f"| {r['size']}² | {r['mode']} | {r['precision']} | {r['seconds']:.1f} | {r['mpix_per_s']:.2f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['count']} | {when} |")
    lines += ["", *targets(rows)]
    return "\n".join(lines) + "\n"


MODES = ("memory", "slide", "cluster")


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, from the rows at hand."""
    ok = {(r["size"], r["mode"], r["requested"]): r for r in rows if "error" not in r}
    out = ["Targets (issue 20):"]
    for size, limit in ((10000, 3.0), (40000, 4.0)):
        for precision in ("bf16", "fp32"):
            r = ok.get((size, "slide", precision))
            base = ok.get((2048, "memory", precision))
            if r is None:
                out.append(f"- {size}² {precision}: not run")
                continue
            gib = r["peak_rss_gib"] * 2 ** 30 / 1e9  # the targets are in GB
            line = f"- {size}² {precision}: peak RSS {gib:.2f} GB (≤ {limit:g} GB: {'met' if gib <= limit else 'NOT met'})"
            if size == 40000 and base is not None:
                share = r["mpix_per_s"] / base["mpix_per_s"]
                line += f"; {share:.0%} of the 2048² in-memory MPix/s (≥ 85 %: {'met' if share >= 0.85 else 'NOT met'})"
            out.append(line)
    for (size, mode, precision), r in sorted(ok.items()):
        single = ok.get((size, "slide", precision))
        if mode == "cluster" and single is not None:
            share = r["mpix_per_s"] / single["mpix_per_s"]
            out.append(f"- LocalCluster of 2 workers at {size}² {precision}: {share:.0%} of one process "
                       f"(within 15 %: {'met' if share >= 0.85 else 'NOT met'})")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2048,4096,10000")
    parser.add_argument("--precision", default="bf16,fp32")
    parser.add_argument("--cluster-sizes", default="4096", help="sizes also run on a LocalCluster of 2 workers")
    parser.add_argument("--memory-max", type=int, default=4096, help="largest size run in memory")
    parser.add_argument("--slides", type=Path, default=Path(tempfile.gettempdir()) / "cellzoo-scale")
    parser.add_argument("--merge", action="store_true", help="keep earlier rows this run does not measure again")
    args = parser.parse_args(argv)

    import torch

    from cellzoo._atomic import atomic_write_text

    args.slides.mkdir(parents=True, exist_ok=True)
    block = None
    rows = []
    meta = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}
    cluster_sizes = {int(s) for s in args.cluster_sizes.split(",") if s}
    for size in (int(s) for s in args.sizes.split(",")):
        slide = args.slides / f"mosaic_{size}.tif"
        if not slide.is_file():
            block = monuseg_block() if block is None else block
            started = time.perf_counter()
            make_slide(slide, size, block)
            print(f"made {slide} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        for precision in args.precision.split(","):
            modes = (["memory"] if size <= args.memory_max else []) + ["slide"] + \
                (["cluster"] if size in cluster_sizes else [])
            for mode in modes:
                row = measure(mode, slide, size, precision)
                row.setdefault("mode", mode)
                row.setdefault("size", size)
                row["requested"] = precision
                row["when"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.merge and (RESULTS / "scale.json").is_file():
        earlier = json.loads((RESULTS / "scale.json").read_text())
        measured = {(r["size"], r["mode"], r["requested"]) for r in rows}
        for r in earlier["rows"]:
            r.setdefault("when", earlier["meta"]["when"])
            if (r["size"], r["mode"], r["requested"]) not in measured:
                rows.append(r)
    atomic_write_text(RESULTS / "scale.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = report(rows, meta)
    atomic_write_text(RESULTS / "scale.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
