"""The models a user can pick: registry entries plus the user's own models.

User models (imported checkpoints, fine-tuned models) are ``<name>.safetensors``
files with cellzoo metadata in :func:`user_model_dir`.  They appear in
:func:`list_models` with status ``"user"``, so the CLI and the napari combo offer them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .downloads import cached_path, download_urls, embedded_path, fetch_info
from .locations import user_model_dir
from .registry import NAME_PATTERN, ModelInfo, load_registry

DEFAULT_MODEL = "cellzoo-he"
USER_SUFFIX = ".safetensors"


def default_model_name() -> str:
    """The model the Segment widget and ``cellzoo segment`` use when none is given."""
    return DEFAULT_MODEL


def _with_status(info: ModelInfo) -> ModelInfo:
    if info.embedded and (embedded_path(info).is_file() or not info.sha256):
        path = embedded_path(info)
        info.status, info.path = ("embedded", path) if path.is_file() else ("missing", None)
        if info.path is not None and not info.metrics:
            # the training script records measured metrics in the weights' own metadata
            from .weights import read_metadata

            try:
                info.metrics = dict(read_metadata(path).get("metrics") or {})
            except ValueError:
                pass
        return info
    path = cached_path(info)
    if path.is_file():
        info.status, info.path = "cached", path
    elif download_urls(info):
        info.status, info.path = "downloadable", None
    else:
        info.status, info.path = "missing", None
    return info


def _user_info(path: Path) -> ModelInfo | None:
    from .weights import read_metadata

    try:
        meta = read_metadata(path)
    except Exception:  # not ours / damaged: not offered (load_model(path) explains why)
        return None
    fields = ModelInfo.__dataclass_fields__
    info = ModelInfo(name=path.stem, family=str(meta.get("family", "")))
    for key, value in meta.items():
        if key in fields and key not in ("name", "status", "path", "embedded", "urls", "sha256"):
            setattr(info, key, value)
    info.name = path.stem
    info.status, info.path, info.embedded = "user", path, False
    info.filename = path.name
    info.size = path.stat().st_size
    return info


def user_models() -> dict[str, ModelInfo]:
    folder = user_model_dir()
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob(f"*{USER_SUFFIX}")):
        info = _user_info(path)
        if info is not None:
            out[info.name] = info
    return out


def list_models(registry: str | Path | None = None) -> list[ModelInfo]:
    """Registry models (in registry order) followed by the user's models, each with its status."""
    zoo = [_with_status(info) for info in load_registry(registry).values()]
    names = {info.name for info in zoo}
    return zoo + [info for name, info in user_models().items() if name not in names]


def get_model_info(name: str, registry: str | Path | None = None) -> ModelInfo:
    zoo = load_registry(registry)
    if name in zoo:
        return _with_status(zoo[name])
    users = user_models()
    if name in users:
        return users[name]
    choices = sorted(zoo) + sorted(users)
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(choices) or 'none'} "
                     "(`cellzoo zoo list` shows them; `cellzoo zoo import` adds your own)")


def model_status(name: str, registry: str | Path | None = None) -> str:
    """"embedded" | "cached" | "downloadable" | "user" | "missing"."""
    return get_model_info(name, registry).status


def fetch(name: str, progress: bool | Callable[[int, int], Any] = True,
          registry: str | Path | None = None) -> Path:
    """Local path of model ``name``'s weight file, downloading it into the cache if needed.

    ``progress``: True for a terminal progress bar, False for none, or a callable
    ``(done_bytes, total_bytes)`` (used by napari).
    """
    return fetch_info(get_model_info(name, registry), progress=progress)


def check_new_model_name(name: str, registry: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """The path a user model ``name`` would be saved to, after checking the name: allowed characters, not
    a zoo name, and (without ``overwrite``) not an existing user model."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} is not allowed: use 1-80 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if name in load_registry(registry):
        raise ValueError(f"{name!r} is a model of the zoo and cannot be replaced; "
                         f"save your model under a new name, e.g. {name}-finetuned")
    path = user_model_dir() / f"{name}{USER_SUFFIX}"
    if path.exists() and not overwrite:
        raise ValueError(f"a user model named {name!r} exists already ({path}); pass --overwrite to replace it, "
                         f"or choose another --name")
    return path


def register_model(model, name: str, metadata: dict[str, Any] | None = None,
                   registry: str | Path | None = None, *, overwrite: bool = True) -> Path:
    """Save ``model`` (+ metadata) as a user model ``name``; returns the .safetensors path.

    Zoo names are refused (fine-tuned models get new names); an existing user model of
    the same name is replaced atomically, or refused with ``overwrite=False``.
    """
    from .weights import save_weights

    check_new_model_name(name, registry, overwrite=overwrite)
    meta = dict(metadata or {})
    meta["name"] = name
    meta.setdefault("licence", "unknown (user model)")
    return save_weights(model, user_model_dir() / f"{name}{USER_SUFFIX}", meta)
