"""MoNuSeg / MoNuSAC polygon XML ↔ instance (+ class) maps."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from data_helpers import best_iou_per_object
from scipy import ndimage
from skimage import measure

from cellzoo.data import MONUSAC_CLASS_NAMES, read_class_map, read_labels, read_xml_annotations, write_xml_annotations


def _monuseg_xml(polygons_xy, class_name=None):
    """An XML file laid out like the MoNuSeg 2018 release (one Annotation, attribute 'Description')."""
    root = ET.Element("Annotations", MicronsPerPixel="0.252100")
    annotation = ET.SubElement(root, "Annotation", Id="1", Name="", ReadOnly="0", Type="4")
    attributes = ET.SubElement(annotation, "Attributes")
    ET.SubElement(attributes, "Attribute", Name=class_name or "Description", Id="0", Value="")
    regions = ET.SubElement(annotation, "Regions")
    headers = ET.SubElement(regions, "RegionAttributeHeaders")
    ET.SubElement(headers, "AttributeHeader", Id="9999", Name="Region", ColumnWidth="-1")
    for k, polygon in enumerate(polygons_xy, start=1):
        region = ET.SubElement(regions, "Region", Id=str(k), Type="0", Zoom="0.5", Selected="0")
        ET.SubElement(region, "Attributes")
        vertices = ET.SubElement(region, "Vertices")
        for x, y in polygon:
            ET.SubElement(vertices, "Vertex", X=str(x), Y=str(y), Z="0")
    ET.SubElement(root, "Plots")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _contours_xy(labels, tolerance):
    """Each nucleus's outline at pixel-index coordinates, as an annotator's polygon would be."""
    polygons = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = np.pad(labels[box] == index, 1)
        contour = max(measure.find_contours(mask.astype(float), 0.5), key=len)
        if tolerance:
            contour = measure.approximate_polygon(contour, tolerance)
        polygons.append(contour[:, ::-1] + [box[1].start - 1, box[0].start - 1])
    return polygons


def test_hand_built_square_and_triangle(tmp_path):
    square = [(2, 2), (5, 2), (5, 5), (2, 5)]  # x, y pixel indices: rows 2..5, cols 2..5 (boundary included)
    triangle = [(8, 1), (8, 3), (10, 1)]       # x 8..10, y 1..3
    path = tmp_path / "t.xml"
    path.write_bytes(_monuseg_xml([square, triangle]))
    labels, classes, names = read_xml_annotations(path, shape=(8, 12))
    expected = np.zeros((8, 12), np.int32)
    expected[2:6, 2:6] = 1
    expected[1, 8:11] = 2
    expected[2, 8:10] = 2
    expected[3, 8] = 2
    assert np.array_equal(labels, expected)
    assert classes is None and names == ["background", "nucleus"]
    labels, _, _ = read_xml_annotations(path)  # no shape: just large enough for every vertex
    assert labels.shape == (6, 11) and np.array_equal(labels, expected[:6, :11])


# exact outlines come back (all but a nucleus with a hole); 1-pixel simplified ones, as annotators draw, closely
@pytest.mark.parametrize("tolerance,low_iou,median_iou", [(0.0, 0.99, 1.0), (1.0, 0.85, 0.95)])
def test_real_monuseg_outlines_rasterise_back(tmp_path, monuseg_pair, tolerance, low_iou, median_iou):
    truth = monuseg_pair[1][:400, :400]
    polygons = _contours_xy(truth, tolerance)
    path = tmp_path / "monuseg.xml"
    path.write_bytes(_monuseg_xml(polygons))
    labels, classes, _ = read_xml_annotations(path, shape=truth.shape)
    ious = best_iou_per_object(truth, labels)
    assert len(polygons) == len(ious)
    # simplifying may collapse a tiny nucleus to a line (one in this crop)
    assert len(np.unique(labels)) - 1 >= len(polygons) - (0 if tolerance == 0 else 1)
    values = np.array(list(ious.values()))
    assert np.percentile(values, 5) >= low_iou and np.median(values) >= median_iou


def test_monuseg_writer_round_trip_is_exact(tmp_path, monuseg_pair):
    truth = monuseg_pair[1]
    # the format has no holes; pieces of one nucleus become separate regions
    filled = np.zeros_like(truth)
    for index, box in enumerate(ndimage.find_objects(truth), start=1):
        if box is not None:
            filled[box][ndimage.binary_fill_holes(truth[box] == index)] = index
    path = write_xml_annotations(tmp_path / "out.xml", truth, microns_per_pixel=0.2521)
    root = ET.parse(path).getroot()
    assert root.get("MicronsPerPixel") == "0.252100"
    assert root.find("Annotation/Attributes/Attribute").get("Name") == "Description"
    labels, classes, _ = read_xml_annotations(path, shape=truth.shape)
    assert classes is None
    assert np.array_equal(labels > 0, filled > 0)
    ious = best_iou_per_object(filled, labels)
    assert np.mean([v == 1.0 for v in ious.values()]) > 0.99  # the rest are nuclei in several pieces


def test_monusac_round_trip_keeps_classes(tmp_path, shared_data):
    name = "A9K0_3"
    truth = read_labels(shared_data / "monusac_sample/inst" / f"{name}.png")
    truth_classes = read_class_map(shared_data / "monusac_sample/class" / f"{name}.png")
    path = write_xml_annotations(tmp_path / f"{name}.xml", truth, truth_classes, MONUSAC_CLASS_NAMES)
    annotation_names = [a.find("Attributes/Attribute").get("Name") for a in ET.parse(path).getroot()]
    assert set(annotation_names) <= set(MONUSAC_CLASS_NAMES[1:])  # one Annotation per class
    labels, classes, names = read_xml_annotations(path, shape=truth.shape)
    assert names == MONUSAC_CLASS_NAMES
    ious = best_iou_per_object(truth, labels)
    assert np.mean(list(ious.values())) > 0.99
    both = (truth > 0) & (labels > 0)
    assert np.mean(classes[both] == truth_classes[both]) > 0.999


def test_monusac_names_match_case_insensitively_and_unknown_are_appended(tmp_path):
    root = ET.Element("Annotations")
    for name, square in (("Lymphocyte", (1, 1)), ("Ambiguous", (6, 1)), ("Epithelial", (1, 6))):
        annotation = ET.SubElement(root, "Annotation", Id="1")
        ET.SubElement(ET.SubElement(annotation, "Attributes"), "Attribute", Name=name, Id="0", Value="")
        vertices = ET.SubElement(ET.SubElement(ET.SubElement(annotation, "Regions"), "Region", Id="1"), "Vertices")
        x, y = square
        for vx, vy in ((x, y), (x + 2, y), (x + 2, y + 2), (x, y + 2)):
            ET.SubElement(vertices, "Vertex", X=str(vx), Y=str(vy))
    path = tmp_path / "monusac.xml"
    path.write_bytes(ET.tostring(root))
    labels, classes, names = read_xml_annotations(path, shape=(10, 10))
    assert names == ["background", "Lymphocyte", "Ambiguous", "Epithelial"]  # order of appearance
    labels, classes, names = read_xml_annotations(path, shape=(10, 10), class_names=MONUSAC_CLASS_NAMES)
    assert names == MONUSAC_CLASS_NAMES + ["Ambiguous"]
    assert classes[2, 2] == 2 and classes[2, 7] == 5 and classes[7, 2] == 1
    assert labels[2, 2] == 1 and labels[2, 7] == 2 and labels[7, 2] == 3


def test_imagescope_ellipse_region(tmp_path):
    from skimage.draw import ellipse

    path = tmp_path / "ellipse.xml"
    path.write_text('<Annotations><Annotation Id="1"><Regions><Region Id="1" Type="2"><Vertices>'
                    '<Vertex X="2" Y="3"/><Vertex X="12" Y="9"/></Vertices></Region></Regions>'
                    '</Annotation></Annotations>')
    labels, _, _ = read_xml_annotations(path, shape=(14, 16))
    expected = np.zeros((14, 16), bool)
    expected[ellipse(6, 7, 3, 5, shape=(14, 16))] = True  # centre (row 6, col 7), radii 3 and 5
    assert (labels > 0).sum() > 40
    assert np.logical_xor(labels > 0, expected).sum() <= 0.1 * expected.sum()


def test_bad_xml_files_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_xml_annotations(tmp_path / "missing.xml")
    (tmp_path / "broken.xml").write_text("<Annotations><Annotation>")
    with pytest.raises(ValueError, match="not well-formed"):
        read_xml_annotations(tmp_path / "broken.xml")
    (tmp_path / "empty.xml").write_text("<Something/>")
    with pytest.raises(ValueError, match="no <Annotation>"):
        read_xml_annotations(tmp_path / "empty.xml")
    (tmp_path / "nox.xml").write_text('<Annotations><Annotation><Regions><Region Id="3"><Vertices>'
                                      '<Vertex Y="1"/></Vertices></Region></Regions></Annotation></Annotations>')
    with pytest.raises(ValueError, match="lacks numeric X/Y"):
        read_xml_annotations(tmp_path / "nox.xml")
