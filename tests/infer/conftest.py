from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def monuseg_image(shared_data):
    import imageio.v3 as iio

    path = sorted((shared_data / "monuseg2018" / "images" / "test").glob("*.png"))[0]
    image = iio.imread(path)
    assert image.shape == (1000, 1000, 3) and image.dtype == np.uint8
    return image


@pytest.fixture(scope="session")
def dsb_gray(shared_data):
    import tifffile

    path = sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0]
    image = tifffile.imread(path)
    assert image.ndim == 2
    return image


@pytest.fixture(scope="session")
def small_repsnet(shared_data):
    from tiny_models import trained_repsnet

    return trained_repsnet(shared_data)
