"""Images, label maps, annotation formats and datasets.

- :mod:`~cellzoo.data.io`: ``read_image`` / ``write_image``, ``read_labels`` / ``write_labels``,
  ``read_class_map`` / ``write_class_map``.
- Formats: MoNuSeg/MoNuSAC XML, CoNIC/PanNuke ``.npy``, COCO (polygons, RLE) and COCO results lists,
  class folders, QuPath GeoJSON; ``auto_read_annotation`` reads any of them.
- :class:`Dataset` (lazy samples, seeded split) and ``load_shared_dataset`` for ``../shared/data``.
"""
from cellzoo.data.sample import Sample
from cellzoo.data.io import (IMAGE_SUFFIXES, LABEL_SUFFIXES, labels_as_int32, read_class_map, read_image,
                             read_labels, write_class_map, write_image, write_labels)
from cellzoo.data.xml_annotations import (MONUSAC_CLASS_NAMES, labels_to_xml, read_xml_annotations,
                                          write_xml_annotations)
from cellzoo.data.npy import PANNUKE_CLASS_NAMES, pannuke_masks_to_labels, read_npy, write_npy
from cellzoo.data.coco import (coco_class_names, coco_to_labels, instance_rles, instances_to_coco_results,
                               labels_to_coco_annotations, read_coco, read_coco_results, segmentation_to_mask,
                               to_coco, write_coco, write_coco_results)
from cellzoo.data.class_folders import read_class_folder, write_class_folder
from cellzoo.data.geojson import labels_to_geojson, read_geojson, write_geojson
from cellzoo.data.formats import ANNOTATION_SUFFIXES, auto_read_annotation
from cellzoo.data._polygons import instance_classes, labels_to_polygons
from cellzoo.data.dataset import (CONSEP_CLASS_NAMES, SHARED_DATASETS, Dataset, load_shared_dataset)

__all__ = [
    "Sample", "Dataset", "load_shared_dataset", "SHARED_DATASETS", "CONSEP_CLASS_NAMES", "MONUSAC_CLASS_NAMES",
    "IMAGE_SUFFIXES", "LABEL_SUFFIXES", "ANNOTATION_SUFFIXES",
    "read_image", "write_image", "read_labels", "write_labels", "read_class_map", "write_class_map",
    "labels_as_int32",
    "read_xml_annotations", "write_xml_annotations", "labels_to_xml",
    "read_npy", "write_npy", "pannuke_masks_to_labels", "PANNUKE_CLASS_NAMES",
    "read_coco", "write_coco", "to_coco", "labels_to_coco_annotations", "coco_to_labels", "coco_class_names",
    "segmentation_to_mask", "instance_rles", "instances_to_coco_results", "read_coco_results", "write_coco_results",
    "read_class_folder", "write_class_folder",
    "read_geojson", "write_geojson", "labels_to_geojson",
    "auto_read_annotation", "labels_to_polygons", "instance_classes",
]
