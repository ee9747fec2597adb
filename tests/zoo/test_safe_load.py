"""Checkpoints whose pickle would run code are refused, and the payload never runs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cellzoo import zoo
from cellzoo.zoo import convert_checkpoint, safe_torch_load


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval])
@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, zipfile, zoo_env):
    marker = tmp_path / "payload-ran"
    state = {"nucleus_map.0.weight": torch.zeros(2, 4, 1, 1), "evil": payload(marker)}
    path = tmp_path / "RepSNet_S.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zipfile)

    for load in (safe_torch_load, convert_checkpoint, zoo.load_model):
        with pytest.raises(ValueError) as err:
            load(path)
        text = str(err.value)
        assert str(path) in text
        assert "could run code" in text and "will not be loaded" in text
    if zipfile:  # zip checkpoints can be inspected: the message names the offending callable
        assert ("system" in text) or ("eval" in text)
    assert not marker.exists()


def test_numpy_scalars_in_wrappers_are_accepted(tmp_path):
    # old training scripts store metrics as numpy scalars next to the weights (FullNet's best_iou)
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 10, "best_iou": np.float64(0.81), "state_dict": {"w": torch.ones(2)}}, path)
    loaded = safe_torch_load(path)
    assert loaded["best_iou"] == pytest.approx(0.81) and torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"PK\x03\x04 this is not a torch file")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        safe_torch_load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        safe_torch_load(tmp_path / "absent.pth")
