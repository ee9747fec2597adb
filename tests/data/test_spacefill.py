"""Space-filling augmentation on real DSB 2018 / CoNSeP cells."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.io import imread

from cellzoo.data.sample import Sample
from cellzoo.data.spacefill import LibraryCell, SpaceFill, build_cell_library

SPARSE = "602f267432e7a573e1092f1cf48135c82d0fbc8722bc028b9330ec801a40bb18"  # 19 nuclei on 520×696


def _dsb(shared_data, split: str, name: str) -> Sample:
    folder = shared_data / "dsb2018" / split
    return Sample(name, tifffile.imread(folder / "images" / f"{name}.tif"),
                  tifffile.imread(folder / "masks" / f"{name}.tif").astype(np.int32))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]


@pytest.fixture(scope="module")
def dsb_library(shared_data):
    names = sorted(p.stem for p in (shared_data / "dsb2018" / "train" / "masks").glob("*.tif"))[:4]
    return build_cell_library([_dsb(shared_data, "train", n) for n in names])


def test_library_crops_cells_with_background_zeroed(shared_data, dsb_library):
    assert len(dsb_library) > 20
    for cell in dsb_library[:20]:
        assert cell.image.shape[:2] == cell.mask.shape and cell.image.shape[2] == 3
        assert (cell.image[~cell.mask] == 0).all()
        assert cell.mask[3:-3, 3:-3].any() and cell.cls == 1
        # the 3 px margin: the mask does not reach the crop border unless cut by the image border
        assert min(cell.mask.shape) >= 6


def test_pasted_cells_never_overlap_and_maps_are_updated(shared_data, dsb_library):
    sample = _dsb(shared_data, "test", SPARSE)
    image, labels = _as_rgb(sample.image), sample.labels
    classes = (labels > 0).astype(np.uint8)
    fill = SpaceFill(dsb_library, n_cells=10, tries=10)
    out_image, out_labels, out_classes = fill(image, labels, classes, np.random.default_rng(1))

    old_ids = set(np.unique(labels)) - {0}
    new_ids = sorted(set(np.unique(out_labels)) - {0} - old_ids)
    assert 3 <= len(new_ids) <= 10  # sparse image: most cells find a place
    assert min(new_ids) > max(old_ids) and len(new_ids) == len(set(new_ids))  # fresh, unique ids
    # existing cells untouched (IoA of every pasted cell with the existing ones is 0)
    assert np.array_equal(out_labels[labels > 0], labels[labels > 0])
    new_pixels = np.isin(out_labels, new_ids)
    assert not (new_pixels & (labels > 0)).any()
    # each new id is one object; class map marks it; image changed only where cells were pasted
    for i in new_ids:
        assert ndimage.label(out_labels == i)[1] == 1
    assert (out_classes[new_pixels] == 1).all() and (out_classes[~new_pixels] == classes[~new_pixels]).all()
    changed = np.any(out_image != image, axis=-1)
    assert changed.any() and not (changed & ~new_pixels).any()
    assert (out_image >= image - 1e-4).all()  # cells are added, never subtracted


def test_intensity_rule_cell_added_times_factor_in_range():
    # a uniform 100-valued 9×9 disc cell pasted into a flat image of value 20, without jitter:
    # every pasted pixel must be 20 + 100·g with one g per cell, g in [0.15, 0.5]
    yy, xx = np.mgrid[-4:5, -4:5]
    mask = yy ** 2 + xx ** 2 <= 16
    cell = LibraryCell(np.where(mask[..., None], 100.0, 0.0).astype(np.float32).repeat(3, -1), mask)
    fill = SpaceFill([cell], n_cells=8, tries=20, scale=0.0, rotate=False, brightness=(0.0, 0.0))
    image = np.full((64, 64, 3), 20.0, np.float32)
    labels = np.zeros((64, 64), np.int32)
    gains = []
    for seed in range(5):
        out, lab, cls = fill(image, labels, None, np.random.default_rng(seed))
        assert cls is None
        for i in np.unique(lab)[1:]:
            pix = out[lab == i]
            assert (lab == i).sum() == mask.sum()
            gain = (pix - 20.0) / 100.0
            assert np.allclose(gain, gain[0, 0], atol=1e-5)
            gains.append(gain[0, 0])
        assert (out[lab == 0] == 20.0).all()
    gains = np.array(gains)
    assert gains.size >= 20
    assert gains.min() >= 0.15 - 1e-6 and gains.max() <= 0.5 + 1e-6
    assert gains.max() - gains.min() > 0.1  # really random


def test_class_maps_from_consep_library(shared_data):
    folder = shared_data / "consep" / "train"
    name = sorted(p.stem for p in (folder / "images").glob("*.jpg"))[0]
    sample = Sample(name, imread(folder / "images" / f"{name}.jpg"),
                    imread(folder / "inst" / f"{name}.png").astype(np.int32),
                    imread(folder / "class" / f"{name}.png").astype(np.uint8))
    library = build_cell_library([sample], min_side=8)
    assert {c.cls for c in library} <= {1, 2, 3, 4} and len({c.cls for c in library}) >= 2
    empty = np.zeros((128, 128), np.int32)
    image, labels, classes = SpaceFill(library, n_cells=6)(np.zeros((128, 128, 3), np.float32), empty,
                                                           np.zeros((128, 128), np.uint8),
                                                           np.random.default_rng(0))
    for i in np.unique(labels)[1:]:
        values = np.unique(classes[labels == i])
        assert values.size == 1 and values[0] in {1, 2, 3, 4}
    assert np.array_equal(labels > 0, classes > 0)


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="library is empty"):
        SpaceFill([])
    cell = LibraryCell(np.ones((5, 5, 3), np.float32), np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="differ in size"):
        SpaceFill([cell])(np.zeros((10, 10, 3), np.float32), np.zeros((9, 10), np.int32), None,
                          np.random.default_rng(0))
