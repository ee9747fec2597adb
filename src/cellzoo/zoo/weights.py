"""Our own weight format: safetensors + a JSON metadata block.

The metadata (stored under the safetensors header key ``"cellzoo"``) carries
everything needed to rebuild and use the model: family, config, class names and
colours, input normalisation, pixel size, training data, licence, metrics.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .._atomic import atomic_path
from ..models import CellModel, build_model

METADATA_KEY = "cellzoo"


def save_weights(model: CellModel, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict and metadata atomically to ``path`` (.safetensors)."""
    meta = dict(metadata or {})
    meta.setdefault("family", model.family)
    meta["config"] = model.config_dict()
    meta.setdefault("class_names", model.class_names)
    # safetensors refuses shared storage; clone so tied/aliased tensors are saved separately
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    return path


class MissingMetadata(ValueError):
    """A well-formed safetensors file without cellzoo metadata (a bare state dict, to be converted)."""


#: bytes per element of the safetensors dtypes
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                      "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
#: the safetensors library refuses headers above 100 MB; checked here before reading them
MAX_HEADER_BYTES = 100_000_000


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """``(tensors {name: {dtype, shape, data_offsets}}, string metadata)`` of a safetensors file, every
    field checked against the file's real size before any tensor is read: an empty or truncated file, a
    header length beyond the file, a header that is not JSON, unknown dtypes and offsets outside the
    data or disagreeing with the shape are clear errors naming the file."""
    from ..data.validate import check_array_size, regular_file

    path = regular_file(path, "weights file")
    size = path.stat().st_size
    name = path.name
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{name} is not a safetensors file: it is {'empty' if size == 0 else f'{size} bytes'} "
                             f"(truncated download or copy?).")
        header_length = int.from_bytes(prefix, "little")
        if header_length > MAX_HEADER_BYTES or 8 + header_length > size:
            raise ValueError(f"{name} is not a readable safetensors file: its header claims {header_length:,} bytes "
                             f"but the file has {size:,} (truncated, or another format).")
        raw = fh.read(header_length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"{name} is not a readable safetensors file: its header is not JSON "
                         f"(damaged, or another format).") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name}: the safetensors header must be a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{name}: the safetensors '__metadata__' must map names to strings.")
    data_bytes = size - 8 - header_length
    total = 0
    for key, entry in header.items():
        where = f"{name}: tensor {key!r}"
        if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
            dtype = entry.get("dtype") if isinstance(entry, dict) else entry
            raise ValueError(f"{where} has no known dtype ({str(dtype)[:40]!r}).")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"{where} has an invalid shape {str(shape)[:60]}.")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(n, int) for n in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise ValueError(f"{where}: its data offsets {str(offsets)[:60]} lie outside the file's "
                             f"{data_bytes:,} data bytes (truncated or damaged file).")
        nbytes = check_array_size(shape, SAFETENSORS_DTYPES[entry["dtype"]], where)
        if offsets[1] - offsets[0] != nbytes:
            raise ValueError(f"{where}: shape {shape} of {entry['dtype']} needs {nbytes:,} bytes but its offsets "
                             f"span {offsets[1] - offsets[0]:,} (damaged file).")
        total += nbytes
    return header, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The cellzoo metadata of a weights file, checked: a JSON object whose ``family`` is a known family
    name and whose ``config`` is an object. Raises :class:`MissingMetadata` for a safetensors file
    without it (a bare state dict) and ValueError for damaged files or metadata."""
    from .._names import FAMILIES

    _tensors, header = read_safetensors_header(path)
    name = Path(path).name
    if METADATA_KEY not in header:
        raise MissingMetadata(f"{path} is a safetensors file without cellzoo metadata; "
                              "import it with `cellzoo zoo import FILE --family F --name N`.")
    try:
        meta = json.loads(header[METADATA_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{name}: its cellzoo metadata is not valid JSON ({exc}); the file is damaged.") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: its cellzoo metadata must be a JSON object, found {type(meta).__name__}.")
    family = meta.get("family")
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"{name}: its metadata names no known model family (family={family!r}; known: "
                         f"{', '.join(sorted(FAMILIES))}).")
    if not isinstance(meta.get("config", {}), dict):
        raise ValueError(f"{name}: its metadata 'config' must be a JSON object.")
    return meta


def _expected_state(path: Path, family: str, config: dict) -> dict[str, torch.Tensor]:
    """The state dict the metadata's model has, built without memory (meta device), so a config with huge
    sizes is caught by comparing it with the file before anything real is allocated."""
    try:
        with torch.device("meta"):
            return build_model(family, config).state_dict()
    except (ValueError, TypeError, KeyError, RuntimeError, OverflowError, IndexError) as exc:
        raise ValueError(f"{path.name}: its metadata does not describe a valid {family} model ({exc}).") from None


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CellModel, dict[str, Any]]:
    """Rebuild the model described by the file's metadata and load its tensors strictly.

    Before the model is built its shapes are compared with the file's header; after loading, floating
    parameters must be floating tensors holding finite numbers (int64 or NaN weights would load and
    segment nothing)."""
    path = Path(path)
    meta = read_metadata(path)
    tensors, _ = read_safetensors_header(path)
    expected = _expected_state(path, meta["family"], meta.get("config", {}))
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tensors[k]['shape']} (model: {list(expected[k].shape)})" for k in expected
             if k in tensors and list(expected[k].shape) != tensors[k]["shape"]]
    if missing or unexpected or wrong:
        raise ValueError(f"{path.name} does not match the {meta['family']} model its metadata describes: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {wrong[:3]}.")
    model = build_model(meta["family"], meta.get("config", {}))
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        for key in fh.keys():
            state[key] = fh.get_tensor(key)
    check_state_values(state, model.state_dict(), path.name)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, meta


def check_state_values(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: str) -> None:
    """Floating entries of ``reference`` need floating, finite tensors in ``state``."""
    for key, target in reference.items():
        tensor = state.get(key)
        if tensor is None or not target.is_floating_point():
            continue
        if not tensor.is_floating_point():
            raise ValueError(f"{source}: weight {key!r} is stored as {tensor.dtype}, not as floating point; "
                             f"the file was not written from a trained model.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{source}: weight {key!r} holds NaN or infinite values; the training that wrote it "
                             f"diverged. Use an earlier checkpoint or retrain with a lower learning rate.")
