"""Where zoo files live: the download cache, the user's model folder, the embedded weights.

Each can be moved with an environment variable so that tests, clusters and
read-only installs can point them elsewhere:

* ``CELLZOO_CACHE``  - downloaded checkpoints (default ``pooch.os_cache("cellzoo")``)
* ``CELLZOO_MODELS`` - models the user imported or fine-tuned (default: the platform's
  user data folder, e.g. ``~/.local/share/cellzoo/models`` on Linux)
* ``CELLZOO_MIRROR`` - base URL that replaces every registry URL (``<mirror>/<filename>``)
* ``CELLZOO_REGISTRY`` - a registry JSON file to use instead of the packaged one
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CELLZOO_CACHE"
MODELS_ENV = "CELLZOO_MODELS"
MIRROR_ENV = "CELLZOO_MIRROR"
REGISTRY_ENV = "CELLZOO_REGISTRY"

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
PACKAGED_REGISTRY = Path(__file__).resolve().parent / "registry.json"


def cache_dir() -> Path:
    """Folder that holds downloaded checkpoints (not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("cellzoo"))


def user_model_dir() -> Path:
    """Folder of the user's own models (imported or fine-tuned); created on first use."""
    env = os.environ.get(MODELS_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs  # a dependency of pooch

        path = Path(platformdirs.user_data_dir("cellzoo", appauthor=False)) / "models"
    return path


def mirror_url() -> str | None:
    env = os.environ.get(MIRROR_ENV, "").strip()
    return env.rstrip("/") if env else None


def registry_path() -> Path:
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else PACKAGED_REGISTRY
