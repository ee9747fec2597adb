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


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata() or {}
    if METADATA_KEY not in header:
        raise ValueError(f"{path} is a safetensors file without cellzoo metadata; "
                         "import it with `cellzoo zoo import FILE --family F --name N`.")
    return json.loads(header[METADATA_KEY])


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CellModel, dict[str, Any]]:
    """Rebuild the model described by the file's metadata and load its tensors strictly."""
    meta = read_metadata(path)
    model = build_model(meta["family"], meta.get("config", {}))
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        for key in fh.keys():
            state[key] = fh.get_tensor(key)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, meta
