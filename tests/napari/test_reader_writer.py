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
    # a label map saved under a label-ish name is claimed by the plugin; its pixels make it Labels
    named = tmp_path / f"{mask_path.stem}_mask.tif"
    named.write_bytes(mask_path.read_bytes())
    viewer.open(str(image_path))  # plain image: napari's own reader, no choice to make
    viewer.open(str(named), plugin="napari-cellzoo")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    viewer.open_sample("napari-cellzoo", "dsb2018_nuclei")
    assert viewer.layers[-1].name == "dsb2018 nuclei ground truth"
    out = tmp_path / "saved.tif"
    viewer.layers[-1].save(str(out), plugin="napari-cellzoo")
    assert np.array_equal(read_labels(out), viewer.layers[-1].data)


# ----------------------------------------------------------------------------- label maps by content
def test_monuseg_label_pngs_are_labels_and_their_images_are_images(shared_data):
    labels_path = sorted((shared_data / "monuseg2018" / "labels" / "test").glob("*.png"))[0]
    image_path = shared_data / "monuseg2018" / "images" / "test" / labels_path.name  # same file name
    [(labels, _, labels_kind)] = get_reader(str(labels_path))(str(labels_path))
    [(image, image_meta, image_kind)] = get_reader(str(image_path))(str(image_path))
    assert labels_kind == "labels" and labels.dtype == np.int32 and labels.max() > 100
    assert np.array_equal(labels, read_labels(labels_path))
    assert image_kind == "image" and image_meta["rgb"] and image.shape == (1000, 1000, 3)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_the_plugins_own_saved_labels_read_back_as_labels(tmp_path, shared_data, suffix):
    labels = read_labels(sorted((shared_data / "consep" / "stitched" / "test" / "inst").glob("*.png"))[0])
    classes = read_labels(sorted((shared_data / "consep" / "stitched" / "test" / "class").glob("*.png"))[0])
    # no label-ish word in the file name or folder: the content decides
    [written] = write_labels_tif(str(tmp_path / f"result{suffix}"), labels, {"name": "result"})
    [(read, meta, kind)] = get_reader(written)(written)
    assert kind == "labels" and np.array_equal(read, labels) and meta["name"] == "result"
    [written] = write_labels_tif(str(tmp_path / f"types{suffix}"), classes, {"name": "types"})
    [(read, meta, kind)] = get_reader(written)(written)
    assert kind == "labels" and read.dtype == np.uint8 and meta["name"] == "types classes"
    assert np.array_equal(read, classes)


def test_plain_image_drops_get_only_napari_s_reader(make_napari_viewer, shared_data, tmp_path):
    """napari asks "Choose reader" when two plugins claim a file name; plain images must not be ours."""
    from napari.plugins._npe2 import get_readers

    from cellzoo.data.io import read_image
    from cellzoo.data import write_image

    rgb = read_image(sorted((shared_data / "monuseg2018" / "images" / "test").glob("*.png"))[0])[:256, :256]
    gray = read_image(_one_dsb(shared_data)[0])
    plain = []
    for name, data in (("he.png", rgb), ("he.tif", rgb), ("he.jpg", rgb), ("fluo.tif", gray),
                       ("fluo.png", gray)):
        write_image(tmp_path / name, data)
        plain.append(tmp_path / name)
    for path in plain:
        assert "napari-cellzoo" not in get_readers(str(path)), path.name
    # label-named rasters and annotation formats are offered to the plugin
    for name in ("img instances.tif", "img classes.png", "nuclei_labels.png", "cell_masks.tiff", "a.geojson",
                 "a.xml"):
        assert "napari-cellzoo" in get_readers(str(tmp_path / name)), name
    viewer = make_napari_viewer()
    for path in plain:
        viewer.open(str(path))  # raises MultipleReaderError when a second reader claims the file
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image"] * len(plain)
    # the Segment widget's default save name reads back as Labels through the plugin
    labels = read_labels(_one_dsb(shared_data)[1])
    [saved] = write_labels_tif(str(tmp_path / "fluo instances.tif"), labels, {"name": "fluo instances"})
    [layer] = viewer.open(saved, plugin="napari-cellzoo")
    assert type(layer).__name__ == "Labels" and np.array_equal(layer.data, labels)


# ----------------------------------------------------------------------------- annotation formats
def _consep_patch(shared_data):
    from cellzoo.data.io import read_class_map, read_image

    split = shared_data / "consep" / "test"
    name = sorted((split / "images").glob("*.jpg"))[0].stem
    return (read_image(split / "images" / f"{name}.jpg"), read_labels(split / "inst" / f"{name}.png"),
            read_class_map(split / "class" / f"{name}.png"))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering: every (a, b) id pair is one-to-one."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return a.shape == b.shape and len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _cellzoo_meta(labels, classes, names):
    import pandas as pd

    ids = np.unique(labels)[1:]
    cls = [int(np.bincount(classes[labels == i]).argmax()) for i in ids]
    return {"name": "pred", "metadata": {"cellzoo": {"class_names": names}},
            "features": pd.DataFrame({"label": ids, "class": cls})}


CONSEP_NAMES = ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]


