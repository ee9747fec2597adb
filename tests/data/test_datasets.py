"""Dataset constructors, lazy samples, seeded split, and the shared ../shared/data layouts."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from data_helpers import same_partition

from cellzoo.data import (CONSEP_CLASS_NAMES, MONUSAC_CLASS_NAMES, Dataset, Sample, load_shared_dataset,
                          read_image, read_labels, to_coco, write_class_folder, write_coco, write_geojson,
                          write_image, write_labels, write_npy, write_xml_annotations)


# ----------------------------------------------------------------------------- shared datasets
@pytest.mark.parametrize("name,split,count,classes", [
    ("monuseg2018", "train", 30, None), ("monuseg2018", "test", 14, None),
    ("dsb2018", "train", 447, None), ("dsb2018", "test", 50, None),
    ("consep", "train", 432, CONSEP_CLASS_NAMES), ("consep", "test", 224, CONSEP_CLASS_NAMES),
    ("consep_stitched", "test", 14, CONSEP_CLASS_NAMES), ("monusac_sample", None, 3, MONUSAC_CLASS_NAMES)])
def test_shared_datasets_pair_every_image(shared_data, name, split, count, classes):
    data = load_shared_dataset(name, split, root=shared_data)
    assert len(data) == count and len(set(data.names)) == count
    sample = data[0]
    assert isinstance(sample, Sample) and sample.name == data.names[0]
    assert sample.labels.dtype == np.int32 and sample.labels.shape == sample.image.shape[:2]
    assert sample.labels.max() > 0
    if classes is None:
        assert sample.classes is None and data.class_names == ["background", "nucleus"]
    else:
        assert data.class_names == classes
        assert sample.classes.dtype == np.uint8 and 0 < sample.classes.max() < len(classes)


def test_shared_dataset_matches_files_on_disk(shared_data):
    data = load_shared_dataset("monuseg2018", "test")  # default root: ../shared/data
    name = data.names[3]
    assert np.array_equal(data[3].image, read_image(shared_data / "monuseg2018/images/test" / f"{name}.png"))
    assert np.array_equal(data[name].labels, read_labels(shared_data / "monuseg2018/labels/test" / f"{name}.png"))
    assert data[3].meta["file_name"] == f"{name}.png"


def test_stitched_consep_tiles_hold_the_published_nucleus_count(shared_data):
    data = load_shared_dataset("consep_stitched", "test", root=shared_data)
    total = sum(len(np.unique(read_labels(p))) - 1
                for p in sorted((shared_data / "consep/stitched/test/inst").glob("*.png")))
    assert total == 8777  # README: matches the published CoNSeP test total
    assert data[0].image.shape == (1000, 1000, 3)


def test_consep_split_keeps_each_tile_on_one_side(shared_data):
    data = load_shared_dataset("consep", "train", root=shared_data)
    train, val = data.split(0.2, seed=3)
    assert len(train) + len(val) == len(data)
    tiles_train = {n.rsplit("_", 1)[0] for n in train.names}
    tiles_val = {n.rsplit("_", 1)[0] for n in val.names}
    assert not tiles_train & tiles_val and len(tiles_val) == round(0.2 * 27)
    assert len(val) == 16 * len(tiles_val)  # 16 overlapping patches per tile


def test_unknown_names_and_splits(shared_data, tmp_path):
    with pytest.raises(ValueError, match="unknown shared dataset 'kumar'"):
        load_shared_dataset("kumar", "test")
    with pytest.raises(ValueError, match="has split"):
        load_shared_dataset("monuseg2018", "val")
    with pytest.raises(ValueError, match="stitched train tiles have no images"):
        load_shared_dataset("consep_stitched", "train")
    with pytest.raises(FileNotFoundError, match="shared data folder not found"):
        load_shared_dataset("dsb2018", "test", root=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- split and sequence behaviour
def _tiny_samples(n):
    return [Sample(f"s{i}", np.full((4, 4), i, np.uint8), np.eye(4, dtype=np.int32) * (i + 1)) for i in range(n)]


def test_split_is_seeded_disjoint_and_covering():
    data = Dataset.from_samples(_tiny_samples(10))
    train, val = data.split(0.3, seed=7)
    assert len(val) == 3 and len(train) == 7
    assert set(train.names).isdisjoint(val.names) and set(train.names) | set(val.names) == set(data.names)
    again = data.split(0.3, seed=7)
    assert again[0].names == train.names and again[1].names == val.names
    others = {tuple(data.split(0.3, seed=s)[1].names) for s in range(10)}
    assert len(others) > 1  # the seed matters
    assert train.names == sorted(train.names, key=data.names.index)  # dataset order kept
    all_train, none = data.split(0.0)
    assert len(all_train) == 10 and len(none) == 0
    assert len(Dataset.from_samples(_tiny_samples(2)).split(0.01)[1]) == 1  # at least one validation sample
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        data.split(1.0)
    with pytest.raises(ValueError, match="cannot split"):
        Dataset.from_samples(_tiny_samples(1)).split(0.5)


def test_indexing_slicing_iteration_and_cache():
    data = Dataset.from_samples(_tiny_samples(5))
    assert data[-1].name == "s4" and data["s2"].image[0, 0] == 2
    assert data[1:3].names == ["s1", "s2"]
    assert "s3" in data and "zz" not in data
    assert [s.name for s in data] == data.names
    with pytest.raises(IndexError):
        data[5]
    with pytest.raises(KeyError, match="no sample named 'zz'"):
        data["zz"]
    calls = []

    def load():
        calls.append(1)
        return _tiny_samples(1)[0]

    cached = Dataset(["s0"], [load]).cached()
    cached[0], cached[0]
    assert len(calls) == 1
    joined = Dataset.concat(data[:2], data[3:])
    assert joined.names == ["s0", "s1", "s3", "s4"]
    with pytest.raises(ValueError, match="unique"):
        Dataset.concat(data, data)


# ----------------------------------------------------------------------------- constructors
def test_from_folders_pairs_by_stem_with_label_suffixes(tmp_path, consep_patch):
    image, truth, truth_classes = consep_patch
    for stem, image_ext, label_name, class_name in (("a", ".png", "a_label.tif", "a_classes.png"),
                                                    ("b", ".tif", "b_instances.png", "b.tif"),
                                                    ("c", ".jpg", "c.tif", "c_class.tif")):
        write_image(tmp_path / "images" / f"{stem}{image_ext}", image)
        write_labels(tmp_path / "labels" / label_name, truth)
        write_labels(tmp_path / "classes" / class_name, truth_classes)
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    data = Dataset.from_folders(tmp_path / "images", tmp_path / "labels", tmp_path / "classes")
    assert data.names == ["a", "b", "c"]
    assert data.class_names == ["background", "class_1", "class_2", "class_3", "class_4"]
    for sample in data:
        assert np.array_equal(sample.labels, truth) and np.array_equal(sample.classes, truth_classes)
    assert pickle.loads(pickle.dumps(data))[1].name == "b"  # loaders survive DataLoader workers
    assert Dataset.from_layout(tmp_path).names == ["a", "b", "c"]
    for path in (tmp_path / "classes").iterdir():
        path.unlink()  # an empty classes/ folder: class-agnostic
    assert Dataset.from_layout(tmp_path)[0].classes is None


def test_from_folders_errors_name_the_files(tmp_path, consep_patch):
    image, truth, _ = consep_patch
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        Dataset.from_folders(tmp_path / "images", tmp_path / "labels")
    write_image(tmp_path / "images" / "a.png", image)
    write_image(tmp_path / "images" / "b.png", image)
    write_labels(tmp_path / "labels" / "a.tif", truth)
    write_labels(tmp_path / "labels" / "zzz.tif", truth)
    with pytest.raises(ValueError, match=r"have no label map .*: b\.png.*have no image .*: zzz\.tif"):
        Dataset.from_folders(tmp_path / "images", tmp_path / "labels")
    (tmp_path / "labels" / "zzz.tif").unlink()
    write_labels(tmp_path / "labels" / "b_label.tif", truth[:100])
    write_labels(tmp_path / "labels" / "b.png", truth)
    with pytest.raises(ValueError, match="both pair with 'b'"):
        Dataset.from_folders(tmp_path / "images", tmp_path / "labels")
    (tmp_path / "labels" / "b.png").unlink()
    data = Dataset.from_folders(tmp_path / "images", tmp_path / "labels")  # shapes are checked on loading
    with pytest.raises(ValueError, match=r"sample 'b': label map shape \(100, 256\)"):
        data[1]
    with pytest.raises(ValueError, match="1 of 2 samples cannot be loaded"):
        data.check()


def test_from_coco_and_layout(tmp_path, shared_data):
    folder = shared_data / "dsb2018" / "test"
    names = [p.name for p in sorted((folder / "images").glob("*.tif"))[:2]]
    for n in names:
        write_image(tmp_path / "images" / n, read_image(folder / "images" / n))
    masks = [(n, read_labels(folder / "masks" / n)) for n in names]
    write_coco(tmp_path / "annotations.json", to_coco(masks))
    for data in (Dataset.from_coco(tmp_path / "annotations.json", tmp_path / "images"), Dataset.from_layout(tmp_path)):
        assert data.names == [n.removesuffix(".tif") for n in names]
        for sample, (_, truth) in zip(data, masks):
            assert same_partition(sample.labels, truth) and sample.classes is None
    (tmp_path / "images" / names[1]).unlink()
    with pytest.raises(FileNotFoundError, match=f"not in .*: {names[1]}"):
        Dataset.from_coco(tmp_path / "annotations.json", tmp_path / "images")


def test_from_geojson_and_xml_share_class_ids_across_files(tmp_path, shared_data):
    # 400×400 crops of the three real MoNuSAC regions keep this quick; the classes differ between them
    data = Dataset.from_samples([Sample(s.name, s.image[:400, :400], s.labels[:400, :400], s.classes[:400, :400])
                                 for s in load_shared_dataset("monusac_sample", root=shared_data)])
    for sample in data:
        write_image(tmp_path / "images" / f"{sample.name}.tif", sample.image)
        write_geojson(tmp_path / "annotations" / f"{sample.name}.geojson", sample.labels, sample.classes,
                      MONUSAC_CLASS_NAMES)
        write_xml_annotations(tmp_path / "xml" / f"{sample.name}.xml", sample.labels, sample.classes, MONUSAC_CLASS_NAMES)
    from_geojson = Dataset.from_geojson(tmp_path / "images", tmp_path / "annotations")
    from_xml = Dataset.from_xml(tmp_path / "images", tmp_path / "xml")
    assert from_geojson.class_names == from_xml.class_names == MONUSAC_CLASS_NAMES
    assert Dataset.from_layout(tmp_path).names == from_geojson.names == data.names
    for truth, a, b in zip(data, from_geojson, from_xml):
        for got in (a, b):
            assert got.labels.shape == truth.labels.shape
            both = (truth.labels > 0) & (got.labels > 0)
            assert both.sum() > 0.98 * (truth.labels > 0).sum()
            assert np.mean(got.classes[both] == truth.classes[both]) > 0.99


def test_from_layout_npy_and_class_folders_and_unknown(tmp_path, consep_patch):
    image, truth, truth_classes = consep_patch
    write_npy(tmp_path / "npy", image[None], truth[None], truth_classes[None])
    assert len(Dataset.from_layout(tmp_path / "npy")) == 1
    write_class_folder(tmp_path / "folders" / "p1", image, truth, truth_classes)
    assert Dataset.from_layout(tmp_path / "folders").names == ["p1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the dataset layout"):
        Dataset.from_layout(tmp_path / "empty")
