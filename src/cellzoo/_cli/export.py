"""`cellzoo export NAME --format torchscript|onnx --out PATH`: dense models for other runtimes."""
from __future__ import annotations

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("model", help="zoo or user model name, .safetensors file, or authors' .pth checkpoint")
    parser.add_argument("--format", dest="fmt", choices=("torchscript", "onnx"), required=True)
    parser.add_argument("--out", type=Path, required=True, help="output file (.pt for TorchScript, .onnx)")
    parser.add_argument("--family", default=None, help="family of a .pth checkpoint if it cannot be detected")
    parser.add_argument("--example-size", type=int, default=128,
                        help="side of the example input used for tracing (any size works afterwards)")


def run(args) -> int:
    from ..zoo.export import export_model, read_export_metadata
    from ..zoo.loading import load_model

    model = load_model(args.model, family=args.family)
    out = export_model(model, args.fmt, args.out, example_size=args.example_size)
    meta = read_export_metadata(out)
    print(f"exported {args.model} ({meta['family']}) to {out} [{args.fmt}]; input: N×C×H×W float after "
          f"preprocess, H and W multiples of {meta['size_divisor']}; outputs: "
          + ", ".join(f"{n} ({meta['activations'][n]})" for n in meta["outputs"]))
    return 0
