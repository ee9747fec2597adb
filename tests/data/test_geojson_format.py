"""QuPath-style GeoJSON ↔ instance (+ class) maps, round trips on real CoNSeP labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import same_partition
from scipy import ndimage

from cellzoo.data import (CONSEP_CLASS_NAMES, labels_to_geojson, read_class_map, read_geojson, read_labels,
                          write_geojson)


def _holes_filled(labels):
    filled = np.zeros_like(labels)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            filled[box][ndimage.binary_fill_holes(labels[box] == index)] = index
    return filled


def test_round_trip_on_a_real_stitched_consep_tile(tmp_path, shared_data):
    truth = read_labels(shared_data / "consep/stitched/test/inst/test_1.png")
    truth_classes = read_class_map(shared_data / "consep/stitched/test/class/test_1.png")
    path = write_geojson(tmp_path / "test_1.geojson", truth, truth_classes, CONSEP_CLASS_NAMES, object_type="detection")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == len(np.unique(truth)) - 1
    feature = data["features"][0]
    assert feature["properties"]["objectType"] == "detection"
    assert feature["properties"]["classification"]["name"] in CONSEP_CLASS_NAMES[1:]
    assert len(feature["properties"]["classification"]["color"]) == 3
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]  # closed ring, as GeoJSON requires
    labels, classes, names = read_geojson(path, shape=truth.shape, class_names=CONSEP_CLASS_NAMES)
    assert names == CONSEP_CLASS_NAMES
    assert same_partition(labels, _holes_filled(truth))  # exact: outlines run between pixel centres
    both = (truth > 0) & (labels > 0)
    assert np.mean(classes[both] == truth_classes[both]) > 0.99


def test_small_real_patch_round_trip_is_exact(consep_patch):
    _, truth, truth_classes = consep_patch
    filled = _holes_filled(truth)
    labels, classes, names = read_geojson(labels_to_geojson(filled, truth_classes), shape=truth.shape)
    assert same_partition(labels, filled)
    assert names == ["background", "class_1", "class_2", "class_3", "class_4"]  # ids kept via properties.class_id
    both = (filled > 0) & (labels > 0)
    assert np.mean(classes[both] == truth_classes[both]) > 0.99


def test_known_class_lists_fix_ids_of_foreign_files(consep_patch):
    _, truth, truth_classes = consep_patch
    data = labels_to_geojson(truth, truth_classes, CONSEP_CLASS_NAMES)
    for feature in data["features"]:
        del feature["properties"]["class_id"]  # as in a file edited in QuPath
    data["features"].reverse()  # names now appear in another order
    labels, classes, names = read_geojson(data, shape=truth.shape)
    assert names == CONSEP_CLASS_NAMES
    both = (truth > 0) & (labels > 0)
    assert np.mean(classes[both] == truth_classes[both]) > 0.99


def test_qupath_export_with_hole_multipolygon_colorrgb_and_points():
    features = [
        {"type": "Feature", "id": "a", "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [6, 0], [6, 6], [0, 6], [0, 0]],        # 6×6 pixels …
            [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]},      # … with a 2×2 hole
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "colorRGB": -3670016}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[7, 0], [8, 0], [8, 1], [7, 1], [7, 0]]], [[[7, 5], [8, 5], [8, 6], [7, 6], [7, 5]]]]},
         "properties": {"objectType": "detection", "classification": {"name": "Stroma", "color": [0, 255, 0]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 7], [2, 7], [2, 8], [0, 8]]]},
         "properties": {"objectType": "annotation"}},        # unclassified
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {}},
    ]
    with pytest.warns(UserWarning, match="skipped 1 feature"):
        labels, classes, names = read_geojson(features)  # a bare list, as some QuPath versions export
    expected = np.zeros((8, 8), np.int32)
    expected[0:6, 0:6] = 1
    expected[2:4, 2:4] = 0
    expected[0, 7] = expected[5, 7] = 2
    expected[7, 0:2] = 3
    assert np.array_equal(labels, expected)
    assert names == ["background", "Tumor", "Stroma"]
    assert classes[0, 0] == 1 and classes[0, 7] == 2 and classes[7, 0] == 0 and classes[3, 3] == 0
    labels, classes, names = read_geojson({"type": "FeatureCollection", "features": features[2:3]}, shape=(9, 9))
    assert classes is None and names == ["background", "nucleus"] and labels.shape == (9, 9)


def test_class_names_given_up_front_fix_the_ids():
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 2]]]},
               "properties": {"classification": {"name": "epithelial"}}}
    _, classes, names = read_geojson(feature, class_names=CONSEP_CLASS_NAMES)
    assert names == CONSEP_CLASS_NAMES and classes[0, 0] == 3


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_geojson(tmp_path / "none.geojson")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_geojson(tmp_path / "bad.geojson")
    with pytest.raises(ValueError, match="not GeoJSON"):
        read_geojson({"images": []})
    with pytest.raises(ValueError, match="object_type"):
        labels_to_geojson(np.zeros((3, 3), np.int32), object_type="cell")
    with pytest.raises(ValueError, match="malformed polygon"):
        read_geojson({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1, 2, 3]]}})
