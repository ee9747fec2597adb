"""One script for the day a CUDA GPU is lent: does every embedded model run there, how fast, and the same as on CPU?

    python benchmarks/gpu_check.py --out benchmarks/results/gpu.md     # ≤ 8 min on one CUDA GPU
    python benchmarks/gpu_check.py --quick                               # small sizes (CPU smoke run)

Sections (each CUDA one in its own try/except: a failure is reported and the rest still runs; an overall
time budget, ``--budget`` seconds, skips what would not fit):

1. CPU reference (always): every embedded model (``cellzoo zoo list``, status embedded) segments its
   reference image on the CPU in fp32 (engine defaults, scale 1): the bundled CC0 DSB 2018 sample for
   fluorescence models, and for H&E models a synthetic H&E rendering of the same sample (pink background,
   purple nuclei where the fluorescence is); scored against the sample's ground truth. Also the engine's
   out-of-memory fallback with an injected OOM (the model's forward raises torch's OOM error once).
2. CUDA inference: every embedded model in fp32 / bf16 / fp16 (``amp``), engine's auto tile size, on
   mosaics of the reference image (``--sizes``, default 1024² and 2048²): MPix/s (median of ``--repeats``
   after one warm-up), tiles, network / post-processing seconds, peak GPU memory.
3. CUDA = CPU: the CUDA fp32 instances against the CPU fp32 ones on the reference image, paired with the
   project's metrics (``cellzoo.metrics.instance.detection_scores`` at IoU 0.9): PASS when ≥ 99 % of the
   objects pair; bf16 / fp16 agreement is shown too (informative).
4. OOM fallback on CUDA, on purpose: the allocator is capped (``torch.cuda.set_per_process_memory_fraction``)
   between the peak memory of a 2048-px tile and of a 1024-px one, so a 2048-px tile really runs out of memory
   and the engine must finish with smaller tiles (``Instances.meta["oom_fallback"]``); plus the injected OOM.
5. A short fine-tune on CUDA: ``cellzoo.train.finetune`` (dense models, a few steps on the sample with a
   held-out stripe) and ``cellzoo.train.trainer`` (detection models, a few steps): seconds per step.

Without CUDA (or with ``--cpu-only``) sections 2-5 print "skipped (no CUDA)" and no report is written
(``--out`` is left untouched), so a CPU run can never overwrite GPU results. Images come only from the
repository (the GPU machine has no /work/shared); ``--fluo-image`` / ``--he-image`` use other files.
Exit status: 0 when everything that ran passed, 1 when a section failed or CUDA ≠ CPU.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu.md"
PRECISIONS = {"fp32": False, "bf16": "bf16", "fp16": "fp16"}
#: CUDA = CPU: share of objects that must pair at IoU ≥ MATCH_IOU
MATCH_IOU, MATCH_SHARE = 0.9, 0.99


# ----------------------------------------------------------------------------- budget and reporting
class Budget:
    """Wall-clock guard: ``fits(seconds)`` is False once less than that is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.started = time.perf_counter()

    @property
    def used(self) -> float:
        return time.perf_counter() - self.started

    def fits(self, seconds: float = 0.0) -> bool:
        return self.used + seconds < self.seconds


class Report:
    """Collects markdown lines and failures; prints as it goes."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failures: list[str] = []

    def add(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: list[str], rows: list[list]) -> None:
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(str(v) for v in row) + " |")
        self.add()

    def fail(self, section: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.failures.append(f"{section}: {text}")
        self.add(f"**FAILED** ({section}): {text}")
        if not isinstance(exc, str):
            print(traceback.format_exc(), file=sys.stderr, flush=True)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# ----------------------------------------------------------------------------- images (repository only)
def sample_images(fluo_path: str | None = None, he_path: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{"fluo": (image, labels), "he": (image, labels)}``: the bundled DSB sample and its synthetic H&E
    rendering (labels None for images given by path)."""
    import tifffile

    from cellzoo.data.samples import sample_image_path, sample_labels_path

    gray = tifffile.imread(sample_image_path())
    labels = tifffile.imread(sample_labels_path()).astype(np.int32)
    out = {"fluo": (gray, labels), "he": (synthetic_he(gray), labels)}
    if fluo_path or he_path:
        from cellzoo.data.io import read_image

        if fluo_path:
            out["fluo"] = (read_image(fluo_path), None)
        if he_path:
            out["he"] = (read_image(he_path), None)
    return out


