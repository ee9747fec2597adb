"""Fixtures for the bad-input sweep: every case builds its own tiny file in tmp_path."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "zoo"))  # zoo_helpers: LoopbackServer, tiny_model


@pytest.fixture
def fifo(tmp_path):
    """make_fifo(name): a FIFO (named pipe) with that name; reading it would block for ever."""
    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)
        return path
    return make
