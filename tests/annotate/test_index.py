"""InstanceIndex and the box-local edit plans against direct whole-image computations on real labels."""
import numpy as np
import pytest
from scipy import ndimage
from skimage import io

from cellzoo.annotate import (InstanceIndex, plan_assign_class, plan_classes_after_paint, plan_delete, plan_merge,
                              plan_remove_small, plan_split, prepare_instances)
from cellzoo.annotate.index import pad_window, window_size


@pytest.fixture
def consep(shared_data):
    root = shared_data / "consep" / "stitched" / "test"
    labels = io.imread(root / "inst" / "test_1.png").astype(np.int32)
    classes = io.imread(root / "class" / "test_1.png").astype(np.uint8)
    return labels, classes


def assert_same(index: InstanceIndex, fresh: InstanceIndex) -> None:
    a, b = index.table(), fresh.table()
    for key in ("label", "class", "area"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_allclose(a["centroid_y"], b["centroid_y"])
    np.testing.assert_allclose(a["centroid_x"], b["centroid_x"])
    for label in fresh.ids():
        assert index.bbox(int(label)) == fresh.bbox(int(label))


def apply(labels, classes, patches):
    labels, classes = labels.copy(), classes.copy()
    changes, class_changes = [], []
    for patch in patches:
        if patch.labels is not None:
            changes.append((patch.window, labels[patch.window].copy(), patch.labels))
            labels[patch.window] = patch.labels
        if patch.classes is not None:
            class_changes.append((patch.window, classes[patch.window].copy(), patch.classes))
            classes[patch.window] = patch.classes
    return labels, classes, changes, class_changes


def test_build_matches_direct_counts(consep):
    labels, classes = consep
    index = InstanceIndex.build(labels, classes, block_rows=97)  # blocks that do not divide the height
    ids = np.unique(labels)[1:]
    np.testing.assert_array_equal(index.ids(), ids)
    assert len(index) == ids.size and index.next_id == ids.max() + 1
    table = index.table()
    np.testing.assert_array_equal(table["area"], ndimage.sum_labels(np.ones_like(labels), labels, ids))
    centroids = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, ids))
    np.testing.assert_allclose(np.c_[table["centroid_y"], table["centroid_x"]], centroids)
    boxes = ndimage.find_objects(labels)
    for label in ids[::25]:
        assert index.bbox(int(label)) == boxes[label - 1]
        counts = np.bincount(classes[labels == label], minlength=256)
        counts[0] = 0
        assert index.class_of(int(label)) == (counts.argmax() if counts.any() else 1)


def test_sparse_ids_give_the_same_index(consep):
    labels, classes = consep
    sparse = np.where(labels > 0, labels.astype(np.int64) * 1_000_003, 0)
    a, b = InstanceIndex.build(labels, classes).table(), InstanceIndex.build(sparse, classes).table()
    np.testing.assert_array_equal(b["label"], a["label"] * 1_000_003)
    np.testing.assert_array_equal(b["area"], a["area"])
    np.testing.assert_array_equal(b["class"], a["class"])


def test_prepare_instances_one_class_per_instance(consep):
    labels, classes = consep
    out_labels, out_classes, index = prepare_instances(labels.astype(np.uint16), classes)
    assert out_labels.dtype == np.int32 and out_classes.dtype == np.uint8
    assert not out_classes[labels == 0].any()
    for label in index.ids()[::30]:
        assert set(np.unique(out_classes[labels == label])) == {index.class_of(int(label))}


