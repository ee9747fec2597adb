"""Export dense models (RepSNet, FullNet) to TorchScript or ONNX.

The exported graph takes the family's *preprocessed* batch (N×C×H×W float, what
``model.preprocess`` gives; RepSNet: RGB 0-255, FullNet: mean/std-normalised) and returns the raw
maps as a tuple in the order of ``metadata["outputs"]`` (activate them per ``metadata["activations"]``).
RepSNet is exported in its re-parameterised deploy form (one 3×3 conv per unit).
H and W must be multiples of ``metadata["size_divisor"]``.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_path
from ..models import CellModel

FORMATS = ("torchscript", "onnx")


class _TupleOutputs(nn.Module):
    """Dict outputs -> fixed-order tuple (tracing and ONNX need a flat output list)."""

    def __init__(self, model: CellModel, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        return tuple(out[name] for name in self.names)


def _prepare(name_or_model: str | os.PathLike | CellModel) -> CellModel:
    if isinstance(name_or_model, CellModel):
        model = copy.deepcopy(name_or_model)
        model.metadata = dict(getattr(name_or_model, "metadata", {}) or {})
    else:
        from .loading import load_model

        model = load_model(name_or_model)
    if model.kind != "dense":
        raise ValueError(f"{model.family} is a detection model; export supports the dense families "
                         "(repsnet, fullnet) only - detection models run through `cellzoo segment`")
    model = model.cpu().float().eval()
    if hasattr(model, "reparameterize") and not getattr(model.config, "deploy", True):
        model.reparameterize()
    return model


def export_metadata(model: CellModel, names: list[str], example_size: int) -> dict[str, Any]:
    meta = dict(getattr(model, "metadata", {}) or {})
    meta.pop("path", None)
    return {
        **{k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))},
        "family": model.family,
        "config": model.config_dict(),
        "class_names": model.class_names,
        "outputs": names,
        "activations": {k: model.dense_maps.get(k, "identity") for k in names},
        "input": "N x C x H x W float32 after the family's preprocess (see cellzoo.models)",
        "size_divisor": model.size_divisor,
        "example_size": example_size,
    }


def export_model(name_or_model: str | os.PathLike | CellModel, fmt: str, out: str | os.PathLike, *,
                 example_size: int = 128, opset: int = 18) -> Path:
    """Write ``out`` (atomically) and return it. ``fmt``: "torchscript" or "onnx"."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    model = _prepare(name_or_model)
    divisor = max(1, int(model.size_divisor))
    size = max(example_size, divisor)
    size += (-size) % divisor
    channels = getattr(model.config, "in_channels", 3)
    example = torch.rand(1, channels, size, size) * 255
    with torch.no_grad():
        names = list(model(example).keys())
    wrapper = _TupleOutputs(model, names).eval()
    meta = export_metadata(model, names, size)
    out = Path(out)
    with warnings.catch_warnings():
        # tracing warns about the model's Python-level shape check and torch's own deprecations
        # of jit/legacy ONNX; the tests compare the exported maps with eager PyTorch instead
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _write(wrapper, example, names, meta, fmt, out, opset)


def _write(wrapper, example, names, meta, fmt, out: Path, opset: int) -> Path:
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
        with atomic_path(out) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={"cellzoo.json": json.dumps(meta)})
        return out
    try:
        import onnx
    except ImportError:
        raise ValueError("ONNX export needs the 'onnx' and 'onnxscript' packages: "
                         "pip install onnx onnxscript (and onnxruntime to run the result)") from None
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}}
    with atomic_path(out) as tmp:
        with torch.no_grad():
            torch.onnx.export(wrapper, (example,), str(tmp), input_names=["image"], output_names=names,
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "cellzoo", json.dumps(meta)
        onnx.save(proto, str(tmp))
    return out


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata written next to an exported model."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["cellzoo"])
    files = {"cellzoo.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        torch.jit.load(str(path), _extra_files=files, map_location="cpu")
    return json.loads(files["cellzoo.json"])
