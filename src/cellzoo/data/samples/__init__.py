"""Bundled CC0 sample (DSB 2018 / BBBC038 fluorescence nuclei) for demos, `cellzoo segment --sample` and napari."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent


def sample_image_path() -> Path:
    return _HERE / "dsb2018_nuclei.tif"


def sample_labels_path() -> Path:
    return _HERE / "dsb2018_nuclei_labels.tif"
