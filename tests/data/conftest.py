"""Fixtures for the cellzoo.data tests: small real images and label maps from ../shared/data."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

MONUSEG_TEST_ID = "TCGA-2Z-A9J9-01A-01-TS1"


@pytest.fixture(scope="session")
def monuseg_pair(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real MoNuSeg test image (1000×1000 RGB uint8) and its instance map (int32)."""
    image = iio.imread(shared_data / "monuseg2018" / "images" / "test" / f"{MONUSEG_TEST_ID}.png")
    labels = iio.imread(shared_data / "monuseg2018" / "labels" / "test" / f"{MONUSEG_TEST_ID}.png").astype(np.int32)
    return image, labels


@pytest.fixture(scope="session")
def consep_patch(shared_data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real CoNSeP test patch: image (256×256×3 uint8), instances (int32), classes (uint8, all 4 types present)."""
    folder = shared_data / "consep" / "test"
    name = "test_11_003"  # holds all four CoNSeP types
    image = iio.imread(folder / "images" / f"{name}.jpg")
    labels = iio.imread(folder / "inst" / f"{name}.png").astype(np.int32)
    classes = iio.imread(folder / "class" / f"{name}.png").astype(np.uint8)
    return image, labels, classes
