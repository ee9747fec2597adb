"""napari-cellzoo: published nucleus/cell instance-segmentation models, one engine for napari and the CLI.

Public API (imported lazily so ``import cellzoo`` does not load torch):
``segment``, ``load_model``, ``list_models``, ``train``, ``evaluate``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "segment": "cellzoo.infer:segment",
    "load_model": "cellzoo.zoo:load_model",
    "list_models": "cellzoo.zoo:list_models",
    "train": "cellzoo.train:train",
    "evaluate": "cellzoo.metrics:evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        module, _, attr = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'cellzoo' has no attribute {name!r}")


__all__ = list(_LAZY)