def test_coco_writer_and_reader_round_trip_instances_and_classes(tmp_path, shared_data):
    from cellzoo._napari._writer import write_labels_coco

    _, labels, classes = _consep_patch(shared_data)
    [written] = write_labels_coco(str(tmp_path / "pred"), labels, _cellzoo_meta(labels, classes, CONSEP_NAMES))
    assert written.endswith("pred.json")
    layers = get_reader(written)(written)
    (read, meta, _), (read_classes, _, _) = layers
    assert _same_partition(read, labels)  # RLE is exact
    assert np.array_equal(read_classes, classes)
    assert meta["metadata"]["cellzoo"]["class_names"][1:] == CONSEP_NAMES[1:]
    # linked like the Segment widget's output, so Correct / Fine-tune pair them
    assert meta["metadata"]["cellzoo"]["classes_layer"] == layers[1][1]["name"] == "pred classes"
    assert layers[1][1]["metadata"]["cellzoo"]["instances_layer"] == "pred"


def test_geojson_writer_and_reader_keep_every_nucleus(tmp_path, shared_data):
    from cellzoo._napari._writer import write_labels_geojson

    image, labels, classes = _consep_patch(shared_data)
    [written] = write_labels_geojson(str(tmp_path / "pred.geojson"), labels,
                                     _cellzoo_meta(labels, classes, CONSEP_NAMES))
    # a sibling image gives the reader the map size (polygons alone only reach the last vertex)
    tifffile.imwrite(tmp_path / "pred.tif", image)
    layers = get_reader(written)(written)
    read, read_classes = layers[0][0], layers[1][0]
    read_names = np.array(layers[0][1]["metadata"]["cellzoo"]["class_names"])
    assert read.shape == labels.shape
    assert len(np.unique(read)) == len(np.unique(labels))
    assert ((read > 0) == (labels > 0)).mean() > 0.98  # polygon outlines, pixel-accurate up to borders
    # GeoJSON stores class names, not ids: compare names pixel by pixel
    inside = (labels > 0) & (read > 0)
    assert (read_names[read_classes[inside]] == np.array(CONSEP_NAMES)[classes[inside]]).all()


def test_reader_reads_monuseg_style_xml_sized_by_its_image(tmp_path, shared_data):
    from cellzoo.data import write_xml_annotations

    image_path = sorted((shared_data / "monuseg2018" / "images" / "test").glob("*.png"))[0]
    labels = read_labels(shared_data / "monuseg2018" / "labels" / "test" / image_path.name)
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / image_path.name).symlink_to(image_path)
    xml = tmp_path / "annotations" / f"{image_path.stem}.xml"
    write_xml_annotations(xml, labels)
    [(read, meta, kind)] = get_reader(str(xml))(str(xml))
    assert kind == "labels" and read.shape == labels.shape == (1000, 1000)
    assert abs(len(np.unique(read)) - len(np.unique(labels))) <= 3  # touching pieces may merge/split
    assert ((read > 0) == (labels > 0)).mean() > 0.97


def test_reader_reads_conic_npy_stacks(tmp_path, shared_data):
    image, labels, classes = _consep_patch(shared_data)
    np.save(tmp_path / "images.npy", np.stack([image, image[::-1]]))
    np.save(tmp_path / "labels.npy", np.stack([np.stack([labels, classes], -1),
                                               np.stack([labels[::-1], classes[::-1]], -1)]).astype(np.uint16))
    [(images, image_meta, image_kind)] = get_reader(str(tmp_path / "images.npy"))(str(tmp_path / "images.npy"))
    assert image_kind == "image" and images.shape == (2, 256, 256, 3) and image_meta["rgb"]
    (inst, _, _), (cls, _, _) = get_reader(str(tmp_path / "labels.npy"))(str(tmp_path / "labels.npy"))
    assert np.array_equal(inst[1], labels[::-1]) and np.array_equal(cls[0], classes)


def test_reader_reads_class_folder_layout(tmp_path, shared_data):
    from cellzoo.data import write_class_folder

    image, labels, classes = _consep_patch(shared_data)
    write_class_folder(tmp_path / "sample", image, labels, classes)
    reader = get_reader(str(tmp_path / "sample"))
    assert reader is not None and get_reader(str(tmp_path)) is None  # only sample folders
    (img, _, img_kind), (inst, _, _), (cls, _, _) = reader(str(tmp_path / "sample"))
    assert img_kind == "image" and np.array_equal(img, image)
    assert _same_partition(inst, labels)
    assert ((cls == classes) | (labels == 0)).all()


def test_npy_stacks_are_labels_by_their_pixels(tmp_path, shared_data):
    _, labels, _ = _consep_patch(shared_data)
    image = read_labels(sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0])[:256, :256]
    np.save(tmp_path / "stack.npy", np.stack([np.zeros_like(labels), labels]).astype(np.int32))
    np.save(tmp_path / "frames.npy", np.stack([image, image[::-1]]))  # integer, but an image stack
    [(_, _, kind)] = get_reader(str(tmp_path / "stack.npy"))(str(tmp_path / "stack.npy"))
    assert kind == "labels"
    [(_, _, kind)] = get_reader(str(tmp_path / "frames.npy"))(str(tmp_path / "frames.npy"))
    assert kind == "image"
