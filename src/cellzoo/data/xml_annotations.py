"""MoNuSeg / MoNuSAC polygon XML (Aperio ImageScope layout) ↔ instance (+ class) maps.

Layout: ``Annotations/Annotation/Regions/Region/Vertices/Vertex@X,Y``. MoNuSeg has one Annotation for
all nuclei (its attribute is ``Description``); MoNuSAC has one Annotation per class whose first
``Attributes/Attribute@Name`` is the class name (Epithelial, Lymphocyte, Neutrophil, Macrophage, ...).
Vertex coordinates are pixel indices (pixel (r, c) has its centre at X=c, Y=r), as in the common
MoNuSeg conversion scripts; regions are rasterised with ``skimage.draw.polygon`` in file order.
ImageScope ellipses (``Type="2"``, two bounding-box corners) are drawn as ellipses.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from cellzoo._atomic import atomic_write_bytes
from cellzoo.data import _polygons
from cellzoo.data.validate import regular_file

#: MoNuSAC's classes in the order used by the shared ``monusac_sample`` class maps.
MONUSAC_CLASS_NAMES = list(_polygons.KNOWN_CLASS_NAMES[0])
#: Attribute names that mean "no class" (MoNuSeg writes ``Description``).
_UNCLASSIFIED = {"", "description"}
#: Vertex coordinates are pixel indices.
_XML_CENTER = 0.0


def _annotation_class(annotation: ET.Element) -> str:
    attribute = annotation.find("Attributes/Attribute")
    name = (attribute.get("Name", "") if attribute is not None else "").strip()
    return "" if name.lower() in _UNCLASSIFIED else name


def _region_ring(region: ET.Element, path: Path) -> np.ndarray:
    try:
        ring = np.array([[float(v.get("X")), float(v.get("Y"))] for v in region.iter("Vertex")], dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: a Vertex in Region {region.get('Id')!r} lacks numeric X/Y "
                         f"attributes ({exc}).") from exc
    if ring.size and not np.isfinite(ring).all():
        raise ValueError(f"{path.name}: a Vertex in Region {region.get('Id')!r} is not finite "
                         f"({ring[~np.isfinite(ring).all(axis=1)][0].tolist()}); every X/Y must be a finite number.")
    if region.get("Type") == "2" and len(ring) == 2:
        # ImageScope ellipse: two vertices are opposite corners of its bounding box
        (x0, y0), (x1, y1) = ring
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        ring = np.stack([(x0 + x1) / 2 + abs(x1 - x0) / 2 * np.cos(angles),
                         (y0 + y1) / 2 + abs(y1 - y0) / 2 * np.sin(angles)], axis=1)
    return ring


def read_xml_annotations(path: str | os.PathLike, shape: tuple[int, int] | None = None,
                         class_names: list[str] | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Rasterise a MoNuSeg/MoNuSAC XML file.

    Returns ``(labels int32, classes uint8 or None, class_names)``. ``shape`` is the image's (H, W);
    without it the map just covers every vertex. Class ids follow ``class_names`` (matched
    case-insensitively; names not in it are appended); by default MoNuSAC's (or CoNSeP's) order when every
    name is one of its classes, else order of appearance. Files without class names give ``classes=None``.
    """
    path = regular_file(path, "XML annotation file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path.name} is not well-formed XML ({exc}).") from exc
    annotations = [root] if root.tag == "Annotation" else root.findall("Annotation")
    if not annotations:
        raise ValueError(f"{path.name} has no <Annotation> elements; expected the MoNuSeg/MoNuSAC "
                         f"layout Annotations/Annotation/Regions/Region/Vertices/Vertex.")
    objects: list[tuple[str, np.ndarray]] = []
    for annotation in annotations:
        name = _annotation_class(annotation)
        for region in annotation.iter("Region"):
            ring = _region_ring(region, path)
            if len(ring) >= 3:
                objects.append((name, ring))
    names_seen = list(dict.fromkeys(name for name, _ in objects if name))
    class_names = list(class_names) if class_names is not None else _polygons.default_class_names(names_seen)
    lookup = {n.lower(): k for k, n in enumerate(class_names)}
    for name in names_seen:
        if name.lower() not in lookup:
            lookup[name.lower()] = len(class_names)
            class_names.append(name)
    if len(class_names) > 256:
        raise ValueError(f"{path.name} names {len(class_names) - 1} classes; a class map holds at most 255.")
    if shape is None:
        shape = _polygons.extent_of((ring for _, ring in objects), _XML_CENTER, path.name)
    labels = _polygons.rasterise(((k, [ring], []) for k, (_, ring) in enumerate(objects, start=1)),
                                 tuple(shape), _XML_CENTER, path.name)
    if not names_seen:
        return labels, None, ["background", "nucleus"]
    class_of = {k: lookup[name.lower()] if name else 0 for k, (name, _) in enumerate(objects, start=1)}
    return labels, _polygons.class_map_from(labels, class_of), class_names


def labels_to_xml(labels: np.ndarray, classes: np.ndarray | None = None, class_names: list[str] | None = None,
                  microns_per_pixel: float | None = None, tolerance: float = 0.0) -> bytes:
    """XML bytes in the MoNuSeg layout (``classes=None``) or MoNuSAC layout (one Annotation per class)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D instance map, got shape {labels.shape}.")
    polygons = _polygons.labels_to_polygons(labels, tolerance, _XML_CENTER)
    class_of = _polygons.instance_classes(labels, classes) if classes is not None else {}
    names = _polygons.class_names_or_default(class_names, max(class_of.values(), default=0))
    groups: dict[int, list[list[np.ndarray]]] = {}
    for index, rings in polygons:
        groups.setdefault(class_of.get(index, 0), []).append(rings)
    root = ET.Element("Annotations")
    if microns_per_pixel is not None:
        root.set("MicronsPerPixel", f"{microns_per_pixel:.6f}")
    for annotation_id, cls in enumerate(sorted(groups), start=1):
        annotation = ET.SubElement(root, "Annotation", Id=str(annotation_id), Name="", ReadOnly="0",
                                   LineColor="65280", Visible="1", Selected="0")
        attributes = ET.SubElement(annotation, "Attributes")
        label = names[cls] if cls else "Description"
        ET.SubElement(attributes, "Attribute", Name=label, Id="0", Value="")
        regions = ET.SubElement(annotation, "Regions")
        region_id = 0
        for rings in groups[cls]:
            for ring in rings:
                region_id += 1
                region = ET.SubElement(regions, "Region", Id=str(region_id), Type="0", NegativeROA="0")
                vertices = ET.SubElement(region, "Vertices")
                for x, y in ring:
                    ET.SubElement(vertices, "Vertex", X=f"{x:.6g}", Y=f"{y:.6g}", Z="0")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_xml_annotations(path: str | os.PathLike, labels: np.ndarray, classes: np.ndarray | None = None,
                          class_names: list[str] | None = None, microns_per_pixel: float | None = None,
                          tolerance: float = 0.0) -> Path:
    """Write :func:`labels_to_xml` atomically. Objects in several pieces become several regions; holes
    are filled (the format has no holes)."""
    path = Path(path)
    atomic_write_bytes(path, labels_to_xml(labels, classes, class_names, microns_per_pixel, tolerance))
    return path
