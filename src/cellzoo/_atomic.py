"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash or cancel mid-write therefore never leaves a half-written checkpoint,
annotation or download under the final name.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterator

#: temporaries left by a killed process are removed by the next write to their folder after this long
STALE_PART_SECONDS = 3600
_swept: set[Path] = set()
_PART_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.part$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent not in _swept:  # once per folder and process: output folders can hold thousands of files
        _swept.add(path.parent)
        remove_stale_parts(path.parent)
    tmp_path = _new_temporary(path)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def make_output_folder(folder: str | os.PathLike) -> Path:
    """``folder`` and its parents, or a ValueError that says which folder could not be made and why."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output folder {folder} ({exc.strerror or exc}); choose a folder you "
                         "can write to") from None
    return folder


def remove_stale_parts(folder: Path, max_age: float = STALE_PART_SECONDS) -> list[Path]:
    """Delete our hidden temporaries (``.<name>.<8 hex>.part``) in ``folder`` older than ``max_age`` seconds:
    what a kill -9 mid-write leaves. Younger ones may belong to a write still running, so they stay."""
    removed = []
    cutoff = time.time() - max_age
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _PART_NAME.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already, or not ours to delete
            continue
    return removed


def _new_temporary(path: Path) -> Path:
    """Create an empty, exclusive temporary file next to ``path``.

    Not ``tempfile.mkstemp``: it creates mode 0600 whatever the umask, so results written for a shared
    folder were unreadable by colleagues. ``os.open(..., 0o666)`` lets the user's umask decide, as any
    ordinary file creation does.
    """
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}.part"
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"could not create a temporary file next to {path}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
