"""Annotation files: COCO, COCO results, GeoJSON, MoNuSeg/MoNuSAC XML, and the auto reader."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from cellzoo.data import (auto_read_annotation, coco_to_labels, read_coco_results, read_geojson,
                          read_xml_annotations, to_coco)

SQUARE = [2, 2, 6, 2, 6, 6, 2, 6]  # a 4×4 polygon in pixel-corner coordinates


def _coco(**changes):
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [SQUARE]}],
            "categories": [{"id": 1, "name": "nucleus"}]}
    coco.update(changes)
    return coco


def _annotation(**fields):
    base = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [SQUARE]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


BAD_COCO = {
    "annotation without segmentation": (_coco(annotations=[_annotation(segmentation=...)]), "has no 'segmentation'"),
    "annotation without image_id": (_coco(annotations=[_annotation(image_id=...)]), "has no 'image_id'"),
    "category without id": (_coco(categories=[{"name": "nucleus"}]), "a category has no 'id'"),
    "category id text": (_coco(categories=[{"id": "one", "name": "x"}]), "category id must be an integer"),
    "category id float": (_coco(categories=[{"id": 1.5, "name": "x"}]), "category id must be an integer"),
    "category_id text": (_coco(annotations=[_annotation(category_id="a")]), "category_id must be an integer"),
    "category_id not in categories": (_coco(annotations=[_annotation(category_id=300)]),
                                      r"category_id\(s\) \[300\] that are not in 'categories'"),
    "images not a list": (_coco(images={"id": 1}), "'images' must be a list"),
    "annotations hold text": (_coco(annotations=["x"]), "'annotations' must be a list of JSON objects"),
    "image without id": (_coco(images=[{"file_name": "a.png", "height": 10, "width": 10}]), "has no 'id'"),
    "negative RLE counts": (_coco(annotations=[_annotation(segmentation={"size": [10, 10], "counts": [50, -5, 55]})]),
                            "negative run length"),
    "RLE counts too long": (_coco(annotations=[_annotation(segmentation={"size": [10, 10], "counts": [50, 5000]})]),
                            "add up to 5050 pixels"),
    "RLE counts too short": (_coco(annotations=[_annotation(segmentation={"size": [10, 10], "counts": [5, 5]})]),
                             "add up to 10 pixels"),
    "RLE counts floats": (_coco(annotations=[_annotation(segmentation={"size": [10, 10], "counts": [50.5, 49.5]})]),
                          "whole numbers"),
    "RLE counts dict": (_coco(annotations=[_annotation(segmentation={"size": [10, 10], "counts": {"a": 1}})]),
                        "must be a list of run lengths or an RLE string"),
    "compressed RLE bad character": (_coco(annotations=[_annotation(segmentation={"size": [10, 10], "counts": "0\x7f"})]),
                                     "invalid character"),
    "compressed RLE cut": (_coco(annotations=[_annotation(segmentation={"size": [10, 10], "counts": "P"})]),
                           "truncated"),
    "compressed RLE wrong total": (_coco(annotations=[_annotation(segmentation={"size": [10, 10], "counts": "42"})]),
                                   "add up to"),
    "RLE size text": (_coco(annotations=[_annotation(segmentation={"size": "10x10", "counts": [100]})]),
                      r"'size' must be \[height, width\]"),
    "RLE size of another image": (_coco(annotations=[_annotation(segmentation={"size": [20, 5], "counts": [100]})]),
                                  r"has size \(20, 5\) but its image is \(10, 10\)"),
    "polygon with text": (_coco(annotations=[_annotation(segmentation=[[1, 2, "x", 4, 5, 6]])]),
                          "flat list of numbers"),
    "polygon with infinity": (_coco(annotations=[_annotation(segmentation=[[1, 2, float("inf"), 4, 5, 6]])]),
                              "not finite"),
    "polygon with NaN": (_coco(annotations=[_annotation(segmentation=[[1, 2, float("nan"), 4, 5, 6]])]),
                         "not finite"),
    "segmentation a number": (_coco(annotations=[_annotation(segmentation=7)]), "unknown COCO segmentation"),
    "huge height and width": (_coco(images=[{"id": 1, "height": 1_000_000_000, "width": 1_000_000_000}]),
                              "beyond the limit of .* pixels per plane; .*CELLZOO_MAX_PIXELS"),
    "negative height": (_coco(images=[{"id": 1, "height": -10, "width": 10}]), "positive whole numbers"),
    "height text": (_coco(images=[{"id": 1, "height": "ten", "width": 10}]), "not a pair of numbers"),
    "fractional width": (_coco(images=[{"id": 1, "height": 10, "width": 10.5}]), "positive whole numbers"),
    "no size at all": (_coco(images=[{"id": 1}]), "has no height/width"),
}


@pytest.mark.parametrize("name", list(BAD_COCO))
def test_coco_file_errors(tmp_path, name):
    coco, message = BAD_COCO[name]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=message):
        coco_to_labels(path, 1)


@pytest.mark.parametrize("name", ["annotation without segmentation", "negative RLE counts", "huge height and width"])
def test_coco_errors_through_the_auto_reader(tmp_path, name):
    coco, message = BAD_COCO[name]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=message):
        auto_read_annotation(path)


def test_coco_annotations_for_missing_images_are_reported(tmp_path):
    coco = _coco(annotations=[_annotation(), _annotation(id=2, image_id=7), _annotation(id=3, image_id=8)])
    with pytest.warns(UserWarning, match=r"2 annotation\(s\) refer to image_id\(s\) \[7, 8\] that no entry"):
        labels, classes, _ = coco_to_labels(coco, 1)
    assert labels.max() == 1 and (labels == 1).sum() == 16 and classes is None


def test_a_valid_coco_file_reads_exactly(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        labels, _, names = coco_to_labels(_coco(), 1)
    assert labels.shape == (10, 10) and (labels[2:6, 2:6] == 1).all() and labels.sum() == 16


def test_compressed_rle_round_trip_survives_the_checks():
    labels = np.zeros((12, 9), np.int32)
    labels[1:4, 2:7], labels[6:11, 0:3] = 1, 2
    back, _, _ = coco_to_labels(to_coco([("a.png", labels)]), 1)
    np.testing.assert_array_equal(back, labels)


BAD_RESULTS = {
    "huge shape": ([{"image_id": 1, "category_id": 1, "score": 1.0,
                     "segmentation": {"size": [10 ** 6, 10 ** 6], "counts": [10 ** 12]}}], "beyond the limit"),
    "negative counts": ([{"image_id": 1, "category_id": 1, "score": 1.0,
                          "segmentation": {"size": [4, 4], "counts": [20, -4]}}], "negative run length"),
    "not a list": ({"image_id": 1}, "not a COCO results list"),
    "entry without segmentation": ([{"image_id": 1, "category_id": 1}], "not a COCO results list"),
    "category beyond uint8": ([{"image_id": 1, "category_id": 300, "score": 1.0,
                                "segmentation": {"size": [4, 4], "counts": [16]}}], "does not fit a uint8"),
}


@pytest.mark.parametrize("name", list(BAD_RESULTS))
def test_coco_results_errors(tmp_path, name):
    data, message = BAD_RESULTS[name]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_coco_results(path)


# --------------------------------------------------------------------------- GeoJSON
def _feature(geometry, properties=None):
    return {"type": "Feature", "geometry": geometry, "properties": properties or {}}


def _polygon(ring):
    return {"type": "Polygon", "coordinates": [ring]}


RING = [[2, 2], [6, 2], [6, 6], [2, 6], [2, 2]]
BAD_GEOJSON = {
    "string geometry": (_feature("POLYGON((0 0, 1 0, 1 1))"), "geometry must be a JSON object"),
    "number geometry": (_feature(5), "geometry must be a JSON object"),
    "list geometry": (_feature([1, 2]), "geometry must be a JSON object"),
    "coordinates text": (_feature({"type": "Polygon", "coordinates": "0,0 1,1"}), "needs a list of 'coordinates'"),
    "coordinates missing": (_feature({"type": "Polygon"}), "needs a list of 'coordinates'"),
    "multipolygon of numbers": (_feature({"type": "MultiPolygon", "coordinates": [1, 2]}), "malformed MultiPolygon"),
    "infinite coordinate": (_feature(_polygon([[2, 2], [float("inf"), 2], [6, 6]])), "not finite"),
    "NaN coordinate": (_feature(_polygon([[2, 2], [float("nan"), 2], [6, 6]])), "not finite"),
    "negative infinity": (_feature(_polygon([[2, 2], [-float("inf"), 2], [6, 6]])), "not finite"),
    "text coordinate": (_feature(_polygon([[2, 2], ["x", 2], [6, 6]])), "malformed polygon coordinates"),
    "ragged ring": (_feature(_polygon([[2, 2], [4], [6, 6]])), "malformed polygon"),
    "flat ring": (_feature(_polygon([1, 2, 3, 4])), "malformed polygon ring"),
    "coordinates at 1e9": (_feature(_polygon([[1e9, 1e9], [1e9 + 5, 1e9], [1e9, 1e9 + 5]])),
                           r"largest coordinates imply one.*beyond the limit"),
    "coordinates at 1e30": (_feature(_polygon([[0, 0], [1e30, 0], [0, 1e30]])), "beyond the limit"),
    "properties a list": (_feature(_polygon(RING), properties=None) | {"properties": [1]}, "'properties' must be"),
    "collection of text": ({"type": "GeometryCollection", "geometries": "x"}, "needs a list of 'geometries'"),
    "feature is a number": ([5], "every feature must be a JSON object"),
    "not geojson": ({"hello": 1}, "not GeoJSON"),
}


@pytest.mark.parametrize("name", list(BAD_GEOJSON))
def test_geojson_errors(tmp_path, name):
    data, message = BAD_GEOJSON[name]
    if isinstance(data, dict) and data.get("type") == "Feature":
        data = {"type": "FeatureCollection", "features": [data]}
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_geojson(path)


def test_geojson_huge_coordinates_are_fine_with_an_image_shape(tmp_path):
    data = {"type": "FeatureCollection", "features": [_feature(_polygon(RING)),
                                                      _feature(_polygon([[1e9, 1e9], [1e9 + 5, 1e9], [1e9, 1e9 + 5]]))]}
    labels, _, _ = read_geojson(data, shape=(10, 10))
    assert labels.shape == (10, 10) and (labels == 1).sum() == 16 and labels.max() == 1


def test_geojson_image_shape_beyond_the_limit():
    with pytest.raises(ValueError, match="beyond the limit"):
        read_geojson({"type": "FeatureCollection", "features": [_feature(_polygon(RING))]}, shape=(10 ** 6, 10 ** 6))


@pytest.mark.parametrize("content,message", [
    (b"", "not valid JSON"), (b"{\"type\": ", "not valid JSON"), (b"\xff\xfe\x00garbage", "not a UTF-8 text file"),
    (b"[" * 100000, "nests its JSON too deeply|not valid JSON")])
def test_geojson_unreadable_files(tmp_path, content, message):
    path = tmp_path / "x.geojson"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_geojson(path)


# --------------------------------------------------------------------------- XML
def _xml(vertices: str, region_type: str = "0") -> str:
    return (f'<Annotations><Annotation Id="1"><Regions><Region Id="1" Type="{region_type}"><Vertices>{vertices}'
            f'</Vertices></Region></Regions></Annotation></Annotations>')


GOOD_VERTICES = '<Vertex X="2" Y="2"/><Vertex X="6" Y="2"/><Vertex X="6" Y="6"/><Vertex X="2" Y="6"/>'
BAD_XML = {
    "infinite vertex": (_xml('<Vertex X="2" Y="2"/><Vertex X="inf" Y="2"/><Vertex X="6" Y="6"/>'), "not finite"),
    "NaN vertex": (_xml('<Vertex X="2" Y="2"/><Vertex X="nan" Y="2"/><Vertex X="6" Y="6"/>'), "not finite"),
    "1e400 vertex": (_xml('<Vertex X="2" Y="2"/><Vertex X="1e400" Y="2"/><Vertex X="6" Y="6"/>'), "not finite"),
    "vertex at 1e9": (_xml('<Vertex X="1e9" Y="1e9"/><Vertex X="1000000005" Y="1e9"/><Vertex X="1e9" Y="1000000005"/>'),
                      "beyond the limit"),
    "vertex without X": (_xml('<Vertex Y="2"/><Vertex X="6" Y="2"/><Vertex X="6" Y="6"/>'), "lacks numeric X/Y"),
    "vertex with text": (_xml('<Vertex X="two" Y="2"/><Vertex X="6" Y="2"/><Vertex X="6" Y="6"/>'), "lacks numeric X/Y"),
    "infinite ellipse": (_xml('<Vertex X="2" Y="2"/><Vertex X="inf" Y="6"/>', region_type="2"), "not finite"),
    "not XML": ("this is not xml", "not well-formed XML"),
    "empty": ("", "not well-formed XML"),
    "no annotations": ("<Root><Other/></Root>", "has no <Annotation> elements"),
}


@pytest.mark.parametrize("name", list(BAD_XML))
def test_xml_errors(tmp_path, name):
    text, message = BAD_XML[name]
    path = tmp_path / "slide.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_xml_annotations(path)


def test_valid_xml_reads_exactly(tmp_path):
    path = tmp_path / "slide.xml"
    path.write_text(_xml(GOOD_VERTICES))
    labels, classes, _ = read_xml_annotations(path)
    assert labels.shape == (7, 7) and (labels[2:7, 2:7] == 1).all() and labels.sum() == 25 and classes is None


# --------------------------------------------------------------------------- any annotation file
@pytest.mark.parametrize("suffix", [".json", ".geojson", ".xml", ".npy", ".tif", ".png"])
def test_fifo_annotation_is_refused(fifo, suffix):
    with pytest.raises(ValueError, match="FIFO"):
        auto_read_annotation(fifo(f"ann{suffix}"))


@pytest.mark.parametrize("suffix", [".json", ".geojson", ".xml", ".npy"])
def test_missing_annotation(tmp_path, suffix):
    with pytest.raises(FileNotFoundError, match=r"annotation file not found: .*ann\."):
        auto_read_annotation(tmp_path / f"ann{suffix}")


@pytest.mark.parametrize("suffix", [".json", ".geojson"])
@pytest.mark.parametrize("content,message", [
    (b"", "not valid JSON"), (b"[1, 2", "not valid JSON"), (b"\x89PNG\r\n\x1a\n\x00\x00", "not a UTF-8 text file"),
    (b"42", "neither GeoJSON"), (b"{\"a\": 1}", "neither GeoJSON")])
def test_auto_reader_on_unreadable_json(tmp_path, suffix, content, message):
    path = tmp_path / f"ann{suffix}"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        auto_read_annotation(path)
