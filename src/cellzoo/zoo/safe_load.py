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


#: a checkpoint's zip members may not expand beyond this many times the file's size (zip bombs)
MAX_EXPANSION = 50


def check_checkpoint_file(path: Path) -> None:
    """Refuse what is not a PyTorch checkpoint before torch reads it: torch.save writes a zip archive
    (or, before PyTorch 1.6, a pickle starting with protocol byte 0x80). A zip whose members declare far
    more bytes than the file holds is refused before anything is expanded."""
    import zipfile

    from ..data.validate import max_bytes

    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as archive:
                declared = sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable PyTorch checkpoint: its zip archive is damaged or "
                             f"truncated ({exc}).") from None
        size = path.stat().st_size
        if declared > max(MAX_EXPANSION * size, 1 << 20) or declared > max_bytes():
            raise ValueError(f"{path} is refused: its zip members would expand to {declared:,} bytes from a "
                             f"{size:,}-byte file, which no real checkpoint does (a zip bomb?).")
        return
    if head[:1] == b"\x80":  # legacy pickle-based torch.save
        return
    kind = ("a PNG image" if head.startswith(b"\x89PNG") else "a JPEG image" if head.startswith(b"\xff\xd8")
            else "an empty file" if not head else "text" if _is_text(path) else "of an unknown format")
    raise ValueError(f"{path} is not a PyTorch checkpoint (the file is {kind}); give the .pth/.pt file "
                     f"written by torch.save, or a .safetensors file.")


def _is_text(path: Path) -> bool:
    with open(path, "rb") as fh:
        sample = fh.read(4096)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in sample


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors."""
    from ..data.validate import regular_file

    path = regular_file(path, "checkpoint")
    check_checkpoint_file(path)
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
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or another "
                         f"format): {str(exc)[:300]}") from None