def test_plans_touch_only_the_boxes_and_keep_the_index_exact(consep, shared_data):
    labels, classes = consep
    image = io.imread(shared_data / "consep" / "stitched" / "test" / "images" / "test_1.png")[..., :3]
    labels_now, classes_now = labels, prepare_instances(labels, classes)[1]
    index = InstanceIndex.build(labels_now, classes_now)
    areas = {int(i): index.area_of(int(i)) for i in index.ids()}
    big = sorted(areas, key=areas.get)[-6:]

    def step(patches, new_class=1):
        nonlocal labels_now, classes_now
        for patch in patches:  # work in proportion to the objects: each patch is one object's box
            assert window_size(patch.window) < labels.size / 100
        labels_now, classes_now, changes, class_changes = apply(labels_now, classes_now, patches)
        search = index.search_windows(changes, labels_now, class_changes)
        index.refresh(labels_now, classes_now, search, new_class=new_class)
        assert_same(index, InstanceIndex.build(labels_now, classes_now))

    gone = big[0]
    patches = plan_delete(labels_now, classes_now, index, [gone])
    assert [p.window for p in patches] == [index.bbox(gone)]
    step(patches)
    assert gone not in index and not (labels_now == gone).any()

    a, b = big[1], big[2]
    step(plan_merge(labels_now, classes_now, index, [b, a]))
    assert max(a, b) not in index and index.area_of(min(a, b)) == areas[a] + areas[b]

    step(plan_assign_class(labels_now, classes_now, index, [big[3]], 3))
    assert index.class_of(big[3]) == 3 and (classes_now[labels_now == big[3]] == 3).all()

    target = big[4]
    yy, xx = np.nonzero(labels_now == target)
    order = np.argsort(yy * 10_000 + xx)
    seeds = [(yy[order[len(order) // 8]], xx[order[len(order) // 8]]), (yy[order[-len(order) // 8]], xx[order[-len(order) // 8]])]
    new_id = index.next_id
    patches = plan_split(labels_now, classes_now, index, target, seeds, image=image)
    assert patches[0].window == pad_window(index.bbox(target), 1, labels.shape)
    step(patches)
    assert new_id in index and index.area_of(new_id) + index.area_of(target) == areas[target]
    assert index.class_of(new_id) == index.class_of(target)

    small = index.smaller_than(40)
    assert small
    step(plan_remove_small(labels_now, classes_now, index, 40))
    assert not index.smaller_than(40)
    with pytest.raises(ValueError, match="do not exist"):
        plan_delete(labels_now, classes_now, index, [gone])


def test_paint_over_a_neighbour_gives_the_new_instance_the_chosen_class(consep):
    labels, classes = consep
    labels, classes, index = prepare_instances(labels, classes)
    neighbour = int(index.ids()[len(index) // 2])
    window = pad_window(index.bbox(neighbour), 4, labels.shape)
    painted = labels.copy()
    new_id = index.next_id
    rows = slice(window[0].start, (window[0].start + window[0].stop) // 2)
    painted[rows, window[1]] = new_id  # a new object covering half of the neighbour's box
    chosen = 4 if index.class_of(neighbour) != 4 else 2
    patch = plan_classes_after_paint(painted, classes, index, window, chosen, painted=painted[window] != labels[window])
    out = classes.copy()
    out[window] = patch.classes
    assert (out[painted == new_id] == chosen).all()
    assert (out[painted == neighbour] == index.class_of(neighbour)).all()
    assert not out[painted == 0].any()
    untouched = np.ones(labels.shape, bool)
    untouched[window] = False
    np.testing.assert_array_equal(out[untouched], classes[untouched])


def test_class_lookup_of_a_stack_and_sync_classes(consep):
    from cellzoo.annotate import class_of_instances, sync_classes

    labels, classes = consep
    top = int(labels.max())
    stack = np.stack([labels, np.where(labels > 0, labels + top, 0)])  # ids unique across planes
    lookup = class_of_instances(stack, np.stack([classes, classes]))
    plane = class_of_instances(labels, classes)
    assert len(lookup) == 2 * len(plane)
    assert all(lookup[i] == c and lookup[i + top] == c for i, c in plane.items())
    synced = sync_classes(labels, classes)
    for label in list(plane)[::40]:
        assert set(np.unique(synced[labels == label])) == {plane[label]}
    assert not synced[labels == 0].any()
