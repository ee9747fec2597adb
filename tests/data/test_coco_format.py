"""COCO annotations (RLE and polygons) and COCO results lists, on real DSB 2018 and CoNSeP labels."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from data_helpers import best_iou_per_object, same_partition
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cellzoo.data import (CONSEP_CLASS_NAMES, coco_class_names, coco_to_labels, instances_to_coco_results,
                          read_coco, read_coco_results, read_labels, segmentation_to_mask, to_coco, write_coco,
                          write_coco_results)


@pytest.fixture(scope="module")
def dsb_masks(shared_data):
    paths = sorted((shared_data / "dsb2018" / "test" / "masks").glob("*.tif"))[:3]
    return [(p.name, read_labels(p)) for p in paths]


def test_rle_round_trip_is_exact_for_several_images(tmp_path, dsb_masks):
    coco = to_coco(dsb_masks)
    assert [i["id"] for i in coco["images"]] == [1, 2, 3]
    assert coco["categories"] == [{"id": 1, "name": "nucleus", "supercategory": "cell"}]
    assert len(coco["annotations"]) == sum(len(np.unique(m)) - 1 for _, m in dsb_masks)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert all(isinstance(a["segmentation"]["counts"], str) for a in coco["annotations"])
    path = write_coco(tmp_path / "dsb.json", coco)
    loaded = read_coco(path)
    for image_id, (file_name, truth) in enumerate(dsb_masks, start=1):
        by_id, classes, names = coco_to_labels(loaded, image_id)
        assert same_partition(by_id, truth) and classes is None and names == ["background", "nucleus"]
        by_stem, _, _ = coco_to_labels(path, file_name.removesuffix(".tif"))
        assert np.array_equal(by_stem, by_id)


def test_area_and_bbox_follow_coco_conventions(dsb_masks):
    labels = dsb_masks[0][1]
    annotation = to_coco([("x.tif", labels)])["annotations"][0]
    mask = labels == np.unique(labels)[1]
    rows, cols = np.nonzero(mask)
    assert annotation["area"] == mask.sum()
    assert annotation["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]


def test_polygon_round_trip_with_classes_on_consep(tmp_path, consep_patch):
    _, truth, truth_classes = consep_patch
    coco = to_coco([("test_11_003.jpg", truth, truth_classes)], CONSEP_CLASS_NAMES, segmentation="polygon")
    assert [c["name"] for c in coco["categories"]] == CONSEP_CLASS_NAMES[1:]
    assert all(isinstance(a["segmentation"], list) for a in coco["annotations"])
    labels, classes, names = coco_to_labels(json.loads(json.dumps(coco)), "test_11_003.jpg")
    assert names == CONSEP_CLASS_NAMES
    ious = np.array(list(best_iou_per_object(truth, labels).values()))
    # pycocotools' own polygon rasteriser differs from the pixel mask by at most a boundary pixel
    assert np.median(ious) > 0.9 and np.percentile(ious, 5) > 0.7
    both = (truth > 0) & (labels > 0)
    assert np.mean(classes[both] == truth_classes[both]) > 0.99


def test_hand_computed_rle_in_all_three_encodings():
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)  # column-major runs: 2 off, 3 on, 1 off
    assert np.array_equal(segmentation_to_mask({"size": [2, 3], "counts": [2, 3, 1]}, 2, 3), mask)
    assert np.array_equal(segmentation_to_mask({"size": [2, 3], "counts": "231"}, 2, 3), mask)
    annotation = to_coco([("m.png", mask.astype(np.int32))])["annotations"][0]
    assert annotation["segmentation"] == {"size": [2, 3], "counts": "231"}
    square = [[1.0, 0.0, 3.0, 0.0, 3.0, 2.0, 1.0, 2.0]]  # x, y corners around pixels (0..1, 1..2)
    assert np.array_equal(segmentation_to_mask(square, 2, 3), [[0, 1, 1], [0, 1, 1]])


def test_non_contiguous_category_ids_and_crowd_regions():
    coco = {"images": [{"id": 5, "file_name": "a.png", "height": 2, "width": 3}],
            "categories": [{"id": 7, "name": "tumour"}, {"id": 1000, "name": "stroma"}],
            "annotations": [
                {"id": 1, "image_id": 5, "category_id": 1000, "iscrowd": 0,
                 "segmentation": {"size": [2, 3], "counts": [0, 2, 4]}},
                {"id": 2, "image_id": 5, "category_id": 7, "iscrowd": 0,
                 "segmentation": {"size": [2, 3], "counts": [4, 2]}},
                {"id": 3, "image_id": 5, "category_id": 7, "iscrowd": 1,
                 "segmentation": {"size": [2, 3], "counts": [2, 2, 2]}}]}
    names, mapping = coco_class_names(coco)
    assert names == ["background", "tumour", "stroma"] and mapping == {7: 1, 1000: 2}
    labels, classes, _ = coco_to_labels(coco, 5)
    assert np.array_equal(labels, [[1, 0, 2], [1, 0, 2]])  # the crowd region is not an instance
    assert np.array_equal(classes, [[2, 0, 1], [2, 0, 1]])


def test_results_list_round_trip_with_scores_and_overlaps(tmp_path, consep_patch):
    _, truth, truth_classes = consep_patch
    ids = np.unique(truth)[1:]
    scores = {int(i): float(s) for i, s in zip(ids, np.linspace(0.3, 0.99, ids.size))}
    results = instances_to_coco_results(truth, truth_classes, scores, image_id=42)
    assert set(results[0]) == {"image_id", "category_id", "score", "bbox", "segmentation"}
    assert all(r["image_id"] == 42 and isinstance(r["segmentation"]["counts"], str) for r in results)
    path = write_coco_results(tmp_path / "results.json", results)
    labels, classes, back_scores = read_coco_results(path)
    assert same_partition(labels, truth)
    assert np.mean(classes[truth > 0] == truth_classes[truth > 0]) > 0.99  # one class per object (majority)
    assert not classes[truth == 0].any()
    pairs = {int(t): int(l) for t, l in zip(truth[truth > 0], labels[truth > 0])}
    assert all(back_scores[pairs[i]] == pytest.approx(s) for i, s in scores.items())
    # where two detections overlap, the higher score wins
    a = np.zeros((6, 6), np.int32)
    a[0:4, 0:4] = 1
    b = np.zeros((6, 6), np.int32)
    b[2:6, 2:6] = 1
    overlapping = (instances_to_coco_results(a, scores={1: 0.9}, image_id=1)
                   + instances_to_coco_results(b, scores={1: 0.5}, image_id=1)
                   + instances_to_coco_results(b, scores={1: 0.99}, image_id=2))
    labels, _, back = read_coco_results(overlapping, image_id=1, score_threshold=0.1)
    assert back[labels[3, 3]] == 0.9 and back[labels[5, 5]] == 0.5
    labels, _, back = read_coco_results(overlapping, image_id=1, score_threshold=0.6)
    assert labels[5, 5] == 0 and list(back.values()) == [0.9]
    with pytest.raises(ValueError, match="several images"):
        read_coco_results(overlapping)


def test_pycocotools_scores_our_own_export_as_perfect(dsb_masks):
    gt = to_coco(dsb_masks)
    results = [r for image_id, (_, m) in enumerate(dsb_masks, start=1)
               for r in instances_to_coco_results(m, image_id=image_id)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(results), "segm")
        evaluation.params.maxDets = [1, 10, 1000]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # stats[0] is pinned to maxDets=100 inside pycocotools (a known quirk); AP50 and AP75 use maxDets[2]
    assert evaluation.stats[1] == pytest.approx(1.0) and evaluation.stats[2] == pytest.approx(1.0)


def test_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_coco(tmp_path / "none.json")
    (tmp_path / "r.json").write_text("[]")
    with pytest.raises(ValueError, match="looks like a COCO results list"):
        read_coco(tmp_path / "r.json")
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": []}
    with pytest.raises(ValueError, match="pass shape"):
        coco_to_labels(coco, 1)
    assert coco_to_labels(coco, 1, shape=(4, 5))[0].shape == (4, 5)
    with pytest.raises(ValueError, match="not in the COCO file"):
        coco_to_labels(coco, "b.png", shape=(4, 5))
    with pytest.raises(ValueError, match="segmentation must be one of"):
        to_coco([("a", np.zeros((2, 2), np.int32))], segmentation="mask")
    with pytest.raises(ValueError, match="unknown COCO segmentation"):
        segmentation_to_mask({"bits": 1}, 2, 2)


def test_one_pass_rle_matches_pycocotools_encode_per_object(shared_data):
    from pycocotools import mask as mask_utils

    from cellzoo.data.coco import instance_rles

    labels = read_labels(shared_data / "consep/stitched/test/inst/test_1.png")
    labels[-1, -1] = labels.max() + 1  # an object on the last pixel (no trailing background run)
    labels[0, 0] = labels.max() + 1    # and one on the first
    rles = instance_rles(labels)
    ids = np.unique(labels)[1:]
    assert sorted(rles) == ids.tolist()
    for index in ids[::7].tolist() + [int(labels[0, 0]), int(labels[-1, -1])]:
        expected = mask_utils.encode(np.asfortranarray((labels == index).astype(np.uint8)))
        assert rles[index]["counts"] == expected["counts"].decode() and rles[index]["size"] == expected["size"]
