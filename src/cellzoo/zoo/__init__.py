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
import importlib

# Imported lazily (PEP 562): the CLI's parser and `cellzoo zoo list` read the catalogue without torch,
# which the converters, loaders and weights modules import.
_LAZY = {
    "catalog": ("default_model_name", "fetch", "get_model_info", "list_models", "model_status", "register_model",
                "user_models"),
    "converters": ("convert_checkpoint", "detect_family", "unwrap_state_dict"),
    "downloads": ("FetchError", "GoogleDriveDownloader", "cache_dir"),
    "loading": ("load_model", "model_from_checkpoint"),
    "locations": ("user_model_dir",),
    "registry": ("STATUSES", "ModelInfo", "load_registry"),
    "safe_load": ("safe_torch_load",),
    "weights": ("load_weights", "read_metadata", "save_weights"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
