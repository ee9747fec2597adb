"""`cellzoo evaluate`: compare predicted instance maps with ground truth.

    cellzoo evaluate --gt GT --pred PRED [--gt-classes GTC --pred-classes PREDC] [--out metrics.csv]

Each PATH is a label file or a folder of them; files pair by stem, ignoring a trailing
``_instances`` / ``_classes`` on a stem. Prints the summary table and writes one CSV row per image.
"""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("--gt", required=True, metavar="PATH",
                        help="ground-truth instance map file or folder (.tif/.tiff/.png)")
    parser.add_argument("--pred", required=True, metavar="PATH",
                        help="predicted instance map file or folder; stems may end in _instances")
    parser.add_argument("--gt-classes", metavar="PATH", help="ground-truth class maps (file or folder)")
    parser.add_argument("--pred-classes", metavar="PATH",
                        help="predicted class maps (file or folder); stems may end in _classes")
    parser.add_argument("--class-names", metavar="NAMES",
                        help="comma-separated names of class ids 1..K, e.g. 'other,inflammatory,epithelial,spindle'")
    parser.add_argument("--out", metavar="CSV", help="write one row per image to this CSV file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file (without it, an existing file is an error)")
    parser.add_argument("--max-dets", type=int, default=None, metavar="N",
                        help="COCO AP: most detections kept per image (default 10000)")
    parser.add_argument("--only-paired", action="store_true",
                        help="score the ground-truth images that have a prediction and list the missing ones "
                             "(without it, a ground-truth image without prediction is an error)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    from cellzoo.metrics import DEFAULT_MAX_DETS, pair_files
    from cellzoo.metrics.evaluate import evaluate_iter
    from cellzoo.types import Progress, run_to_end

    if args.out:
        from pathlib import Path

        out = Path(args.out).expanduser()
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give the path of a CSV file to write")
        if out.exists() and not args.overwrite:
            raise ValueError(f"--out {out} exists already; pass --overwrite to replace it, or choose another file")
    pairs, notes = pair_files(args.gt, args.pred, args.gt_classes, args.pred_classes, only_paired=args.only_paired)
    class_names = None
    if args.class_names:
        class_names = ["background", *[n.strip() for n in args.class_names.split(",") if n.strip()]]
    max_dets = DEFAULT_MAX_DETS
    if args.max_dets is not None:
        if args.max_dets < 100:
            raise ValueError(f"--max-dets must be at least 100, got {args.max_dets}")
        max_dets = (1, 100, args.max_dets)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    def show(event) -> None:
        if isinstance(event, Progress) and not args.quiet:
            print(f"[{event.done}/{event.total}] {event.message}", file=sys.stderr)

    result = run_to_end(evaluate_iter(pairs, class_names=class_names, max_dets=max_dets), show)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.format_table())
    if args.out:
        path = result.to_csv(args.out)
        print(f"wrote {path} ({len(result.per_image)} rows)")
    return 0
