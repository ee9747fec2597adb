import numpy as np
import pytest
from skimage import io

from cellzoo.annotate import (assign_class, class_of_instances, delete_instance, fill_holes,
                              merge_instances, next_free_id, relabel_sequential, remove_small,
                              split_instance, sync_classes)


@pytest.fixture
def grid():
    labels = np.zeros((6, 8), np.int32)
    labels[0:2, 0:2] = 1
    labels[0:2, 4:7] = 3
    labels[4:6, 0:3] = 7
    return labels


@pytest.fixture
def consep(shared_data):
    root = shared_data / "consep" / "train"
    return (io.imread(root / "images" / "train_1_004.jpg"), io.imread(root / "inst" / "train_1_004.png").astype(np.int32),
            io.imread(root / "class" / "train_1_004.png").astype(np.uint8))


def test_next_free_id(grid):
    assert next_free_id(grid) == 8
    assert next_free_id(np.zeros((3, 3), np.int32)) == 1
    assert next_free_id(np.stack([grid, grid * 0])) == 8  # stacks: global maximum


def test_delete_returns_new_array(grid):
    before = grid.copy()
    out = delete_instance(grid, 3)
    np.testing.assert_array_equal(grid, before)
    assert 3 not in out and (out[0:2, 4:7] == 0).all() and (out == 1).sum() == 4 and (out == 7).sum() == 6
    with pytest.raises(ValueError, match=r"\[5\] do not exist"):
        delete_instance(grid, 5)
    with pytest.raises(ValueError, match="background"):
        delete_instance(grid, 0)


def test_merge_uses_smallest_id(grid):
    out = merge_instances(grid, [7, 3])
    assert set(np.unique(out)) == {0, 1, 3}
    assert (out == 3).sum() == 6 + 6
    with pytest.raises(ValueError, match="at least two"):
        merge_instances(grid, [3, 3])


def _dumbbell():
    labels = np.zeros((20, 41), np.int32)
    yy, xx = np.mgrid[:20, :41]
    labels[(yy - 10) ** 2 + (xx - 9) ** 2 <= 64] = 5
    labels[(yy - 10) ** 2 + (xx - 31) ** 2 <= 64] = 5
    labels[9:12, 9:32] = 5  # a thin neck joining two discs
    return labels


def test_split_cuts_at_the_neck():
    labels = _dumbbell()
    out = split_instance(labels, 5, [(10, 9), (10, 31)])
    assert set(np.unique(out)) == {0, 5, 6}
    np.testing.assert_array_equal(out > 0, labels > 0)  # no pixel lost or added
    assert out[10, 3] == 5 and out[10, 37] == 6  # first seed keeps the id
    left_cols = np.nonzero((out == 5).any(axis=0))[0]
    assert 15 <= left_cols.max() <= 25  # the cut is in the neck, roughly mid-way


def test_split_with_image_gradient_follows_the_edge():
    labels = np.zeros((10, 20), np.int32)
    labels[2:8, 2:18] = 4
    image = np.zeros((10, 20), np.float32)
    image[:, 12:] = 200.0  # intensity edge at column 12, off the middle
    out = split_instance(labels, 4, [(5, 4), (5, 16)], image=image)
    assert (out[2:8, 2:12] == 4).all() and (out[2:8, 12:18] == 5).all()


def test_split_rejects_bad_seeds(grid):
    with pytest.raises(ValueError, match="at least two"):
        split_instance(grid, 3, [(0, 4)])
    with pytest.raises(ValueError, match="inside instance 3"):
        split_instance(grid, 3, [(0, 4), (5, 0)])
    with pytest.raises(ValueError, match="same pixel"):
        split_instance(grid, 3, [(0, 4), (0.2, 4.1)])