def synthetic_he(gray: np.ndarray, seed: int = 0) -> np.ndarray:
    """An H&E-looking RGB uint8 image of a fluorescence image: eosin-pink background, haematoxylin-purple
    nuclei where the signal is (mixed by the percentile-stretched intensity), fine texture and noise."""
    from skimage.filters import gaussian

    values = gray.astype(np.float32)
    low, high = np.percentile(values, (1, 99.5))
    signal = np.clip((values - low) / max(high - low, 1e-6), 0, 1)
    rng = np.random.default_rng(seed)
    weight = np.clip(signal ** 0.7 + 0.15 * gaussian(rng.standard_normal(gray.shape), 1.5), 0, 1)[..., None]
    background = np.array([236, 188, 214], np.float32)
    nucleus = np.array([96, 58, 148], np.float32)
    rgb = background * (1 - weight) + nucleus * weight + 6 * rng.standard_normal(gray.shape + (3,))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def mosaic(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` mirrored (symmetric padding) or cropped to size×size: a realistic nucleus density at any
    size, and no seams for the model to see."""
    height, width = image.shape[:2]
    pad = [(0, max(0, size - height)), (0, max(0, size - width))] + [(0, 0)] * (image.ndim - 2)
    return np.ascontiguousarray(np.pad(image, pad, mode="symmetric")[:size, :size])


def modality(info) -> str:
    """"fluo" or "he" for a registry entry (from its normalisation and training data)."""
    text = f"{info.normalization} {info.training_data}".lower()
    return "fluo" if ("fluorescence" in text or "dsb" in text or "bbbc038" in text) else "he"


# ----------------------------------------------------------------------------- measuring
def agreement(reference: np.ndarray, other: np.ndarray, iou: float = MATCH_IOU) -> tuple[float, int, int, int]:
    """Share of objects paired at IoU > ``iou`` (pairs / the larger object count; 1.0 when both are empty),
    with the pair count and both object counts."""
    from cellzoo.metrics.instance import detection_scores

    scores = detection_scores(reference, other, (iou,))[float(iou)]
    n_ref, n_other = scores["tp"] + scores["fn"], scores["tp"] + scores["fp"]
    larger = max(n_ref, n_other)
    return (1.0 if larger == 0 else scores["tp"] / larger), scores["tp"], n_ref, n_other


def run_segment(model, image, **kwargs):
    from cellzoo.infer.engine import segment

    kwargs.setdefault("scale", 1.0)  # the same single pass everywhere (no "auto" second pass)
    return segment(model, image, **kwargs)


def inject_oom_once(model):
    """Make ``model``'s forward raise torch's out-of-memory error on its first call (fault injection)."""
    from cellzoo.infer.engine import OUT_OF_MEMORY

    base = type(model)
    state = {"raised": 0}

    class OutOfMemoryOnce(base):
        def forward(self, *args, **kwargs):
            if not state["raised"]:
                state["raised"] = 1
                raise OUT_OF_MEMORY("CUDA out of memory (injected by benchmarks/gpu_check.py)")
            return super().forward(*args, **kwargs)

    model.__class__ = OutOfMemoryOnce
    return model


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if device == "cuda" else "-"


def load(name: str, device: str = "cpu"):
    from cellzoo.zoo import load_model

    return load_model(name, device=device, progress=False)


# ----------------------------------------------------------------------------- sections
def cpu_reference(report: Report, models, images, crop: int | None) -> dict[str, dict]:
    """Every embedded model on the CPU (fp32): counts, scores, seconds; returns name -> reference result."""
    from cellzoo.metrics.instance import aji, panoptic_quality

    report.add("## CPU reference (fp32)")
    report.add()
    rows, references = [], {}
    for info in models:
        kind = modality(info)
        image, labels = images[kind]
        if crop:
            image = image[:crop, :crop]
            labels = None if labels is None else labels[:crop, :crop]
        try:
            started = time.perf_counter()
            model = load(info.name)
            loaded = time.perf_counter() - started
            result = run_segment(model, image, device="cpu", amp=False)
            scores = ("-", "-")
            if labels is not None:
                scores = (f"{aji(labels, result.labels):.3f}", f"{panoptic_quality(labels, result.labels)['pq']:.3f}")
            references[info.name] = {"image": image, "labels": result.labels, "count": result.count}
            rows.append([info.name, info.family, kind, "×".join(map(str, image.shape[:2])), result.count, *scores,
                         f"{loaded:.1f}", f"{result.meta['seconds']:.2f}", result.meta["precision"]])
        except Exception as exc:  # noqa: BLE001 - report and go on
            report.fail(f"CPU reference {info.name}", exc)
    report.table(["model", "family", "image", "size", "objects", "AJI", "PQ", "load s", "segment s", "precision"],
                 rows)
    report.add("(reference images: the bundled CC0 DSB 2018 sample; H&E models: its synthetic H&E rendering; "
               "AJI/PQ against the sample's ground truth)")
    report.add()
    return references


def oom_injected(report: Report, name: str, image: np.ndarray, device: str) -> bool:
    """The engine's OOM fallback with an injected error on ``device``: it must finish with smaller tiles."""
    try:
        model = inject_oom_once(load(name, device))
        result = run_segment(model, image, device=device, amp=False)
        fallback = result.meta.get("oom_fallback")
        if not fallback:
            report.fail(f"OOM fallback (injected, {device})", "no oom_fallback in Instances.meta")
            return False
        report.add(f"- OOM fallback (injected once, {device}, {name}, {'×'.join(map(str, image.shape[:2]))}): "
                   f"{fallback['note']}; {result.meta['tiles']} tiles, {result.count} objects — ok")
        return True
    except Exception as exc:  # noqa: BLE001
        report.fail(f"OOM fallback (injected, {device})", exc)
        return False


def cuda_inference(report: Report, models, images, sizes, repeats: int, budget: Budget, device: str = "cuda") -> None:
    report.add(f"## {device.upper()} inference (engine's auto tile size)")
    report.add()
    rows = []
    for info in models:
        image = images[modality(info)][0]
        try:
            model = load(info.name, device)
        except Exception as exc:  # noqa: BLE001
            report.fail(f"{device} load {info.name}", exc)
            continue
        for precision, amp in PRECISIONS.items():
            for size in sizes:
                if not budget.fits(30):
                    rows.append([info.name, precision, f"{size}²", "skipped: time budget", "", "", "", "", ""])
                    continue
                try:
                    data = mosaic(image, size)
                    run_segment(model, data, device=device, amp=amp)  # warm-up (cuDNN autotuning, allocator)
                    reset_peak(device)
                    times, result = [], None
                    for _ in range(repeats):
                        started = time.perf_counter()  # segment returns numpy arrays: the device is done
                        result = run_segment(model, data, device=device, amp=amp)
                        times.append(time.perf_counter() - started)
                    seconds = statistics.median(times)
                    rows.append([info.name, result.meta["precision"], f"{size}²", f"{size * size / 1e6 / seconds:.2f}",
                                 f"{result.meta['tiles']} × {result.meta['tile'][0]}",
                                 f"{result.meta['network_seconds']:.3f}", f"{result.meta['postprocess_seconds']:.3f}",
                                 result.count, peak_gib(device)])
                except Exception as exc:  # noqa: BLE001
                    report.fail(f"{device} {info.name} {precision} {size}²", exc)
                    rows.append([info.name, precision, f"{size}²", "FAILED", "", "", "", "", ""])
        del model
        reset_peak(device)
    report.table(["model", "precision", "size", "MPix/s", "tiles × edge", "network s", "post-proc. s", "objects",
                  "peak GiB"], rows)
    report.add(f"(median of {repeats} runs after a warm-up; end to end: preparation, network, post-processing; "
               "mosaics of the reference image)")
    report.add()


def cuda_equals_cpu(report: Report, models, references: dict[str, dict], device: str = "cuda") -> None:
    report.add(f"## {device.upper()} = CPU (objects paired at IoU > {MATCH_IOU}, pass: ≥ {MATCH_SHARE:.0%} in fp32)")
    report.add()
    rows = []
    for info in models:
        reference = references.get(info.name)
        if reference is None:
            continue
        try:
            model = load(info.name, device)
            for precision, amp in PRECISIONS.items():
                result = run_segment(model, reference["image"], device=device, amp=amp)
                share, pairs, n_cpu, n_cuda = agreement(reference["labels"], result.labels)
                verdict = ("PASS" if share >= MATCH_SHARE else "FAIL") if precision == "fp32" else "(info)"
                if verdict == "FAIL":
                    report.failures.append(f"{device} ≠ CPU for {info.name}: {share:.1%} of objects paired")
                rows.append([info.name, precision, n_cpu, n_cuda, pairs, f"{share:.2%}", verdict])
        except Exception as exc:  # noqa: BLE001
            report.fail(f"{device} = CPU {info.name}", exc)
    report.table(["model", f"{device} precision", "CPU objects", f"{device} objects", "pairs IoU>0.9", "share", "verdict"], rows)


def cuda_oom_fallback(report: Report, name: str, image: np.ndarray) -> None:
    """A real CUDA out-of-memory error: the allocator is capped between the peaks of 2048- and 1024-px tiles."""
    import torch

    report.add("## Out-of-memory fallback on CUDA")
    report.add()
    data = mosaic(image, 2048)
    total = torch.cuda.get_device_properties(0).total_memory
    try:
        model = load(name, "cuda")
        peaks = {}
        for tile in (2048, 1024):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            run_segment(model, data, device="cuda", amp=False, tile=tile, batch_size=1)
            peaks[tile] = torch.cuda.max_memory_allocated()
        cap = (peaks[2048] + peaks[1024]) / 2
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        try:
            result = run_segment(model, data, device="cuda", amp=False, tile=2048, batch_size=1)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()
        fallback = result.meta.get("oom_fallback")
        report.add(f"- peak memory of one pass: {peaks[2048] / 2**20:.0f} MiB with 2048-px tiles, "
                   f"{peaks[1024] / 2**20:.0f} MiB with 1024-px tiles; allocator capped at {cap / 2**20:.0f} MiB")
        if fallback:
            report.add(f"- real OOM ({name}, 2048², tile 2048): {fallback['note']}; {result.meta['tiles']} tiles, "
                       f"{result.count} objects — ok")
        else:
            report.fail("OOM fallback (real, cuda)", "the capped run did not run out of memory (no oom_fallback); "
                        "the peaks may be too close to cap between them")
    except Exception as exc:  # noqa: BLE001
        report.fail("OOM fallback (real, cuda)", exc)
    oom_injected(report, name, mosaic(image, 1024), "cuda")
    report.add()


def cuda_finetune(report: Report, models, images, steps: int, tmp: Path, device: str = "cuda") -> None:
    from cellzoo.data.sample import Sample
    from cellzoo.train.finetune import FinetuneRecipe, finetune, prepare_finetune_data
    from cellzoo.train.trainer import TrainConfig, train

    report.add(f"## Short fine-tune on {device.upper()} ({steps} steps)")
    report.add()
    rows = []
    for info in models:
        image, labels = images[modality(info)]
        if labels is None:
            continue
        sample = Sample(f"{info.name}-sample", image, labels)
        try:
            model = load(info.name, device)
            reset_peak(device)
            started = time.perf_counter()
            if model.kind == "dense":
                data = prepare_finetune_data([sample])
                recipe = FinetuneRecipe(steps=steps, warmup_steps=1, eval_every=steps, batch_size=4, crop=256)
                result = finetune(model, data, recipe, device=device)
                seconds = time.perf_counter() - started
                how = "cellzoo.train.finetune"
                outcome = (f"held-out PQ {result.before.get('pq', 0):.3f} → {result.after.get('pq', 0):.3f}, "
                           f"steps {result.steps}")
            else:
                config = TrainConfig(epochs=1, steps_per_epoch=steps, batch_size=2, crop=256, device=device,
                                     max_val_images=1, out_dir=str(tmp / info.name), scheduler="none")
                result = train(model, [sample], [sample], config)
                seconds = time.perf_counter() - started
                how = "cellzoo.train.trainer"
                outcome = f"validation PQ {result.best_metric:.3f}"
            rows.append([info.name, how, steps, f"{seconds:.1f}", f"{seconds / steps:.2f}", outcome, peak_gib(device)])
        except Exception as exc:  # noqa: BLE001
            report.fail(f"fine-tune {info.name}", exc)
    report.table(["model", "via", "steps", "seconds (incl. evaluation)", "s/step (upper bound)", "outcome",
                  "peak GiB"], rows)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (written only after a CUDA run)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats (a smoke run: CPU reference on a 256² crop)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the CUDA parts even where CUDA exists")
    parser.add_argument("--rehearse-on-cpu", action="store_true",
                        help="run the CUDA sections' code on the CPU (no report written; with --quick a few minutes): "
                             "proves the script's paths without a GPU")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="mosaic edges for MPix/s (1024 2048)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per model, precision and size (3)")
    parser.add_argument("--finetune-steps", type=int, default=None, help="fine-tune steps on CUDA (20)")
    parser.add_argument("--budget", type=float, default=450.0, help="overall time budget in seconds (450)")
    parser.add_argument("--models", nargs="+", default=None, help="embedded models to check (default: all)")
    parser.add_argument("--fluo-image", default=None, help="fluorescence image instead of the bundled sample")
    parser.add_argument("--he-image", default=None, help="H&E image instead of the synthetic rendering")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget)
    import torch

    from cellzoo.zoo import list_models

    sizes = args.sizes or ([256, 512] if args.quick else [1024, 2048])
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.finetune_steps or (4 if args.quick else 20)
    models = [m for m in list_models() if m.status == "embedded" and (not args.models or m.name in args.models)]
    has_cuda = torch.cuda.is_available() and not args.cpu_only and not args.rehearse_on_cpu
    device = "cuda" if has_cuda else "cpu"

    report = Report()
    report.add("# GPU check (benchmarks/gpu_check.py)")
    report.add()
    gpu = torch.cuda.get_device_name(0) if has_cuda else "none"
    report.add(f"- date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, "
               f"CUDA {torch.version.cuda}; GPU: {gpu}; CPU: {platform.processor() or platform.machine()}, "
               f"{torch.get_num_threads()} torch threads")
    report.add(f"- embedded models: {', '.join(m.name for m in models) or 'none'}; sizes {sizes}; "
               f"{repeats} timed run(s); budget {budget.seconds:g} s" + ("; --quick" if args.quick else ""))
    report.add()
    if not models:
        report.fail("setup", "no embedded model found (cellzoo zoo list)")
        return 1
    images = sample_images(args.fluo_image, args.he_image)
    references = cpu_reference(report, models, images, crop=256 if args.quick else None)
    report.add("## Out-of-memory fallback (CPU, injected)")
    report.add()
    default = models[0].name
    oom_injected(report, default, images[modality(models[0])][0][:256, :256], "cpu")
    report.add()

    if not has_cuda and not args.rehearse_on_cpu:
        why = "--cpu-only" if args.cpu_only and torch.cuda.is_available() else "no CUDA device available to PyTorch"
        for section in ("CUDA inference (fp32 / bf16 / fp16, MPix/s)", "CUDA = CPU check",
                        "OOM fallback on CUDA", "fine-tune on CUDA"):
            report.add(f"- {section}: skipped ({why})")
        report.add()
        report.add(f"CUDA parts skipped: {why}; no report written ({args.out} left as it is). "
                   f"CPU part took {budget.used:.1f} s.")
        if report.failures:
            print("FAILURES:\n  " + "\n  ".join(report.failures), file=sys.stderr)
        return 1 if report.failures else 0

    sections = [
        ("CUDA = CPU", 60, lambda: cuda_equals_cpu(report, models, references, device)),
        ("CUDA inference", 60, lambda: cuda_inference(report, models, images, sizes, repeats, budget, device)),
    ]
    if has_cuda:  # a real out-of-memory error needs the CUDA allocator
        sections.append(("OOM fallback on CUDA", 45,
                         lambda: cuda_oom_fallback(report, default, images[modality(models[0])][0])))
    with tempfile.TemporaryDirectory(prefix="cellzoo-gpu-check-") as tmp:
        sections.append(("fine-tune on CUDA", 45,
                         lambda: cuda_finetune(report, models, images, steps, Path(tmp), device)))
        for name, needs, run in sections:
            if not budget.fits(needs):
                report.add(f"## {name}: skipped (time budget: {budget.used:.0f} of {budget.seconds:g} s used)")
                report.add()
                continue
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - one section's failure must not hide the others
                report.fail(name, exc)
    report.add(f"Total {budget.used:.0f} s. " + ("All checks passed." if not report.failures else
                                                   f"{len(report.failures)} failure(s):"))
    for failure in report.failures:
        report.add(f"- {failure}")
    if not has_cuda:
        print(f"rehearsal on the CPU: no report written ({args.out} left as it is)")
        return 1 if report.failures else 0
    from cellzoo._atomic import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, report.text())
    print(f"wrote {args.out}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
