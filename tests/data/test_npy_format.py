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


def test_pannuke_masks_npy_is_decoded_per_image(tmp_path, consep_stack):
    from cellzoo.data import PANNUKE_CLASS_NAMES, pannuke_masks_to_labels

    images, instances, classes = consep_stack
    # PanNuke's layout: float64 images, masks N×H×W×6 = one instance map per type + a background channel
    masks = np.zeros(instances.shape + (6,), np.float64)
    for k in range(4):
        masks[..., k] = np.where(classes == k + 1, instances, 0)
    masks[..., 5] = instances == 0
    np.save(tmp_path / "images.npy", images.astype(np.float64))
    np.save(tmp_path / "masks.npy", masks)
    data = Dataset.from_npy(tmp_path)  # finds masks.npy when there is no labels.npy
    assert data.class_names == PANNUKE_CLASS_NAMES and len(data) == 3
    sample = data[2]
    assert sample.image.dtype == np.float64 and sample.labels.dtype == np.int32
    pairs = np.unique(np.stack([sample.labels[instances[2] > 0], instances[2][instances[2] > 0]]), axis=1)
    assert np.array_equal(sample.labels > 0, instances[2] > 0) and pairs.shape[1] == len(np.unique(instances[2])) - 1
    both = instances[2] > 0
    assert np.array_equal(sample.classes[both], classes[2][both])
    # ids repeating across type channels become distinct objects
    tiny = np.zeros((2, 3, 6))
    tiny[0, 0, 0] = tiny[1, 2, 3] = 1
    labels, types = pannuke_masks_to_labels(tiny)
    assert labels[0, 0] != labels[1, 2] and types[0, 0] == 1 and types[1, 2] == 4
