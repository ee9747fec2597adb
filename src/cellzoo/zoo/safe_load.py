"""Reading ``.pth`` files without running code: ``torch.load(..., weights_only=True)`` only.

A checkpoint whose pickle names anything beyond tensors, containers and plain numbers
(e.g. ``os.system`` or ``builtins.eval`` via ``__reduce__``) is refused with a clear
message; the pickle is never executed.  NumPy scalars and dtypes are allowed because
old training scripts store metrics such as ``best_iou`` as ``np.float64`` and their
reconstruction cannot run code.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch


def _numpy_safe_globals() -> list:
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed = [scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) files cannot be inspected this way
        return []


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path)
        named = f" (it references {', '.join(names)})" if names else ""
        reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        raise ValueError(
            f"{path} carries pickled Python objects that could run code when loaded{named}, so it will "
            "not be loaded. Only checkpoints holding tensors, numbers, strings and containers are "
            "accepted. If you trust the file, re-save its tensors in a trusted Python session "
            "(torch.save(model.state_dict(), 'clean.pth')) and import that instead."
            + (f" [{reason}]" if reason else "")) from None
    except (RuntimeError, EOFError, OSError) as exc:
        if "zip" in str(exc).lower() or isinstance(exc, EOFError) or "magic" in str(exc).lower():
            raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or another "
                             f"format): {exc}") from None
        raise
