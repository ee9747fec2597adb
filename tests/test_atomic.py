"""Atomic writes: final files respect the user's umask, and a failed write leaves the old file and no temporary."""
import os
import stat

import pytest

from cellzoo._atomic import atomic_path, atomic_write_bytes


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_file_mode_follows_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "result.tif", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "result.tif").stat().st_mode) == expected


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "labels.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]


def test_replaces_existing_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_bytes(target, b"1")
    atomic_write_bytes(target, b"2")
    assert target.read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
