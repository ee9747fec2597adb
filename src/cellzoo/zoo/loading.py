"""``load_model``: registry names, user model names, ``.safetensors`` files and ``.pth`` checkpoints."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from ..models import CellModel, build_model
from .catalog import get_model_info
from .converters import ARCHITECTURE_KEYS, convert_checkpoint
from .downloads import fetch_info
from .registry import ModelInfo

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".pkl")


def _looks_like_path(value: str | os.PathLike) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return (os.sep in value or "/" in value or value.endswith(".safetensors")
            or value.lower().endswith(_CHECKPOINT_SUFFIXES) or Path(value).is_file())


def model_from_checkpoint(path: str | os.PathLike, family: str | None = None,
                          config_overrides: dict[str, Any] | None = None) -> CellModel:
    """Build our module from an authors' checkpoint (converted) and load it strictly.

    ``config_overrides`` (e.g. the registry entry's config: class names, normalisation,
    post-processing) apply to everything but the architecture read from the weights."""
    state, config = convert_checkpoint(path, family)
    family = config.pop("family")
    fixed = ARCHITECTURE_KEYS.get(family, set())
    config.update({k: v for k, v in (config_overrides or {}).items() if k not in fixed})
    model = build_model(family, config)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit {type(model).__name__} with the detected config {config}: "
            f"missing {list(result.missing_keys)[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {list(result.unexpected_keys)[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}")
    return model


def _load_file(path: Path, family: str | None, info: ModelInfo | None) -> tuple[CellModel, dict[str, Any]]:
    from .weights import MissingMetadata, load_weights, read_metadata

    if path.suffix == ".safetensors":
        try:
            read_metadata(path)
        except MissingMetadata:
            # a bare safetensors state dict (no cellzoo metadata): convert like a checkpoint
            model = model_from_checkpoint(path, family or (info.family if info else None))
            meta = info.metadata() if info else {"name": path.stem, "family": model.family}
            return model, meta
        model, meta = load_weights(path)
        if info is not None:
            meta = {**info.metadata(), **meta, "name": info.name}
        return model, meta
    overrides = {}
    if info is not None:
        overrides.update(info.config)
        overrides["class_names"] = list(info.class_names)
    model = model_from_checkpoint(path, family or (info.family if info else None), overrides or None)
    meta = info.metadata() if info else {"name": path.stem, "family": model.family}
    meta["config"] = model.config_dict()
    return model, meta


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *,
               family: str | None = None, progress: bool | Callable[[int, int], Any] = True,
               registry: str | Path | None = None) -> CellModel:
    """Load a model in eval mode with ``model.metadata`` (dict) attached, on ``device``
    ("cpu", "cuda[:N]", "mps" or "auto").

    ``name_or_path``: a registry name (downloaded on first use), a user model name, a
    ``.safetensors`` file, or an authors' ``.pth`` checkpoint (converted; give ``family``
    if it cannot be detected).
    """
    info: ModelInfo | None = None
    if _looks_like_path(name_or_path) and not _is_model_name(str(name_or_path), registry):
        from ..data.validate import regular_file

        path = regular_file(name_or_path, "model file")
        if path.suffix.lower() != ".safetensors" and not path.name.lower().endswith(_CHECKPOINT_SUFFIXES):
            raise ValueError(f"{path} is neither a model name (see `cellzoo zoo list`) nor a weights file: give a "
                             f".safetensors file or a PyTorch checkpoint ({', '.join(_CHECKPOINT_SUFFIXES)}).")
    else:
        info = get_model_info(str(name_or_path), registry)
        path = fetch_info(info, progress=progress)
    model, meta = _load_file(path, family, info)
    meta["path"] = str(path)
    model.metadata = meta
    from ..infer.device import select_device  # "auto" and clear errors for unavailable devices

    return model.to(select_device(device)[0]).eval()


def _is_model_name(value: str, registry) -> bool:
    try:
        get_model_info(value, registry)
    except ValueError:
        return False
    return True
