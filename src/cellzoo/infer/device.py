"""Device choice and mixed precision for inference and training."""
from __future__ import annotations

import contextlib
import functools

import torch

from .._names import DEVICE_CHOICES


def select_device(name: str | torch.device | None = "auto") -> tuple[torch.device, str]:
    """Resolve ``"auto" | "cpu" | "cuda[:N]" | "mps"`` to a torch device and a human-readable name.

    ``auto`` prefers CUDA, then Apple MPS, then the CPU. Asking for a device that is not
    available is an error rather than a silent fallback, so the reported device is the one used.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            name = "cpu"
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if base == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA GPU is available to PyTorch; "
                             "use --device cpu or auto")
        device = torch.device(name)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return device, f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if base == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' was requested but Apple MPS is not available; use cpu or auto")
        return torch.device("mps"), "mps"
    return torch.device("cpu"), "cpu"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old torch / exotic builds
        return False


def amp_dtype(device: torch.device, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype for ``device`` or ``None`` for full fp32.

    ``amp`` may be True (bf16 where the hardware supports it, else fp16 on CUDA; none on CPU
    without bf16 support or on MPS), False, or an explicit ``"bf16"`` / ``"fp16"``.
    """
    if amp is False or amp is None or amp == "fp32":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp is not True:
        raise ValueError(f"amp must be True, False, 'bf16', 'fp16' or 'fp32'; got {amp!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
