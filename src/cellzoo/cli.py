"""Command line: ``cellzoo segment | train | evaluate | zoo | export``.

Each sub-command lives in ``cellzoo._cli.<name>`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this module only dispatches,
so the CLI shares the engine with napari and the tests.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "segment": "Segment images with a model (default: the embedded H&E model).",
    "train": "Train or fine-tune a model on a dataset.",
    "evaluate": "Compare predicted instance maps with ground truth.",
    "zoo": "List, fetch and import models.",
    "export": "Export a dense model to TorchScript or ONNX.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellzoo", description="Nucleus/cell instance segmentation models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"cellzoo._cli.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # user-facing errors, no traceback
        print(f"cellzoo {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
