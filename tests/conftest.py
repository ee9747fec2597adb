"""Shared fixtures. The real datasets live in ../shared/data (or $CELLZOO_SHARED/data)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLZOO_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"

# The widgets run their workers synchronously when this is set (see cellzoo._napari._worker).
os.environ.setdefault("CELLZOO_SYNC_WORKERS", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared datasets not found at {DATA}; set CELLZOO_SHARED")
    return DATA


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    # CI machines have 2 cores; keep intra-op threads bounded so Qt stays responsive.
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("CELLZOO_TEST_THREADS", "2")))
    except ImportError:  # pragma: no cover
        pass
    yield
