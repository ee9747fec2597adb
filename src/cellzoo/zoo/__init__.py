"""Model zoo: registry, fetching, embedded weights, converters (see zoo/registry.py etc.)."""
from .weights import load_weights, read_metadata, save_weights

__all__ = ["load_weights", "read_metadata", "save_weights"]
