"""Reader, writers and sample data of the napari plugin, on real files from ../shared/data."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cellzoo._napari._reader import get_reader
from cellzoo._napari._sample_data import dsb2018_nuclei
from cellzoo._napari._writer import write_labels_tif
from cellzoo.data.io import read_labels


def _one_dsb(shared_data):
    image = sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0]
    return image, shared_data / "dsb2018" / "test" / "masks" / image.name


def test_reader_tells_images_from_label_maps(shared_data):
    image_path, mask_path = _one_dsb(shared_data)
    [(image, image_meta, image_kind)] = get_reader(str(image_path))(str(image_path))
    [(labels, labels_meta, labels_kind)] = get_reader(str(mask_path))(str(mask_path))
    assert image_kind == "image" and labels_kind == "labels"
    assert labels.dtype == np.int32 and labels.shape == image.shape[:2]
    assert np.array_equal(labels, tifffile.imread(mask_path).astype(np.int32))
    assert labels_meta["metadata"]["source_path"] == str(mask_path)


def test_reader_reads_consep_rgb_image_instances_and_classes(shared_data):
    split = shared_data / "consep" / "test"
    name = sorted((split / "images").glob("*.jpg"))[0].stem
    paths = [str(split / "images" / f"{name}.jpg"), str(split / "inst" / f"{name}.png"),
             str(split / "class" / f"{name}.png")]
    layers = get_reader(paths)(paths)
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "labels", "labels"]
    image, inst, classes = (data for data, _, _ in layers)
    assert layers[0][1]["rgb"] is True and image.shape == (256, 256, 3)
    assert inst.dtype == np.int32 and inst.max() > 10
    assert classes.dtype == np.uint8 and set(np.unique(classes)) <= {0, 1, 2, 3, 4}
    assert layers[2][1]["name"].endswith("classes")
    # every nucleus pixel has a type in CoNSeP
    assert np.array_equal(inst > 0, classes > 0)


def test_reader_declines_unknown_files(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert get_reader(str(path)) is None


def test_writer_round_trips_labels_as_tif(tmp_path, shared_data):
    _, mask_path = _one_dsb(shared_data)
    labels = read_labels(mask_path)
    [written] = write_labels_tif(str(tmp_path / "pred"), labels, {"name": "pred"})
    assert written.endswith("pred.tif")
    assert np.array_equal(read_labels(written), labels)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.tif"]  # no temp files left behind


def test_writer_rejects_3d_layers_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="2-D label maps"):
        write_labels_tif(str(tmp_path / "x.tif"), np.zeros((2, 4, 4), np.int32), {"name": "stack"})
    assert not any(tmp_path.iterdir())


def test_sample_data_is_image_with_matching_labels():
    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = dsb2018_nuclei()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == labels.shape == (520, 696)
    assert labels.dtype == np.int32 and len(np.unique(labels)) - 1 == 148
    assert "CC0" in image_meta["metadata"]["source"]


def test_viewer_opens_files_and_sample_through_the_plugin(make_napari_viewer, shared_data, tmp_path):
    viewer = make_napari_viewer()
    image_path, mask_path = _one_dsb(shared_data)
    viewer.open(str(image_path), plugin="napari-cellzoo")
    viewer.open(str(mask_path), plugin="napari-cellzoo")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    viewer.open_sample("napari-cellzoo", "dsb2018_nuclei")
    assert viewer.layers[-1].name == "dsb2018 nuclei ground truth"
    out = tmp_path / "saved.tif"
    viewer.layers[-1].save(str(out), plugin="napari-cellzoo")
    assert np.array_equal(read_labels(out), viewer.layers[-1].data)
