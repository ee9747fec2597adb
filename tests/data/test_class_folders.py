"""The class-folder layout <sample>/image.tif + class1.tif … classN.tif."""
from __future__ import annotations

import numpy as np
import pytest
from data_helpers import same_partition

from cellzoo.data import Dataset, read_class_folder, read_labels, write_class_folder, write_image, write_labels


def test_round_trip_on_a_real_consep_patch(tmp_path, consep_patch):
    image, truth, truth_classes = consep_patch
    folder = write_class_folder(tmp_path / "test_11_003", image, truth, truth_classes, n_classes=5)
    assert sorted(p.name for p in folder.iterdir()) == ["class1.tif", "class2.tif", "class3.tif", "class4.tif",
                                                        "class5.tif", "image.tif"]
    assert not read_labels(folder / "class5.tif").any()  # requested but empty class
    back_image, labels, classes = read_class_folder(folder)
    assert np.array_equal(back_image, image)
    assert same_partition(labels, truth)
    both = truth > 0
    assert np.mean(classes[both] == truth_classes[both]) > 0.99  # one class per object (its majority)


def test_ids_repeating_across_class_files_are_made_unique(tmp_path):
    image = np.zeros((4, 6), np.uint8)
    class1 = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 2, 2], [0, 0, 0, 0, 0, 0]])
    class2 = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [7, 7, 0, 0, 0, 0]])
    write_image(tmp_path / "s" / "image.png", image)
    write_labels(tmp_path / "s" / "class1.tif", class1)
    write_labels(tmp_path / "s" / "class2.png", class2)
    _, labels, classes = read_class_folder(tmp_path / "s")
    assert np.array_equal(labels, [[1, 1, 0, 3, 3, 0], [0] * 6, [0, 0, 0, 0, 2, 2], [4, 4, 0, 0, 0, 0]])
    assert np.array_equal(classes, [[1, 1, 0, 2, 2, 0], [0] * 6, [0, 0, 0, 0, 1, 1], [2, 2, 0, 0, 0, 0]])


def test_without_classes_everything_goes_to_class1_and_dataset_reads_folders(tmp_path, consep_patch):
    image, truth, truth_classes = consep_patch
    write_class_folder(tmp_path / "a", image, truth)
    write_class_folder(tmp_path / "b", image[:128], truth[:128], truth_classes[:128], image_format=".png")
    assert [p.name for p in sorted((tmp_path / "a").iterdir())] == ["class1.tif", "image.tif"]
    data = Dataset.from_class_folders(tmp_path)
    assert data.names == ["a", "b"] and data.class_names == ["background", "class_1", "class_2", "class_3", "class_4"]
    assert same_partition(data[0].labels, truth) and set(np.unique(data[0].classes)) == {0, 1}
    assert data[1].image.shape == (128, 256, 3)


def test_errors(tmp_path, consep_patch):
    image, truth, truth_classes = consep_patch
    with pytest.raises(FileNotFoundError):
        read_class_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="exactly one image"):
        read_class_folder(tmp_path / "empty")
    write_image(tmp_path / "noclass" / "image.tif", image)
    with pytest.raises(ValueError, match="no class1.tif"):
        read_class_folder(tmp_path / "noclass")
    write_labels(tmp_path / "noclass" / "class1.tif", truth[:100])
    with pytest.raises(ValueError, match="must match the image size"):
        read_class_folder(tmp_path / "noclass")
    unclassified = truth_classes.copy()
    unclassified[truth == truth.max()] = 0
    with pytest.raises(ValueError, match="class 0"):
        write_class_folder(tmp_path / "x", image, truth, unclassified)
    with pytest.raises(ValueError, match="n_classes=2"):
        write_class_folder(tmp_path / "x", image, truth, truth_classes, n_classes=2)
