"""auto_read_annotation: one call for every annotation format (the napari reader's entry point)."""
from __future__ import annotations

import numpy as np
import pytest
from data_helpers import same_partition

from cellzoo.data import (CONSEP_CLASS_NAMES, auto_read_annotation, instances_to_coco_results, to_coco,
                          write_class_folder, write_coco, write_coco_results, write_geojson, write_labels,
                          write_xml_annotations)


def test_every_format_reads_back_the_same_objects(tmp_path, consep_patch):
    image, truth, truth_classes = consep_patch
    shape = truth.shape
    write_labels(tmp_path / "labels.tif", truth)
    write_labels(tmp_path / "labels.png", truth)
    np.save(tmp_path / "one.npy", np.stack([truth, truth_classes], axis=-1).astype(np.uint16))
    write_xml_annotations(tmp_path / "a.xml", truth, truth_classes, CONSEP_CLASS_NAMES)
    write_geojson(tmp_path / "a.geojson", truth, truth_classes, CONSEP_CLASS_NAMES)
    write_geojson(tmp_path / "b.json", truth, truth_classes, CONSEP_CLASS_NAMES)
    write_coco(tmp_path / "coco.json", to_coco([("p.jpg", truth, truth_classes)], CONSEP_CLASS_NAMES))
    write_coco_results(tmp_path / "results.json", instances_to_coco_results(truth, truth_classes, image_id=3))
    write_class_folder(tmp_path / "folder", image, truth, truth_classes)
    for name in ("labels.tif", "labels.png"):
        labels, classes, names = auto_read_annotation(tmp_path / name, shape)
        assert np.array_equal(labels, truth) and classes is None and names == ["background", "nucleus"]
    labels, classes, names = auto_read_annotation(tmp_path / "one.npy")
    assert np.array_equal(labels, truth) and np.array_equal(classes, truth_classes)
    for name in ("a.xml", "a.geojson", "b.json", "coco.json", "results.json", "folder"):
        labels, classes, names = auto_read_annotation(tmp_path / name, shape)
        assert labels.shape == shape and labels.dtype == np.int32
        assert same_partition(labels, truth), name
        both = truth > 0
        assert np.mean(classes[both] == truth_classes[both]) > 0.99, name
        if name not in ("results.json", "folder"):  # these carry ids only, no names
            assert names == CONSEP_CLASS_NAMES, name


def test_multi_image_coco_needs_an_image_and_sizes_are_checked(tmp_path, consep_patch):
    _, truth, _ = consep_patch
    write_coco(tmp_path / "two.json", to_coco([("a.png", truth), ("b.png", truth[:100])]))
    with pytest.raises(ValueError, match="2 images; say which"):
        auto_read_annotation(tmp_path / "two.json")
    labels, classes, _ = auto_read_annotation(tmp_path / "two.json", image="b")
    assert labels.shape == (100, 256) and classes is None
    write_labels(tmp_path / "l.tif", truth)
    with pytest.raises(ValueError, match="must match"):
        auto_read_annotation(tmp_path / "l.tif", shape=(10, 10))


def test_unsupported_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        auto_read_annotation(tmp_path / "nothing.xml")
    (tmp_path / "a.csv").write_text("x,y\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        auto_read_annotation(tmp_path / "a.csv")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="neither GeoJSON"):
        auto_read_annotation(tmp_path / "other.json")
    np.save(tmp_path / "stack.npy", np.zeros((2, 4, 4, 2), np.uint16))
    with pytest.raises(ValueError, match="use read_npy"):
        auto_read_annotation(tmp_path / "stack.npy")
