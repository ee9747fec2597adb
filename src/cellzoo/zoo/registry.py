"""The model registry: a JSON file in the package (``zoo/registry.json``), validated on load.

Each entry describes one published model: family and config, class names and
colours, input normalisation, pixel size, where to get the weights (URLs, sha256,
size), licence and training data, measured metrics, and whether the weights are
embedded in the package.  ``sha256: null`` means "recorded at first download"
(see :mod:`cellzoo.zoo.fetch`).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._names import FAMILIES
from .locations import registry_path

#: every status a model can have (see :func:`cellzoo.zoo.model_status`)
STATUSES = ("embedded", "cached", "downloadable", "user", "missing")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ModelInfo:
    """Everything the zoo knows about one model (registry entry or user model)."""

    name: str
    family: str
    config: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=lambda: ["background", "nucleus"])
    class_colors: list[str] = field(default_factory=list)
    normalization: dict[str, Any] = field(default_factory=dict)
    pixel_size_um: float | None = None
    urls: list[str] = field(default_factory=list)
    sha256: str | None = None
    size: int | None = None
    licence: str = ""
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    embedded: bool = False
    source: str = ""
    status: str = "missing"
    path: Path | None = None
    #: file name in the cache (downloads) or in the package (embedded)
    filename: str = ""
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = None if self.path is None else str(self.path)
        return out

    def metadata(self) -> dict[str, Any]:
        """The metadata dict attached to loaded models and written next to their weights."""
        keys = ("name", "family", "class_names", "class_colors", "normalization", "pixel_size_um",
                "licence", "training_data", "metrics", "source", "notes")
        return {k: getattr(self, k) for k in keys}


# ----------------------------------------------------------------------------- validation
def _fail(where: str, field_name: str, problem: str) -> None:
    raise ValueError(f"{where}: field {field_name!r} {problem}")


def _check_entry(entry: Any, where: str) -> ModelInfo:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a JSON object, got {type(entry).__name__}")
    required = {"name": str, "family": str, "class_names": list, "licence": str, "embedded": bool}
    for key, typ in required.items():
        if key not in entry:
            _fail(where, key, "is missing")
        if not isinstance(entry[key], typ):
            _fail(where, key, f"must be a {typ.__name__}, got {type(entry[key]).__name__}")
    known = set(ModelInfo.__dataclass_fields__) - {"status", "path"}
    unknown = sorted(set(entry) - known)
    if unknown:
        _fail(where, unknown[0], f"is not a registry field (allowed: {', '.join(sorted(known))})")
    name = entry["name"]
    where = f"{where} ({name!r})"
    if not NAME_PATTERN.match(name):
        _fail(where, "name", "must be 1-80 letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    if entry["family"] not in FAMILIES:
        _fail(where, "family", f"must be one of {sorted(FAMILIES)}, got {entry['family']!r}")
    names = entry["class_names"]
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        _fail(where, "class_names", "must list at least two non-empty names")
    if names[0] != "background":
        _fail(where, "class_names", f"must start with 'background', got {names[0]!r}")
    colors = entry.get("class_colors", [])
    if not isinstance(colors, list) or not all(isinstance(c, str) and _HEX_COLOR.match(c) for c in colors):
        _fail(where, "class_colors", "must be a list of '#rrggbb' strings")
    if colors and len(colors) != len(names):
        _fail(where, "class_colors", f"has {len(colors)} colours for {len(names)} class names")
    for key in ("config", "normalization", "metrics"):
        if not isinstance(entry.get(key, {}), dict):
            _fail(where, key, "must be a JSON object")
    for key in ("training_data", "source", "notes", "filename"):
        if not isinstance(entry.get(key, ""), str):
            _fail(where, key, "must be a string")
    urls = entry.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) and re.match(r"^https?://", u) for u in urls):
        _fail(where, "urls", "must be a list of http(s) URLs")
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
        _fail(where, "sha256", "must be 64 lower-case hex digits or null (recorded at first download)")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        _fail(where, "size", "must be a positive integer (bytes) or null")
    px = entry.get("pixel_size_um")
    if px is not None and (not isinstance(px, (int, float)) or isinstance(px, bool) or px <= 0):
        _fail(where, "pixel_size_um", "must be a positive number or null")
    if not entry["licence"].strip():
        _fail(where, "licence", "must not be empty")
    info = ModelInfo(**{k: v for k, v in entry.items()})
    if not info.filename:
        info.filename = f"{name}.safetensors" if info.embedded else ""
    if not info.embedded and not info.filename:
        _fail(where, "filename", "is required for models that are downloaded")
    if "/" in info.filename or "\\" in info.filename or info.filename.startswith("."):
        _fail(where, "filename", "must be a plain file name")
    return info


def load_registry(path: str | Path | None = None) -> dict[str, ModelInfo]:
    """Read and validate a registry file (default: ``$CELLZOO_REGISTRY`` or the packaged one).

    Returns name -> :class:`ModelInfo` (status not yet filled in).
    """
    path = Path(path) if path is not None else registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"model registry {path} does not exist; unset CELLZOO_REGISTRY "
                                "or point it to a registry JSON file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"model registry {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError(f"model registry {path} must be a JSON object with a 'models' list")
    models: dict[str, ModelInfo] = {}
    for i, entry in enumerate(data["models"]):
        info = _check_entry(entry, f"model registry {path}, entry {i}")
        if info.name in models:
            raise ValueError(f"model registry {path}, entry {i}: name {info.name!r} is used twice")
        models[info.name] = info
    return models
