import json

import numpy as np
import pytest
from skimage import io

from cellzoo.annotate import COLUMNS, TrainingSetWriter, instance_table, read_training_set


def test_instance_table_hand_computed():
    labels = np.zeros((5, 6), np.int32)
    labels[0:2, 0:2] = 2          # 4 px, centroid (0.5, 0.5)
    labels[3:5, 2:5] = 9          # 6 px, centroid (3.5, 3)
    classes = np.zeros_like(labels, dtype=np.uint8)
    classes[labels == 2] = 3
    classes[labels == 9] = 1
    classes[4, 4] = 2             # minority pixel: the majority class wins
    table = instance_table(labels, classes, ["background", "a", "b", "c"], scores={9: 0.8})
    assert tuple(table) == COLUMNS
    np.testing.assert_array_equal(table["label"], [2, 9])
    np.testing.assert_array_equal(table["area"], [4, 6])
    np.testing.assert_allclose(table["centroid_y"], [0.5, 3.5])
    np.testing.assert_allclose(table["centroid_x"], [0.5, 3.0])
    np.testing.assert_array_equal(table["class"], [3, 1])
    assert list(table["class_name"]) == ["c", "a"]
    assert np.isnan(table["score"][0]) and table["score"][1] == 0.8
    empty = instance_table(np.zeros((3, 3), np.int32))
    assert all(len(v) == 0 for v in empty.values())


def test_instance_table_real_consep(shared_data):
    root = shared_data / "consep" / "test"
    labels = io.imread(root / "inst" / "test_1_000.png").astype(np.int32)
    classes = io.imread(root / "class" / "test_1_000.png")
    table = instance_table(labels, classes, ["background", "other", "inflammatory", "epithelial", "spindle"])
    ids = np.unique(labels)[1:]
    np.testing.assert_array_equal(table["label"], ids)
    assert table["area"].sum() == (labels > 0).sum()
    k = len(ids) // 2
    yy, xx = np.nonzero(labels == ids[k])
    assert table["centroid_y"][k] == pytest.approx(yy.mean()) and table["centroid_x"][k] == pytest.approx(xx.mean())
    assert np.bincount(classes[labels == ids[k]]).argmax() == table["class"][k]


def test_training_set_round_trip(tmp_path, shared_data):
    root = shared_data / "consep" / "train"
    image = io.imread(root / "images" / "train_2_000.jpg")
    labels = io.imread(root / "inst" / "train_2_000.png").astype(np.int32)
    classes = io.imread(root / "class" / "train_2_000.png").astype(np.uint8)
    writer = TrainingSetWriter(tmp_path / "set")
    # two different images from layers of the same name: safe, unique file names
    got = [writer.add(im, labels, classes, source_layer="CoNSeP patch", model="cellzoo-he",
                      class_names=["background", "other", "inflammatory", "epithelial", "spindle"])
           for im in (image, image[::-1, ::-1].copy())]
    assert got == ["CoNSeP_patch", "CoNSeP_patch_2"] and writer.replaced is None
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert [e["name"] for e in manifest["entries"]] == got
    entry = manifest["entries"][0]
    assert entry["source_layer"] == "CoNSeP patch" and entry["model"] == "cellzoo-he" and entry["time"]
    assert entry["class_names"][3] == "epithelial"
    samples = read_training_set(tmp_path / "set")
    assert len(samples) == 2
    np.testing.assert_array_equal(samples[0].image, image)
    np.testing.assert_array_equal(samples[0].labels, labels)
    np.testing.assert_array_equal(samples[0].classes, classes)
    assert samples[1].meta["source_layer"] == "CoNSeP patch"
    leftovers = [p for p in (tmp_path / "set").rglob("*") if p.name.endswith(".part")]
    assert not leftovers


def test_adding_the_same_image_again_replaces_its_entry(tmp_path, shared_data):
    root = shared_data / "consep" / "train"
    image = io.imread(root / "images" / "train_2_000.jpg")
    labels = io.imread(root / "inst" / "train_2_000.png").astype(np.int32)
    other = io.imread(root / "images" / "train_2_005.jpg")
    other_labels = io.imread(root / "inst" / "train_2_005.png").astype(np.int32)
    writer = TrainingSetWriter(tmp_path / "set")
    assert writer.add(image, labels, source_layer="patch") == "patch"
    assert writer.add(other, other_labels, source_layer="next") == "next" and writer.replaced is None
    corrected = labels.copy()
    corrected[corrected == corrected.max()] = 0  # one more correction, then "Add" again
    # the same pixels (even from a layer of another name): the entry is replaced, not duplicated
    assert writer.add(image.copy(), corrected, source_layer="patch copy") == "patch"
    assert writer.replaced == "patch"
    samples = read_training_set(tmp_path / "set")
    assert [s.name for s in samples] == ["patch", "next"]
    np.testing.assert_array_equal(samples[0].labels, corrected)
    assert samples[0].meta["source_layer"] == "patch copy"
    assert sorted(p.name for p in (tmp_path / "set" / "images").iterdir()) == ["next.tif", "patch.tif"]
    # an entry written before digests were stored is recognised by reading its image back
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    for entry in manifest["entries"]:
        del entry["image_sha256"]
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(manifest))
    assert TrainingSetWriter(tmp_path / "set").add(other, other_labels, source_layer="again") == "next"
    assert len(read_training_set(tmp_path / "set")) == 2


def test_training_set_bad_input_leaves_nothing(tmp_path):
    writer = TrainingSetWriter(tmp_path / "set")
    labels = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="empty"):
        writer.add(np.zeros((4, 4)), labels, source_layer="x")
    labels[1, 1] = 1
    with pytest.raises(ValueError, match="does not match"):
        writer.add(np.zeros((5, 4)), labels, source_layer="x")
    assert not (tmp_path / "set").exists() or not any((tmp_path / "set").rglob("*.tif"))
    with pytest.raises(FileNotFoundError, match="not a cellzoo training set"):
        read_training_set(tmp_path / "set")


def test_training_set_failure_mid_add_removes_written_files(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "classes").write_text("a file where the classes folder should be")
    labels = np.zeros((8, 8), np.int32)
    labels[2:4, 2:4] = 1
    with pytest.raises(OSError):  # images/ and labels/ are written, classes/ cannot be created
        TrainingSetWriter(folder).add(np.zeros((8, 8), np.uint8), labels, source_layer="second")
    assert not list(folder.rglob("*.tif")) and not (folder / "manifest.json").exists()


def test_training_set_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    labels = np.zeros((6, 6), np.int32)
    labels[1:3, 1:3] = 1
    TrainingSetWriter("~/set").add(np.zeros((6, 6), np.uint8), labels, source_layer="x")
    assert (tmp_path / "set" / "manifest.json").is_file()
    assert [s.name for s in read_training_set("~/set")] == ["x"]
