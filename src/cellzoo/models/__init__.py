"""Model families. Import lazily so that ``import cellzoo`` stays light."""
from __future__ import annotations

import importlib

from .._names import FAMILIES  # family name -> "module:Class"
from .base import CellModel


def family_class(family: str) -> type[CellModel]:
    try:
        target = FAMILIES[family.lower()]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(family: str, config: dict | None = None) -> CellModel:
    """Build a family's model from a config dict (missing fields take the family's defaults)."""
    cls = family_class(family)
    return cls.from_config(config or {})


__all__ = ["CellModel", "FAMILIES", "family_class", "build_model"]
