"""Fixtures for the zoo tests (helpers in zoo_helpers.py)."""
from __future__ import annotations

import pytest

from cellzoo.zoo import save_weights
from zoo_helpers import LoopbackServer, tiny_model


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = LoopbackServer(root)
    yield srv
    srv.stop()


@pytest.fixture
def zoo_env(tmp_path, monkeypatch):
    """Cache, user model folder and registry in tmp dirs; no mirror."""
    cache = tmp_path / "cache"
    models = tmp_path / "models"
    monkeypatch.setenv("CELLZOO_CACHE", str(cache))
    monkeypatch.setenv("CELLZOO_MODELS", str(models))
    monkeypatch.delenv("CELLZOO_MIRROR", raising=False)
    monkeypatch.delenv("CELLZOO_REGISTRY", raising=False)
    return {"cache": cache, "models": models, "tmp": tmp_path}


@pytest.fixture
def tiny_weights(tmp_path):
    """A real small RepSNet saved as cellzoo safetensors; returns (path, sha256, model)."""
    import hashlib

    model = tiny_model()
    path = save_weights(model, tmp_path / "tiny-src.safetensors", {"licence": "CC0-1.0 (test)"})
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), model
