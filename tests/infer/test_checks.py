"""Pre-run checks on real images: empty/constant/tiny images, image vs model modality."""
from __future__ import annotations

import numpy as np
import pytest

from cellzoo.data.io import read_image
from cellzoo.infer.checks import image_modality, image_problem, modality_warning, model_modality
from cellzoo.zoo import list_models


def _images(shared_data, pattern, count=8):
    paths = sorted(shared_data.glob(pattern))
    assert paths, pattern
    return [read_image(p) for p in paths[:: max(1, len(paths) // count)][:count]]


@pytest.mark.parametrize("pattern, kind", [
    ("dsb2018/train/images/*.tif", "fluorescence"), ("monuseg2018/images/test/*.png", "brightfield"),
    ("consep/test/images/*.jpg", "brightfield"), ("monusac_sample/images/*.png", "brightfield"),
])
def test_image_modality_of_real_images(shared_data, pattern, kind):
    for image in _images(shared_data, pattern):
        assert image_modality(image) == kind
    # the verdict does not depend on the bit depth
    assert image_modality(_images(shared_data, pattern, 1)[0].astype(np.uint16) * 200) == kind


def test_model_modality_from_the_registry_and_user_models():
    kinds = {info.name: model_modality(info) for info in list_models()}
    assert kinds["cellzoo-he"] == "brightfield" and kinds["cellzoo-fluo"] == "fluorescence"
    assert kinds["cellzoo-scts-dsb"] == "fluorescence" and kinds["repsnet-l-conic"] == "brightfield"
    assert model_modality({"name": "mine", "training_data": "fine-tuned from cellzoo-fluo on 3 image(s)"}) \
        == "fluorescence"
    assert model_modality({"name": "mine", "training_data": "my lab's slides"}) is None


def test_mismatch_warnings_both_ways(shared_data):
    infos = {info.name: info for info in list_models()}
    he = _images(shared_data, "monuseg2018/images/test/*.png", 1)[0]
    fluo = _images(shared_data, "dsb2018/test/images/*.tif", 1)[0]
    warning = modality_warning(he, infos["cellzoo-fluo"])
    assert warning.startswith("cellzoo-fluo was trained on fluorescence") and "cellzoo-he" in warning
    warning = modality_warning(fluo, infos["cellzoo-he"])
    assert warning.startswith("cellzoo-he was trained on brightfield") and "cellzoo-fluo" in warning
    assert modality_warning(he, infos["cellzoo-he"]) is None
    assert modality_warning(fluo, infos["cellzoo-fluo"]) is None
    assert modality_warning(np.stack([fluo] * 3, -1), infos["cellzoo-fluo"]) is None  # gray stored as RGB


def test_images_without_content_are_refused_with_a_reason(shared_data):
    fluo = _images(shared_data, "dsb2018/test/images/*.tif", 1)[0]
    assert image_problem(fluo) is None and image_problem(np.stack([fluo] * 3, -1)) is None
    assert "1×1 px" in image_problem(np.ones((1, 1), np.uint8))
    assert "every pixel is 0" in image_problem(np.zeros((64, 64, 3), np.uint8))
    assert "NaN" in image_problem(np.full((64, 64), np.nan, np.float32))
    assert "value 7" in image_problem(np.full((64, 64), 7, np.uint16))
    with_nan = fluo.astype(np.float32)
    with_nan[:10] = np.nan
    assert image_problem(with_nan) is None  # some NaN is fine; prepare_image zeroes them
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 2] = fluo[:64, :64]
    assert image_problem(rgb, channel=0) is not None and image_problem(rgb, channel=2) is None


def test_dark_stained_patches_are_not_called_fluorescence(shared_data):
    """Dense, dark H&E fields (CoNSeP train_2_001/3/4) have a dark median but colour: no verdict, no warning."""
    infos = {info.name: info for info in list_models()}
    for name in ("train_2_001", "train_2_003", "train_2_004"):
        image = read_image(shared_data / "consep" / "train" / "images" / f"{name}.jpg")
        assert image_modality(image) is None
        assert modality_warning(image, infos["cellzoo-he"]) is None


def test_large_inputs_are_judged_quickly(shared_data):
    import time

    from cellzoo.data.label_kind import raster_kind

    he = np.tile(_images(shared_data, "monuseg2018/images/test/*.png", 1)[0], (3, 3, 1))  # 3000² RGB
    labels = np.zeros((3000, 3000), np.int32)
    labels[1000:2000, 1000:2000] = read_image(
        sorted((shared_data / "consep" / "stitched" / "test" / "inst").glob("*.png"))[0])
    start = time.perf_counter()
    assert image_modality(he) == "brightfield" and image_problem(he) is None
    assert raster_kind(labels).kind == "instances"  # judged on its central 1024² window
    assert time.perf_counter() - start < 1.5  # ~0.2 s on one core; 2 s before sampling
