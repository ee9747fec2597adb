"""napari sample data: the bundled CC0 DSB 2018 fluorescence image with its ground-truth instances."""
from __future__ import annotations

from cellzoo.data.io import read_image, read_labels
from cellzoo.data.samples import sample_image_path, sample_labels_path

_SOURCE = "DSB 2018 / BBBC038 (CC0 1.0), image 5f9d29d6…"


def dsb2018_nuclei() -> list[tuple]:
    """Image and ground-truth labels, as napari LayerData tuples."""
    image = read_image(sample_image_path())
    labels = read_labels(sample_labels_path())
    return [
        (image, {"name": "dsb2018 nuclei", "metadata": {"source": _SOURCE}}, "image"),
        (labels, {"name": "dsb2018 nuclei ground truth", "metadata": {"source": _SOURCE}}, "labels"),
    ]
