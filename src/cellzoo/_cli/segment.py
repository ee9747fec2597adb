"""`cellzoo segment INPUT... [--model NAME] [--device ...] [--tile N] [--tta] [--out DIR] [--geojson]`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .._names import DEVICE_CHOICES

FLUO_MODEL = "cellzoo-fluo"


def _default_model() -> str:
    try:
        from ..zoo.catalog import default_model_name

        return default_model_name()
    except ImportError:  # pragma: no cover - zoo not installed
        return "cellzoo-he"


def add_arguments(parser):
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files or folders of images (TIFF, PNG, JPEG, ...)")
    parser.add_argument("--model", "-m", default=None,
                        help="model name from `cellzoo zoo list`, or a .safetensors / .pth file "
                             f"(default: {_default_model()}; with --sample: {FLUO_MODEL})")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to run (default: auto)")
    parser.add_argument("--tile", type=int, default=None, help="tile edge in pixels incl. halo (default: by memory)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per batch (default: 4)")
    parser.add_argument("--tta", action="store_true", help="8-fold flip/rotation test-time augmentation")
    parser.add_argument("--scale", default=None, metavar="FACTOR|auto",
                        help="resize images by FACTOR before segmenting (>1 for nuclei smaller than the model's "
                             "training data; outputs keep the image size), or 'auto': measure the nucleus size in "
                             "a first pass (models that declare their best object size, e.g. cellzoo-fluo). "
                             "Default: the model's own (auto for cellzoo-fluo, 1 otherwise)")
    parser.add_argument("--no-amp", action="store_true", help="full fp32 (default: bf16/fp16 where supported)")
    parser.add_argument("--channel", type=int, default=None, help="use only this channel of multichannel images")
    parser.add_argument("--normalize", default="auto", choices=("auto", "percentile", "none"),
                        help="input scaling (default: auto; percentile for 16-bit / fluorescence)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="post-processing parameter, e.g. --param boundary_threshold=5 (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace result files of an earlier run (without it, existing results are an error)")
    parser.add_argument("--out", "-o", default=None,
                        help="output folder (default: next to each input)")
    parser.add_argument("--geojson", action="store_true", help="also write <stem>.geojson (QuPath)")
    parser.add_argument("--sample", action="store_true", help="run on the bundled DSB 2018 sample image")
    slide = parser.add_argument_group(
        "whole slides", "SVS / NDPI / pyramidal TIFF / OME-Zarr inputs (and any input with --region or --scheduler) "
        "are segmented region by region in bounded memory into <stem>.ome.zarr + <stem>_nuclei.csv "
        "(+ <stem>.geojson, <stem>_nuclei.parquet)")
    slide.add_argument("--region", type=int, default=None, metavar="PX",
                       help="region edge in pixels of the chosen level (default: 2048)")
    slide.add_argument("--level", type=int, default=None,
                       help="pyramid level to segment (default: chosen by the model's pixel size and the slide's)")
    slide.add_argument("--mpp", type=float, default=None,
                       help="microns per pixel of level 0, when the file does not say (or says wrong)")
    slide.add_argument("--no-tissue-mask", action="store_true",
                       help="segment every region (default: skip regions without tissue on bright-field slides)")
    slide.add_argument("--parquet", action="store_true",
                       help="also write the nucleus table as <stem>_nuclei.parquet (needs pyarrow: "
                            "pip install 'napari-cellzoo[parquet]')")
    slide.add_argument("--scheduler", default=None, metavar="local:N|tcp://HOST:PORT",
                       help="run the regions on dask.distributed: a LocalCluster of N worker processes, or the "
                            "address of a running scheduler (default: this process)")


def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def _collect_inputs(inputs: list[str]) -> list[Path]:
    from ..data.io import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir() and path.name.lower().endswith(".zarr"):  # a zarr store is one image, not a folder
            paths.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.stem.endswith(("_instances", "_classes")))
            if not found:
                raise FileNotFoundError(f"no images found in folder {path}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    return paths


#: multi-part suffixes kept out of the output stem ("a.ome.tif" -> "a", but "slide.x.png" -> "slide.x")
COMPOUND_SUFFIXES = (".ome.tif", ".ome.tiff")


def _output_stem(path: Path) -> str:
    name = path.name
    for suffix in COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _plan_outputs(paths: list[Path], out: str | None, typed: bool, geojson: bool,
                  overwrite: bool) -> list[tuple[Path, Path, str]]:
    """(input, output folder, output stem) for every input, checked before any image is segmented.

    Two inputs that would write the same files (``slide.png`` + ``slide.tif`` into one folder) get their
    suffix in the stem instead of one silently replacing the other; results of an earlier run are only
    replaced with ``--overwrite``.
    """
    if out is not None and Path(out).expanduser().exists() and not Path(out).expanduser().is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it is created if missing)")
    planned = []
    for path in paths:
        out_dir = Path(out).expanduser() if out else path.parent
        planned.append((path, out_dir, _output_stem(path)))
    keys = [(out_dir.resolve(), stem) for _, out_dir, stem in planned]
    clashing = {key for key in keys if keys.count(key) > 1}
    planned = [(path, out_dir, f"{stem}_{path.suffix.lstrip('.').lower()}" if key in clashing else stem)
               for (path, out_dir, stem), key in zip(planned, keys)]
    if len({(d.resolve(), s) for _, d, s in planned}) < len(planned):
        raise ValueError("two inputs have the same name and suffix; give them different names or --out folders")
    if not overwrite:
        existing = [out_dir / name for _, out_dir, stem in planned
                    for name in _output_names(stem, typed, geojson) if (out_dir / name).exists()]
        if existing:
            shown = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
            raise ValueError(f"results of an earlier run exist ({shown}); pass --overwrite to replace them, "
                             "or choose another --out folder")
    return planned


def _output_names(stem: str, typed: bool, geojson: bool) -> list[str]:
    names = [f"{stem}_instances.tif"]
    if typed:
        names.append(f"{stem}_classes.tif")
    if geojson:
        names.append(f"{stem}.geojson")
    return names


def _write_stack(path: Path, array: np.ndarray) -> None:
    import tifffile

    from .._atomic import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, compression="zlib", photometric="minisblack")


def run(args) -> int:
    from .._atomic import make_output_folder
    from ..data.io import read_image, write_class_map, write_labels
    from ..infer.checks import image_problem
    from ..infer.engine import resolve_model, resolve_scale, segment_iter, segment_stack_iter
    from ..types import run_to_end

    inputs = list(args.inputs)
    model_name = args.model
    if args.sample:
        from ..data.samples import sample_image_path

        inputs.append(str(sample_image_path()))
        model_name = model_name or FLUO_MODEL
    if not inputs:
        raise ValueError("give at least one INPUT image or folder, or --sample")
    paths = _collect_inputs(inputs)
    model_name = model_name or _default_model()
    params = _parse_params(args.param)
    model = resolve_model(model_name)
    resolve_scale(model, args.scale)  # a bad --scale fails before any image is read
    typed = model.num_classes > 2
    if args.sample and args.out is None:
        args.out = "."  # never write into the installed package
    options = dict(tile=args.tile, batch_size=args.batch_size, device=args.device, tta=args.tta,
                   amp=not args.no_amp, params=params, channel=args.channel, normalize=args.normalize,
                   scale=args.scale)
    slide_mode = args.region is not None or args.scheduler is not None
    from ..slide.source import is_slide_path

    slides = [p for p in paths if slide_mode or is_slide_path(p)]
    paths = [p for p in paths if p not in slides]
    for path in slides:
        _segment_slide(model, model_name, path, args, options)
    if not paths:
        return 0
    planned = _plan_outputs(paths, args.out, typed, args.geojson, args.overwrite)
    print(f"model {model_name} ({model.family}, {len(paths)} image(s))", file=sys.stderr)
    skipped = []
    from ..infer.prepare import arrange_image

    for path, out_dir, stem in planned:
        # planes vs channels by one stated rule (an H×W×2 image is 2 channels, not 128 planes)
        image, is_stack, options["channel"], layout_note = arrange_image(read_image(path), args.channel, path.name)
        if layout_note:
            print(f"{path.name}: {layout_note}", file=sys.stderr)
        # 1×1, all-zero, all-NaN or constant images would give 0 objects without a word
        problem = None if is_stack else image_problem(image, options["channel"])
        if problem:
            print(f"{path.name}: skipped: {problem}", file=sys.stderr)
            skipped.append(path.name)
            continue
        make_output_folder(out_dir)
        if is_stack:
            results = run_to_end(segment_stack_iter(model, image, **options))
            labels = np.stack([r.labels for r in results])
            _write_stack(out_dir / f"{stem}_instances.tif",
                         labels.astype(np.uint16 if labels.max(initial=0) < 2 ** 16 else np.uint32))
            if typed:
                _write_stack(out_dir / f"{stem}_classes.tif", np.stack([r.class_map() for r in results]))
            count = sum(r.count for r in results)
            seconds = sum(r.meta["seconds"] for r in results)
            device = _device_and_precision(results[0].meta) if results else args.device
            if args.geojson:
                print(f"{path.name}: --geojson is written for 2-D images only; skipped for this stack",
                      file=sys.stderr)
        else:
            result = run_to_end(segment_iter(model, image, **options), _progress_printer(path.name))
            write_labels(out_dir / f"{stem}_instances.tif", result.labels)
            if typed:
                write_class_map(out_dir / f"{stem}_classes.tif", result.class_map())
            if args.geojson:
                from ..data.geojson import write_geojson

                write_geojson(out_dir / f"{stem}.geojson", result.labels,
                              result.class_map() if typed else None, result.class_names)
            count, seconds, device = result.count, result.meta["seconds"], _device_and_precision(result.meta)
            if result.meta.get("scale", 1.0) != 1.0:
                device += f", scale {result.meta['scale']:.2f}"
        print(f"{path.name}: {count} objects, {seconds:.2f} s, {device}")
    if skipped:
        raise ValueError(f"{len(skipped)} of {len(planned)} image(s) had nothing to segment and were skipped "
                         f"({', '.join(skipped[:3])}{' …' if len(skipped) > 3 else ''}); see the lines above")
    return 0


def _segment_slide(model, model_name: str, path: Path, args, options: dict) -> None:
    """One slide (or large image), region by region, into the output folder."""
    from ..slide import segment_slide

    out_dir = Path(args.out).expanduser() if args.out else path.parent
    name = path.name
    stem = name[: -len(".ome.zarr")] if name.lower().endswith(".ome.zarr") else _output_stem(path)
    if args.out is None and name.lower().endswith(".zarr"):
        stem += "_cellzoo"  # next to an input store: never write over (or beside with the same name as) it
    engine = {k: v for k, v in options.items() if k not in ("channel",)}
    on_event = _slide_progress(path.name)
    # workers of a cluster load the model themselves, by its zoo name or file path (shared storage)
    result = segment_slide(model_name if args.scheduler else model, path, out_dir,
                           on_event, stem=stem, level=args.level, region=args.region or 2048, mpp=args.mpp,
                           tissue=not args.no_tissue_mask, geojson=args.geojson, parquet=args.parquet,
                           overwrite=args.overwrite,
                           scheduler=args.scheduler, **engine)
    where = f", {args.scheduler}" if args.scheduler else ""
    print(f"{path.name}: {result.count} objects, {result.seconds:.2f} s, {_device_and_precision(result.meta)}{where}, "
          f"level {result.level} ({result.shape[0]}×{result.shape[1]}), {result.regions} regions"
          + (f" ({result.skipped} without tissue skipped)" if result.skipped else "") + f" → {result.store}")


def _slide_progress(name: str):
    from ..types import Message

    def on_event(event):
        if isinstance(event, Message):
            print(event.text, file=sys.stderr)
    return on_event


def _device_and_precision(meta: dict) -> str:
    """"cpu, bf16": what actually ran, so a user can tell a bf16 CPU from an fp32 one."""
    return f"{meta['device']}, {meta.get('precision', 'fp32')}"


def _progress_printer(name: str):
    """A tqdm bar over tiles on an interactive terminal; silent otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = None

    def on_event(event):
        nonlocal bar
        if getattr(event, "stage", None) != "tiles":
            return
        if bar is None or event.done == 0:  # a new pass (scale "auto" runs two)
            if bar is not None:
                bar.close()
            bar = tqdm(total=event.total, desc=name, unit="tile", leave=False)
        bar.n = event.done
        bar.refresh()
        if event.done >= event.total:
            bar.close()
    return on_event
