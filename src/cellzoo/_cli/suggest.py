"""`cellzoo suggest IMAGE_OR_FOLDER... [--model NAME|none] [--n 6] [--patch 256] [--out suggestions.csv]
[--geojson FILE]`: rank patches to annotate next (see cellzoo.annotate.suggest)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .._names import DEVICE_CHOICES


def add_arguments(parser):
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="unlabelled image files or folders of images; the patches of all of them are ranked together")
    parser.add_argument("--model", "-m", default=None,
                        help="model whose features and disagreements rank the patches: a name from `cellzoo zoo "
                             "list` or a .safetensors file (default: the default H&E model); 'none': colour/"
                             "texture features only, no inconsistency: the estimated nuclear share of each patch takes its place")
    parser.add_argument("--n", type=int, default=6, help="how many patches to suggest (default: 6)")
    parser.add_argument("--patch", type=int, default=256, help="patch edge in pixels (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0; same seed, same ranking)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to run (default: auto)")
    parser.add_argument("--out", "-o", default="suggestions.csv",
                        help="ranked table, .csv (default: suggestions.csv) or .geojson (rectangles for QuPath)")
    parser.add_argument("--geojson", default=None, metavar="FILE",
                        help="also write the boxes as GeoJSON rectangles (QuPath: File > Import objects); with "
                             "several images, one file per image: FILE's stem + _<image stem>.geojson")


def _write_geojson(path: Path, patches, paths: list[Path]) -> list[Path]:
    from .._atomic import atomic_write_text
    from ..annotate.suggest import suggestions_geojson

    written = []
    for index, image_path in enumerate(paths):
        mine = [p for p in patches if p.image_index == index]
        if len(paths) > 1 and not mine:
            continue
        target = path if len(paths) == 1 else path.with_name(f"{path.stem}_{image_path.stem}.geojson")
        atomic_write_text(target, json.dumps(suggestions_geojson(mine), indent=1))
        written.append(target)
    return written


def run(args) -> int:
    from ..annotate.suggest import suggest_iter, suggestion_rows, write_suggestions_csv
    from ..data.io import read_image
    from ..types import Message, Progress, run_to_end
    from .segment import _collect_inputs, _default_model

    if args.n < 1:
        raise ValueError(f"--n must be at least 1; got {args.n}")
    if args.patch < 16:
        raise ValueError(f"--patch must be at least 16 pixels; got {args.patch}")
    out = Path(args.out).expanduser()
    if out.suffix.lower() not in (".csv", ".geojson", ".json"):
        raise ValueError(f"--out {out} must end in .csv or .geojson")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'suggestions.csv'}")
    paths = _collect_inputs(args.inputs)
    images = [read_image(path) for path in paths]
    model = None
    model_name = args.model or _default_model()
    if model_name.lower() != "none":
        from ..infer.engine import resolve_model

        model = resolve_model(model_name)
    print(f"ranking {args.patch}² patches of {len(paths)} image(s) with "
          f"{model_name if model is not None else 'colour/texture features (no model)'}", file=sys.stderr)

    def report(event):
        if isinstance(event, Progress):
            print(f"  {event.done}/{event.total} {event.message}", file=sys.stderr)
        elif isinstance(event, Message):
            print(f"  {event.text}", file=sys.stderr)

    patches = run_to_end(suggest_iter(images, model, n=args.n, patch=args.patch, device=args.device,
                                      seed=args.seed), report)
    names = [str(path) for path in paths]
    rows = suggestion_rows(patches, names)
    header = (f"{'rank':>4} {'y':>6} {'x':>6} {'size':>5} {'score':>7} {'repr':>6} {'incons':>6} {'nuclei':>6} "
              f"{'cl':>3}  image")
    print(header)
    for row in rows:
        print(f"{row['rank']:>4} {row['y']:>6} {row['x']:>6} {row['size']:>5} {row['score']:>7.4f} "
              f"{row['representativeness']:>6.3f} {row['inconsistency']:>6.3f} {row['nuclear_content']:>6.3f} "
              f"{row['cluster']:>3}  {row['image']}")
    written = []
    if out.suffix.lower() == ".csv":
        written.append(write_suggestions_csv(out, patches, names))
    else:
        written.extend(_write_geojson(out, patches, paths))
    if args.geojson:
        written.extend(_write_geojson(Path(args.geojson).expanduser(), patches, paths))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
