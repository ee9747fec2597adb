"""Model zoo: registry, fetching (pooch), embedded weights, user models, converters, export.

Public API::

    list_models() -> list[ModelInfo]          # registry + user models, with status
    model_status(name) -> "embedded" | "cached" | "downloadable" | "user" | "missing"
    fetch(name, progress=True) -> Path        # embedded: no network; else pooch into the cache
    load_model(name_or_path, device="cpu")    # -> CellModel with .metadata
    user_model_dir(), register_model(model, name, metadata), default_model_name()
    convert_checkpoint(path_or_state, family=None) -> (state_dict, config)
    export_model(name_or_model, fmt, out)     # "torchscript" | "onnx", dense families
"""
from .catalog import default_model_name, fetch, get_model_info, list_models, model_status, register_model, user_models
from .converters import convert_checkpoint, detect_family, unwrap_state_dict
from .downloads import FetchError, GoogleDriveDownloader, cache_dir
from .loading import load_model, model_from_checkpoint
from .locations import user_model_dir
from .registry import STATUSES, ModelInfo, load_registry
from .safe_load import safe_torch_load
from .weights import load_weights, read_metadata, save_weights


def export_model(name_or_model, fmt, out, **kwargs):
    """Export a dense model to TorchScript or ONNX (see :mod:`cellzoo.zoo.export`)."""
    from .export import export_model as _export

    return _export(name_or_model, fmt, out, **kwargs)


__all__ = [
    "FetchError", "GoogleDriveDownloader", "ModelInfo", "STATUSES", "cache_dir", "convert_checkpoint",
    "default_model_name", "detect_family", "export_model", "fetch", "get_model_info", "list_models",
    "load_model", "load_registry", "load_weights", "model_from_checkpoint", "model_status", "read_metadata",
    "register_model", "safe_torch_load", "save_weights", "unwrap_state_dict", "user_model_dir", "user_models",
]
