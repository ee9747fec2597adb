"""The training scripts of the embedded defaults (scripts/train_defaults.py), run for a few steps on real data."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cellzoo.zoo.locations import EMBEDDED_DIR

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def train_defaults(shared_data):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import train_defaults

        yield train_defaults
    finally:
        sys.path.remove(str(SCRIPTS))


TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "64", "--threads", "1",
        "--minutes", "5"]


def test_continuations_record_the_widths_they_trained(train_defaults, tmp_path, capsys):
    widened, continued = tmp_path / "widened", tmp_path / "continued"
    init = EMBEDDED_DIR / "cellzoo-fluo.safetensors"
    assert train_defaults.main(["fluo", "--init", str(init), "--widen", "16,32,64,160", *TINY,
                                "--out", str(widened)]) == 0
    summary = json.loads((widened / "summary.json").read_text())
    assert summary["filters"] == [16, 32, 64, 160]
    assert summary["init"] == str(init) and summary["epochs"] == 1
    assert (widened / "best.safetensors").is_file() and (widened / "last.safetensors").is_file()
    assert "filters (16, 32, 64, 160)" in capsys.readouterr().out
    # continuing that run without --widen keeps (and records) its widths, not the default ones
    assert train_defaults.main(["fluo", "--init", str(widened / "last.safetensors"), *TINY,
                                "--out", str(continued)]) == 0
    assert json.loads((continued / "summary.json").read_text())["filters"] == [16, 32, 64, 160]


def test_widths_given_beside_init_weights_are_refused(train_defaults, tmp_path, capsys):
    init = EMBEDDED_DIR / "cellzoo-fluo.safetensors"
    # the tiny budget keeps a regression (a run instead of the refusal) to seconds
    with pytest.raises(SystemExit):
        train_defaults.main(["fluo", "--init", str(init), "--filters", "32,64,128,256", *TINY,
                             "--out", str(tmp_path)])
    assert "--filters has no effect with --init" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_defaults.main(["fluo", "--widen", "32,64,128,256", *TINY, "--out", str(tmp_path)])
    assert "--widen needs --init" in capsys.readouterr().err
