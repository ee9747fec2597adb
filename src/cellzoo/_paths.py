"""Where the shared datasets live (``../shared`` next to the repository, or ``$CELLZOO_SHARED``)."""
from __future__ import annotations

import os
from pathlib import Path


def shared_root() -> Path:
    env = os.environ.get("CELLZOO_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared"


def shared_data() -> Path:
    return shared_root() / "data"
