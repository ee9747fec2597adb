"""Command line: ``cellzoo segment | train | evaluate | zoo | export | suggest``.

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
    "suggest": "Rank image patches to annotate next (representative and where the model is unsure).",
}


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows an option's default where it has a real one and its help does not already state it
    (argparse's ArgumentDefaultsHelpFormatter would print "(default: None)" on every optional value)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or "default" in text.lower()
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: {default})" if text else f"default: {default}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellzoo", description="Nucleus/cell instance segmentation models.")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (default: a one-line message, exit code 2)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"cellzoo._cli.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_DefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _error_text(exc: BaseException) -> str:
    """One line for the user; an unexpected exception type is named so a bug report can quote it."""
    if isinstance(exc, MemoryError):
        return ("out of memory: use a smaller --tile, fewer images at once, or a machine with more memory "
                "(--debug shows where)")
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (ValueError, FileNotFoundError, RuntimeError, OSError, KeyError)):
        return text
    return f"{type(exc).__name__}: {text} (unexpected; rerun with --debug and report the traceback)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the parser imports its modules
        print("cancelled", file=sys.stderr)
        return 130
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error ends in one line and exit 2, unless --debug
        if args.debug:
            raise
        print(f"cellzoo {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        if args.debug:
            raise
        print(f"cellzoo {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
