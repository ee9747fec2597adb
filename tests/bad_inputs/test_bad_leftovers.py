"""What a kill -9 leaves: hidden .part temporaries are removed by the next atomic write to their folder."""
from __future__ import annotations

import os
import time

import pytest

from cellzoo import _atomic
from cellzoo._atomic import atomic_write_text


@pytest.fixture(autouse=True)
def _fresh_sweep_memory(monkeypatch):
    monkeypatch.setattr(_atomic, "_swept", set())


def _aged(path, seconds):
    path.write_bytes(b"half a checkpoint")
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


@pytest.mark.parametrize("name,age,removed", [
    (".last.safetensors.0123abcd.part", 2 * 3600, True),   # killed run, hours ago
    (".img_instances.tif.deadbeef.part", 3601, True),
    (".last.safetensors.0123abcd.part", 60, False),         # may belong to a write still running
    (".notes.txt.part", 2 * 3600, False),                   # not our pattern
    ("visible.0123abcd.part", 2 * 3600, False),             # not hidden: not ours
    (".last.safetensors.XYZ.part", 2 * 3600, False),        # no 8-hex token: not ours
])
def test_stale_parts_are_cleaned_by_the_next_write(tmp_path, name, age, removed):
    leftover = _aged(tmp_path / name, age)
    atomic_write_text(tmp_path / "result.txt", "done")
    assert (tmp_path / "result.txt").read_text() == "done"
    assert leftover.exists() is not removed


def test_a_write_leaves_no_part_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with _atomic.atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("new, half")
            raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
