"""CoNIC / PanNuke images.npy + labels.npy, built from real CoNSeP patches."""
from __future__ import annotations

import numpy as np
import pytest

from cellzoo.data import Dataset, read_class_map, read_image, read_labels, read_npy, write_npy


@pytest.fixture(scope="module")
def consep_stack(shared_data):
    folder = shared_data / "consep" / "test"
    names = ["test_11_003", "test_11_006", "test_1_000"]
    images = np.stack([read_image(folder / "images" / f"{n}.jpg") for n in names])
    instances = np.stack([read_labels(folder / "inst" / f"{n}.png") for n in names])
    classes = np.stack([read_class_map(folder / "class" / f"{n}.png") for n in names])
    return images, instances, classes


def test_round_trip_with_classes(tmp_path, consep_stack):
    images, instances, classes = consep_stack
    images_path, labels_path = write_npy(tmp_path, images, instances, classes)
    raw = np.load(labels_path)
    assert raw.shape == (3, 256, 256, 2) and raw.dtype == np.uint16  # the CoNIC layout
    back_images, back_instances, back_classes = read_npy(tmp_path)
    assert isinstance(back_images, np.memmap)  # lazily read
    assert np.array_equal(back_images, images)
    assert np.array_equal(back_instances, instances) and np.array_equal(back_classes, classes)
    # explicit paths work too, and without memory-mapping
    again = read_npy(images_path, labels_path, mmap=False)
    assert not isinstance(again[0], np.memmap) and np.array_equal(again[1], instances)


def test_instances_only(tmp_path, consep_stack):
    images, instances, _ = consep_stack
    write_npy(tmp_path, images, instances)
    back_images, back_instances, back_classes = read_npy(tmp_path / "images.npy")
    assert back_classes is None and np.array_equal(back_instances, instances)


def test_dataset_from_npy(tmp_path, consep_stack):
    images, instances, classes = consep_stack
    write_npy(tmp_path, images, instances, classes)
    data = Dataset.from_npy(tmp_path)
    assert len(data) == 3 and data.names == ["00000", "00001", "00002"]
    assert data.class_names == ["background", "class_1", "class_2", "class_3", "class_4"]
    sample = data[1]
    assert sample.labels.dtype == np.int32 and sample.classes.dtype == np.uint8
    assert np.array_equal(sample.image, images[1]) and np.array_equal(sample.labels, instances[1])
    assert np.array_equal(sample.classes, classes[1])


def test_mismatched_and_unsafe_arrays_are_rejected(tmp_path, consep_stack):
    images, instances, classes = consep_stack
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", np.stack([instances[:2], classes[:2]], axis=-1))
    with pytest.raises(ValueError, match="must match one to one"):
        read_npy(tmp_path)
    np.save(tmp_path / "labels.npy", np.zeros((3, 256, 256, 3), np.uint16))
    with pytest.raises(ValueError, match=r"expected N×H×W×2"):
        read_npy(tmp_path)
    np.save(tmp_path / "labels.npy", np.array([{"evil": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="plain .npy"):
        read_npy(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_npy(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="0..65535"):
        write_npy(tmp_path / "w", images, instances + 70000)
