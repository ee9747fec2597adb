"""raster_kind tells images, instance maps and class maps apart by their pixels (real datasets)."""
from __future__ import annotations

import numpy as np
import pytest

from cellzoo.data.io import read_image
from cellzoo.data.label_kind import raster_kind


@pytest.mark.parametrize("folder, kind", [
    ("dsb2018/test/images", "image"), ("dsb2018/test/masks", "instances"),
    ("monuseg2018/images/test", "image"), ("monuseg2018/labels/test", "instances"),
    ("consep/stitched/test/inst", "instances"), ("consep/stitched/test/class", "classes"),
    ("monusac_sample/class", "classes"),
])
def test_real_files_are_classified_by_content(shared_data, folder, kind):
    paths = sorted(p for p in (shared_data / folder).iterdir() if p.suffix in (".png", ".tif"))[:6]
    assert paths
    for path in paths:
        stats = raster_kind(read_image(path))
        assert stats.kind == kind, (path.name, stats)


def test_a_class_map_and_its_instances_differ(shared_data):
    cls = read_image(shared_data / "consep/stitched/test/class" / "test_1.png")
    inst = read_image(shared_data / "consep/stitched/test/inst" / "test_1.png")
    as_classes, as_instances = raster_kind(cls), raster_kind(inst)
    assert as_classes.kind == "classes" and as_classes.values <= 4 < as_classes.regions
    assert as_instances.kind == "instances" and as_instances.regions <= 1.5 * as_instances.values


def test_image_like_integer_arrays_are_images():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    assert raster_kind(noise).kind == "image"
    assert raster_kind(noise.astype(np.float32)).kind == "image"       # not integer
    assert raster_kind(np.stack([noise] * 3, -1)).kind == "image"      # not single-channel
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint16)  # smooth, no background
    assert raster_kind(ramp).kind == "image"


def test_small_maps_and_edge_cases():
    labels = np.zeros((32, 32), np.uint16)
    labels[2:8, 2:8], labels[10:20, 10:20] = 1, 2
    assert raster_kind(labels).kind == "instances"
    assert raster_kind(labels > 0).kind == "classes"                    # a binary mask of two blobs
    assert raster_kind(np.zeros((8, 8), np.uint8)).kind == "instances"  # empty label map
    assert raster_kind(np.zeros((1, 1), np.uint8)).kind == "image"
