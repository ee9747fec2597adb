"""The checks every reader shares, so a bad input fails the same clear way wherever it enters.

* :func:`regular_file`: the path exists and is a plain file (a folder, FIFO or device is refused before
  it is opened: reading a FIFO named ``x.tif`` would wait forever).
* :func:`check_image_size` / :func:`check_array_size`: sizes are bounded *before* anything is allocated,
  from what a file declares (TIFF pages, a ``.npy`` header, a COCO image entry, the extent of polygon
  coordinates, a safetensors header). The limits are generous and can be raised:
  ``CELLZOO_MAX_PIXELS`` (pixels of one 2-D plane, default 2**30 ≈ 32768²) and ``CELLZOO_MAX_BYTES``
  (bytes of one decoded array, default 16 GiB).
* :func:`finite_number`: a parameter given as a number or its text is a finite number in range.
* :func:`finite_coordinates`: polygon vertices are finite numbers.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Iterable

import numpy as np

MAX_PIXELS_ENV = "CELLZOO_MAX_PIXELS"
MAX_BYTES_ENV = "CELLZOO_MAX_BYTES"
DEFAULT_MAX_PIXELS = 2 ** 30
DEFAULT_MAX_BYTES = 16 * 2 ** 30


def _limit(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number; set it to a whole number such as {default}") from None
    if value <= 0:
        raise ValueError(f"{name}={text!r} must be a positive whole number (default {default})")
    return value


def max_pixels() -> int:
    """Most pixels of one 2-D plane (``CELLZOO_MAX_PIXELS``)."""
    return _limit(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def max_bytes() -> int:
    """Most bytes of one decoded array (``CELLZOO_MAX_BYTES``)."""
    return _limit(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path when it names an existing regular file (symlinks followed); otherwise
    FileNotFoundError (missing) or ValueError (a folder, FIFO, device or socket), before it is opened."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path} does not exist; check the path (and the working directory).") from None
    except NotADirectoryError:
        raise FileNotFoundError(f"{what} not found: {path} (a part of the path is a file, not a folder).") from None
    except OSError as exc:
        raise ValueError(f"cannot access {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{what} {path} is a folder; give the path of a single file.")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {path} is {_file_kind(mode)}, not a regular file; give a file saved on disk.")
    return path


def _raise_hint(env: str, needed: int) -> str:
    return (f"if the data really is that large, raise the limit, e.g. {env}={needed}, or crop/tile it "
            f"into smaller pieces")


def check_image_size(height: Any, width: Any, source: str, *, planes: int = 1, itemsize: int = 1,
                     channels: int = 1) -> tuple[int, int]:
    """``(height, width)`` as ints when they are a sane 2-D size: positive whole numbers, at most
    ``CELLZOO_MAX_PIXELS`` pixels per plane and ``CELLZOO_MAX_BYTES`` for all planes × channels."""
    try:
        h, w = float(height), float(width)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: image size {height!r}×{width!r} is not a pair of numbers") from None
    if not (math.isfinite(h) and math.isfinite(w)) or h != int(h) or w != int(w) or h < 1 or w < 1:
        raise ValueError(f"{source}: image size {height!r}×{width!r} is not a pair of positive whole numbers")
    h, w = int(h), int(w)
    pixels, limit = h * w, max_pixels()
    if pixels > limit:
        raise ValueError(f"{source}: a {h}×{w} image ({pixels:,} pixels) is beyond the limit of {limit:,} "
                         f"pixels per plane; {_raise_hint(MAX_PIXELS_ENV, pixels)}")
    total, byte_limit = pixels * max(1, int(planes)) * max(1, int(channels)) * max(1, int(itemsize)), max_bytes()
    if total > byte_limit:
        raise ValueError(f"{source}: its {planes} plane(s) of {h}×{w}×{channels} would need {total:,} bytes, beyond "
                         f"the limit of {byte_limit:,} bytes; {_raise_hint(MAX_BYTES_ENV, total)}")
    return h, w


def check_array_size(shape: Iterable[int], itemsize: int, source: str) -> int:
    """Bytes of an array of ``shape`` (checked against ``CELLZOO_MAX_BYTES``) before it is allocated."""
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"{source}: declares a negative size {shape}")
    total = math.prod(shape) * int(itemsize)
    limit = max_bytes()
    if total > limit:
        raise ValueError(f"{source}: an array of shape {shape} needs {total:,} bytes, beyond the limit of "
                         f"{limit:,} bytes; {_raise_hint(MAX_BYTES_ENV, total)}")
    return total


def finite_number(value: Any, name: str, *, integer: bool = False, minimum: float | None = None,
                  maximum: float | None = None, exclusive_minimum: bool = False) -> float | int:
    """``value`` (a number or its text) as a finite float (or int with ``integer``) in range; a clear
    ValueError naming ``name`` otherwise (bool, NaN, inf, text that is no number, out of range)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        number = int(number)
    if minimum is not None and (number <= minimum if exclusive_minimum else number < minimum):
        relation = "greater than" if exclusive_minimum else "at least"
        raise ValueError(f"{name} must be {relation} {minimum:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {value!r}")
    return number


def finite_coordinates(ring: Any, source: str) -> np.ndarray:
    """A K×2 float array of (x, y) vertices; ValueError for text, ragged or non-finite coordinates."""
    try:
        array = np.asarray(ring, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: malformed polygon coordinates, not numbers ({exc})") from None
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"{source}: malformed polygon ring, expected a list of [x, y] pairs, got shape {array.shape}")
    array = array[:, :2]
    if not np.isfinite(array).all():
        bad = array[~np.isfinite(array).all(axis=1)][0].tolist()
        raise ValueError(f"{source}: a polygon vertex is not finite ({bad}); every coordinate must be a "
                         f"finite number")
    return array
