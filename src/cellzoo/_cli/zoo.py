"""`cellzoo zoo list | fetch | import`: the model zoo from the command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .._names import FAMILIES


def add_arguments(parser):
    sub = parser.add_subparsers(dest="zoo_command", required=True)
    p = sub.add_parser("list", help="List the zoo's models and your own, with status and licence.")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    p = sub.add_parser("fetch", help="Download a model's weights into the cache (embedded ones need nothing).")
    p.add_argument("name", help="model name (see `cellzoo zoo list`)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("import", help="Convert a checkpoint if needed and register it as your own model.")
    p.add_argument("file", type=Path, help="checkpoint: authors' .pth (RepSNet, FullNet) or .safetensors")
    p.add_argument("--family", choices=sorted(FAMILIES), default=None,
                   help="model family (detected from the keys when left out)")
    p.add_argument("--name", required=True, help="name to register it under (not a zoo name)")
    p.add_argument("--class-names", default=None,
                   help="comma-separated class names incl. background, e.g. background,tumour,immune")
    p.add_argument("--licence", default=None, help="licence of the weights, recorded with the model")
    p.add_argument("--training-data", default="", help="what the weights were trained on")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing user model of the same --name (without it, that is an error)")


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _metrics_text(metrics: dict) -> str:
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else "" for k, v in metrics.items()).strip() or "-"


#: what each STATUS in `cellzoo zoo list` means (every status of cellzoo.zoo.registry.STATUSES)
STATUS_LEGEND = {
    "embedded": "shipped inside the package, works offline",
    "cached": "downloaded before, in the cache",
    "downloadable": "downloaded on first use (or `cellzoo zoo fetch NAME`)",
    "user": "your own model (`cellzoo zoo import` or a fine-tune)",
    "missing": "no file and no working download link: see the notes (`--json`) for where to get it",
}


def _list(args) -> int:
    from ..zoo import list_models

    models = list_models()
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=1))
        return 0
    rows = [("NAME", "FAMILY", "CLASSES", "STATUS", "LICENCE", "METRICS")]
    for m in models:
        classes = ",".join(m.class_names[1:])
        rows.append((m.name, m.family, _short(classes, 34), m.status, _short(m.licence, 40),
                     _short(_metrics_text(m.metrics), 44)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    shown = [status for status in STATUS_LEGEND if any(m.status == status for m in models)]
    print("\nSTATUS: " + "; ".join(f"{status} = {STATUS_LEGEND[status]}" for status in shown))
    print("METRICS: as recorded in the registry (src/cellzoo/zoo/registry.json) or the weights' metadata")
    return 0


def _fetch(args) -> int:
    from ..zoo import fetch, get_model_info

    info = get_model_info(args.name)
    path = fetch(args.name, progress=not args.quiet)
    how = {"embedded": "embedded in the package", "user": "your model"}.get(info.status, "in the cache")
    print(f"{args.name}: {path} ({how})")
    return 0


def _import(args) -> int:
    from ..data.validate import regular_file
    from ..zoo import load_registry, model_from_checkpoint, read_metadata, register_model
    from ..zoo.catalog import check_new_model_name
    from ..zoo.weights import MissingMetadata, load_weights

    path = regular_file(args.file, "checkpoint")
    if args.name in load_registry():
        raise ValueError(f"{args.name!r} is a model of the zoo; choose another --name")
    check_new_model_name(args.name, overwrite=args.overwrite)  # before any conversion work
    overrides = {}
    if args.class_names:
        overrides["class_names"] = [c.strip() for c in args.class_names.split(",") if c.strip()]
    meta: dict = {}
    try:
        meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    except MissingMetadata:
        meta = {}
    if meta:
        model, meta = load_weights(path)
        if overrides:
            raise ValueError("--class-names cannot change a cellzoo model's classes; fine-tune it instead")
    else:
        model = model_from_checkpoint(path, args.family, overrides or None)
    meta = {k: v for k, v in meta.items() if k not in ("config", "name")}
    meta.update({"family": model.family, "class_names": model.class_names, "source": meta.get("source") or
                 f"imported from {path.name}", "imported_from": str(path.resolve())})
    meta["licence"] = args.licence or meta.get("licence") or "unknown (imported checkpoint: check the source's terms)"
    if args.training_data:
        meta["training_data"] = args.training_data
    out = register_model(model, args.name, meta, overwrite=args.overwrite)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"imported {path.name} as {args.name!r} ({model.family}, {n_params / 1e6:.1f} M parameters, "
          f"classes: {', '.join(model.class_names[1:])}) -> {out}")
    return 0


def run(args) -> int:
    commands = {"list": _list, "fetch": _fetch, "import": _import}
    try:
        return commands[args.zoo_command](args)
    except BrokenPipeError:  # `cellzoo zoo list | head`
        sys.stderr.close()
        return 0