def test_fill_holes_single_owner_only():
    labels = np.zeros((9, 14), np.int32)
    labels[1:6, 1:6] = 2
    labels[3, 3] = 0  # a hole of object 2
    labels[1:6, 7:10] = 3
    labels[1:6, 10:13] = 4
    labels[3, 9:11] = 0  # a hole shared by touching objects 3 and 4: not one object's hole
    out = fill_holes(labels)
    assert out[3, 3] == 2
    assert (out[3, 9:11] == 0).all()
    np.testing.assert_array_equal(np.delete(out, 3, axis=0), np.delete(labels, 3, axis=0))


def test_fill_holes_ring_around_inner_object():
    labels = np.zeros((11, 11), np.int32)
    labels[0:11, 0:11] = 1
    labels[2:9, 2:9] = 0
    labels[4:7, 4:7] = 9  # object 9 sits inside object 1's hole
    out = fill_holes(labels)
    assert (out[4:7, 4:7] == 9).all()  # the inner object is kept
    assert (out[2:9, 2:9][out[2:9, 2:9] != 9] == 1).all()  # the ring is filled with 1


def test_remove_small(grid):
    out = remove_small(grid, 5)  # object 1 has 4 px
    assert set(np.unique(out)) == {0, 3, 7}
    np.testing.assert_array_equal(remove_small(grid, 0), grid)
    with pytest.raises(ValueError):
        remove_small(grid, -1)


def test_relabel_sequential(grid):
    out = relabel_sequential(grid)
    assert set(np.unique(out)) == {0, 1, 2, 3}
    assert out[0, 4] == 2 and out[5, 0] == 3
    assert out.dtype == np.int32


def test_assign_and_sync_classes(grid):
    classes = (grid > 0).astype(np.uint8)
    out = assign_class(grid, classes, [3, 7], 4)
    assert (out[grid == 3] == 4).all() and (out[grid == 7] == 4).all() and (out[grid == 1] == 1).all()
    assert (out[grid == 0] == 0).all()
    assert class_of_instances(grid, out) == {1: 1, 3: 4, 7: 4}
    with pytest.raises(ValueError, match="between 1 and 255"):
        assign_class(grid, classes, [3], 0)

    merged = merge_instances(grid, [1, 3])  # 4 px of class 1 + 6 px of class 4 -> class 4
    synced = sync_classes(merged, out)
    assert (synced[merged == 1] == 4).all()
    drawn = merged.copy()
    drawn[3, 6:8] = 8  # a new object over background gets the default class
    assert (sync_classes(drawn, out, default_class=2)[3, 6:8] == 2).all()
    deleted = delete_instance(grid, 7)
    assert (sync_classes(deleted, out)[4:6, 0:3] == 0).all()


def test_ops_on_real_consep_labels(consep):
    image, labels, classes = consep
    ids = np.unique(labels)[1:]
    assert ids.size > 20
    # split the largest nucleus with two seeds at the ends of its long axis
    areas = np.bincount(labels.ravel())
    big = int(areas.argmax() if areas[0] < areas[1:].max() else areas[1:].argmax() + 1)
    yy, xx = np.nonzero(labels == big)
    order = np.argsort(xx + yy)
    seeds = [(yy[order[2]], xx[order[2]]), (yy[order[-3]], xx[order[-3]])]
    split = split_instance(labels, big, seeds, image=image)
    new = next_free_id(labels)
    assert (split == big).sum() > 0 and (split == new).sum() > 0
    assert (split == big).sum() + (split == new).sum() == areas[big]
    # remove_small against a direct count
    out = remove_small(labels, 100)
    assert set(np.unique(out)[1:]) == {int(i) for i in ids if areas[i] >= 100}
    # relabel after delete keeps the pixel partition
    relabeled = relabel_sequential(delete_instance(labels, int(ids[0])))
    assert relabeled.max() == ids.size - 1
    # the class of every real instance is recovered from its pixels
    lookup = class_of_instances(labels, classes)
    assert set(lookup.values()) <= {1, 2, 3, 4}
    np.testing.assert_array_equal(sync_classes(labels, classes), classes * (labels > 0))
