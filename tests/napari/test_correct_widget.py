"""Correct widget in a real napari viewer (Xvfb): every tool, key bindings, mouse, undo/redo, training set."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import io

from cellzoo._napari._layers import show_segmentation
from cellzoo._napari.correct_widget import CorrectWidget
from cellzoo.annotate import next_free_id, read_training_set
from viewer_input import click, deepest, press

CONSEP_NAMES = ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]
CONSEP_COLORS = ["#000000", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]
SCALE = (0.5, 0.5)  # a pixel size, so clicks must be mapped from world to data coordinates


@pytest.fixture
def consep(shared_data):
    root = shared_data / "consep" / "test"
    return (io.imread(root / "images" / "test_1_000.jpg"), io.imread(root / "inst" / "test_1_000.png").astype(np.int32),
            io.imread(root / "class" / "test_1_000.png").astype(np.uint8))


@pytest.fixture
def setup(make_napari_viewer, consep):
    image, labels, classes = consep
    viewer = make_napari_viewer()
    image_layer = viewer.add_image(image, name="patch", scale=SCALE)
    inst, cls = show_segmentation(viewer, image_layer, labels, classes, class_names=CONSEP_NAMES,
                                  class_colors=CONSEP_COLORS, scores={int(i): 0.9 for i in np.unique(labels)[1:]},
                                  model="ground truth")
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.layer is inst and widget.classes_layer is cls
    return viewer, widget, inst, cls


def big_ids(labels, n):
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    return [int(i) for i in np.argsort(areas)[::-1][:n]]


def check_in_sync(inst, cls):
    """Class layer uniform per instance and zero on background; table matches the label map."""
    labels, classes = np.asarray(inst.data), np.asarray(cls.data)
    assert not classes[labels == 0].any()
    table = inst.features
    ids = np.unique(labels)[1:]
    np.testing.assert_array_equal(np.sort(table["label"].to_numpy()), ids)
    for row in table.itertuples():
        values = np.unique(classes[labels == row.label])
        assert values.tolist() == [row._2]  # column "class"
        assert row.area == (labels == row.label).sum()


def overlay_mask(overlay, inst):
    """The selection overlay (a small layer over the selection's box) as an image-sized mask."""
    full = np.zeros(inst.data.shape, bool)
    offset = np.round((np.asarray(overlay.translate) - np.asarray(inst.translate)) / np.asarray(inst.scale)).astype(int)
    data = np.asarray(overlay.data) > 0
    full[tuple(slice(o, o + n) for o, n in zip(offset, data.shape))] = data
    return full


def check_outlines(overlay, inst, labels, selected):
    """The overlay outlines exactly the selected instances: on their border, nowhere else."""
    drawn = overlay_mask(overlay, inst)
    inside = np.isin(labels, sorted(selected))
    assert not (drawn & ~inside).any()
    border = inside & ~ndimage.binary_erosion(inside)
    for label in selected:
        assert drawn[border & (labels == label)].all()


def test_delete_by_shift_click_and_undo(setup):
    viewer, widget, inst, cls = setup
    before = np.asarray(inst.data).copy()
    target = big_ids(before, 1)[0]
    click(inst, deepest(before, target), ["Shift"])
    assert target not in inst.data and (inst.data[before == target] == 0).all()
    assert target not in set(inst.features["label"])
    assert (cls.data[before == target] == 0).all()
    check_in_sync(inst, cls)
    press(inst, "Control-Z")  # napari's undo key on the layer, routed to the joint history
    np.testing.assert_array_equal(inst.data, before)
    assert target in set(inst.features["label"])
    press(inst, "Control-Shift-Z")
    assert target not in inst.data


def test_merge_selection_assign_class_undo_redo(setup):
    viewer, widget, inst, cls = setup
    cls.visible = False  # napari does not slice hidden layers: edits must still reach them, undoably
    labels0, classes0 = np.asarray(inst.data).copy(), np.asarray(cls.data).copy()
    a, b = big_ids(labels0, 2)
    click(inst, deepest(labels0, a), ["Control"])
    click(inst, deepest(labels0, b), ["Control"])
    assert widget.selection == {a, b}
    overlay = viewer.layers["patch instances selection"]  # the selection is outlined on screen
    check_outlines(overlay, inst, labels0, {a, b})
    assert [layer.name for layer in widget._labels_layers()] == ["patch instances"]
    n_before = len(inst.features)
    press(inst, "Shift-M")
    keep = min(a, b)
    assert set(np.unique(inst.data[(labels0 == a) | (labels0 == b)])) == {keep}
    assert len(inst.features) == n_before - 1
    row = inst.features[inst.features["label"] == keep].iloc[0]
    assert row["area"] == ((labels0 == a) | (labels0 == b)).sum()
    check_in_sync(inst, cls)

    # the merged instance (still selected) gets class 2 "inflammatory"
    widget.class_combo.setCurrentIndex(widget.class_combo.findData(2))
    press(inst, "Shift-C")
    assert (cls.data[inst.data == keep] == 2).all()
    assert inst.features.set_index("label").loc[keep, "class_name"] == "inflammatory"
    check_in_sync(inst, cls)

    widget.undo()  # the class change
    widget.undo()  # the merge
    np.testing.assert_array_equal(inst.data, labels0)
    np.testing.assert_array_equal(cls.data, classes0 * (labels0 > 0))
    assert len(inst.features) == n_before
    widget.redo()
    assert set(np.unique(inst.data[(labels0 == a) | (labels0 == b)])) == {keep}


def test_split_with_alt_click_seeds(setup):
    viewer, widget, inst, cls = setup
    labels0 = np.asarray(inst.data).copy()
    target = big_ids(labels0, 1)[0]
    rows, cols = np.nonzero(labels0 == target)
    order = np.argsort(rows * 1000 + cols)
    seeds = [(rows[order[len(order) // 8]], cols[order[len(order) // 8]]),
             (rows[order[-len(order) // 8]], cols[order[-len(order) // 8]])]
    for seed in seeds:
        click(inst, seed, ["Alt"])
    assert len(widget.seeds_layer().data) == 2
    new_id = next_free_id(labels0)
    press(inst, "Shift-S")
    assert (inst.data == target).sum() > 0 and (inst.data == new_id).sum() > 0
    assert (inst.data == target).sum() + (inst.data == new_id).sum() == (labels0 == target).sum()
    # both halves keep the original class; the new instance has a table row without a model score
    assert cls.data[inst.data == new_id].max() == cls.data[inst.data == target].max() != 0
    table = inst.features.set_index("label")
    assert np.isnan(table.loc[new_id, "score"]) and np.isnan(table.loc[target, "score"])  # edited: no model score
    assert (table.drop(index=[new_id, target])["score"] == 0.9).all()
    assert len(widget.seeds_layer().data) == 0  # seeds are used up
    check_in_sync(inst, cls)
    widget.undo()
    np.testing.assert_array_equal(inst.data, labels0)

    # seeds in two different instances: explained, nothing changes
    a, b = big_ids(labels0, 2)
    click(inst, deepest(labels0, a), ["Alt"])
    click(inst, deepest(labels0, b), ["Alt"])
    press(inst, "Shift-S")
    assert "one and the same instance" in widget.status_label.text()
    np.testing.assert_array_equal(inst.data, labels0)


def test_new_instance_by_painting_gets_class_and_row(setup, qtbot):
    viewer, widget, inst, cls = setup
    labels0 = np.asarray(inst.data).copy()
    widget.class_combo.setCurrentIndex(widget.class_combo.findData(4))
    press(inst, "Shift-N")
    new_id = next_free_id(labels0)
    assert inst.selected_label == new_id and inst.mode == "paint"
    background = np.argwhere(labels0 == 0)
    spot = background[len(background) // 2]
    inst.brush_size = 5
    inst.paint(tuple(spot), new_id)  # napari's own brush: recorded in its history, emits 'paint'
    qtbot.waitUntil(lambda: (cls.data[inst.data == new_id] != 0).any(), timeout=5000)
    assert (inst.data == new_id).any()
    assert (cls.data[inst.data == new_id] == 4).all()
    assert inst.features.set_index("label").loc[new_id, "class_name"] == "spindle-shaped"
    check_in_sync(inst, cls)
    press(inst, "Control-Z")
    np.testing.assert_array_equal(inst.data, labels0)
    assert not (cls.data[labels0 == 0]).any()


def test_fill_holes_remove_small_relabel(setup, qtbot):
    viewer, widget, inst, cls = setup
    labels0 = np.asarray(inst.data).copy()
    target = big_ids(labels0, 1)[0]
    hole = deepest(labels0, target)
    inst.brush_size = 1
    inst.paint(hole, 0)  # punch a one-pixel hole with the eraser
    assert inst.data[hole] == 0
    qtbot.waitUntil(lambda: len(widget._undo) == 1, timeout=5000)
    widget.fill_holes()
    assert inst.data[hole] == target

    widget.min_size_spin.setValue(60)
    areas = np.bincount(np.asarray(inst.data).ravel())
    expected = {i for i in np.unique(inst.data)[1:] if areas[i] >= 60}
    widget.buttons["small"].click()
    assert set(np.unique(inst.data)[1:]) == expected
    check_in_sync(inst, cls)

    before = inst.features.set_index("label")
    old_labels = np.asarray(inst.data).copy()
    widget.relabel_sequential()
    assert inst.data.max() == len(expected) and set(np.unique(inst.data)[1:]) == set(range(1, len(expected) + 1))
    after = inst.features.set_index("label")
    assert np.isnan(after.loc[inst.data[hole], "score"])  # the object whose hole was filled was edited
    for old_id in before.index[:20]:  # every other score follows its instance to the new id
        new_id = int(inst.data[old_labels == old_id][0])
        np.testing.assert_equal(after.loc[new_id, "score"], before.loc[old_id, "score"])
    check_in_sync(inst, cls)
    for _ in range(3):
        widget.undo()
    assert inst.data[hole] == 0  # back to after the hand-made hole
    widget.undo()
    np.testing.assert_array_equal(inst.data, labels0)


def test_add_to_training_set(setup, tmp_path):
    viewer, widget, inst, cls = setup
    click(inst, deepest(np.asarray(inst.data), big_ids(np.asarray(inst.data), 1)[0]), ["Shift"])
    widget.folder_edit.setText(str(tmp_path / "set"))
    widget.buttons["add"].click()
    samples = read_training_set(tmp_path / "set")
    assert [s.name for s in samples] == ["patch"]
    np.testing.assert_array_equal(samples[0].labels, inst.data)
    np.testing.assert_array_equal(samples[0].classes, cls.data)
    np.testing.assert_array_equal(samples[0].image, viewer.layers["patch"].data)
    assert samples[0].meta["model"] == "ground truth" and samples[0].meta["source_layer"] == "patch"
    assert samples[0].meta["class_names"] == CONSEP_NAMES
    assert "Saved 'patch'" in widget.status_label.text()

    # user mistakes are explained, not raised
    labels_now = np.asarray(inst.data).copy()
    widget.clear_selection()
    press(inst, "Shift-M")  # nothing selected
    assert "Ctrl+click" in widget.status_label.text()
    np.testing.assert_array_equal(inst.data, labels_now)
    widget.folder_edit.setText("")
    assert not widget.buttons["add"].isEnabled()
    assert widget.folder_edit.styleSheet() and "folder" in widget.folder_edit.toolTip()


def test_stack_edits_only_the_current_plane(make_napari_viewer, consep):
    image, labels, classes = consep
    viewer = make_napari_viewer()
    stack = np.stack([labels, labels, labels])
    offset = np.array([0, 1, 2])[:, None, None] * int(labels.max())
    stack = np.where(stack > 0, stack + offset, 0).astype(np.int32)
    image_layer = viewer.add_image(np.stack([image[..., 0]] * 3), name="stack")
    inst, cls = show_segmentation(viewer, image_layer, stack, np.stack([classes] * 3) * (stack > 0),
                                  class_names=CONSEP_NAMES, class_colors=CONSEP_COLORS)
    assert set(inst.features["plane"]) == {0, 1, 2} and len(inst.features) == 3 * (len(np.unique(labels)) - 1)
    widget = CorrectWidget(viewer)
    viewer.dims.set_current_step(0, 1)
    assert widget.plane() == (1,)
    target = big_ids(stack[1], 1)[0]
    click(inst, (1, *deepest(stack[1], target)), ["Shift"])
    assert target not in inst.data[1]
    np.testing.assert_array_equal(inst.data[0], stack[0])
    np.testing.assert_array_equal(inst.data[2], stack[2])
    assert target not in set(inst.features["label"]) and len(inst.features) == 3 * (len(np.unique(labels)) - 1) - 1
    widget.undo()
    np.testing.assert_array_equal(inst.data, stack)


def test_real_key_presses_reach_the_tools(make_napari_viewer, qtbot):
    """Keyboard events through the Qt canvas (not just the keymap): Shift+M merges, Ctrl+Z undoes it."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    labels = np.zeros((40, 40), np.int32)
    labels[2:10, 2:10] = 1
    labels[2:10, 12:20] = 2
    image = viewer.add_image(np.zeros((40, 40), np.uint8), name="im")
    inst, _cls = show_segmentation(viewer, image, labels, (labels > 0).astype(np.uint8),
                                   class_names=["background", "nucleus"], class_colors=None)
    widget = CorrectWidget(viewer)
    widget.toggle_selection(1)
    widget.toggle_selection(2)
    viewer.layers.selection.active = inst
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    assert set(np.unique(inst.data)) == {0, 1}
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(inst.data, labels)


# ----------------------------------------------------------------------------- on a real segmentation
@pytest.fixture(scope="module")
def he_result(shared_data):
    """cellzoo-he on a 320² MoNuSeg test crop: a real model's instances and classes."""
    from cellzoo.annotate import prepare_instances
    from cellzoo.data import read_image
    from cellzoo.infer import resolve_model, segment

    image = np.asarray(read_image(shared_data / "monuseg2018" / "images" / "test" / "TCGA-2Z-A9J9-01A-01-TS1.png"))
    image = np.ascontiguousarray(image[:320, :320, :3])
    result = segment(resolve_model("cellzoo-he"), image, device="cpu")
    labels, classes, index = prepare_instances(result.labels, result.class_map())
    assert len(index) > 30
    return image, labels, classes, index, result.class_names, result.scores


@pytest.fixture
def he_setup(make_napari_viewer, he_result):
    image, labels, classes, index, names, scores = he_result
    viewer = make_napari_viewer()
    image_layer = viewer.add_image(image, name="he")
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget)
    inst, cls = show_segmentation(viewer, image_layer, labels.copy(), classes.copy(), class_names=names,
                                  class_colors=None, scores=scores, model="cellzoo-he", index=index.copy())
    assert widget.layer is inst and widget.classes_layer is cls
    return viewer, widget, inst, cls


def check_index(widget, inst, cls):
    """The widget's incrementally kept index equals one built afresh from the pixels."""
    from cellzoo.annotate import InstanceIndex

    kept, fresh = widget.index().table(), InstanceIndex.build(np.asarray(inst.data), np.asarray(cls.data)).table()
    for key in ("label", "class", "area"):
        np.testing.assert_array_equal(kept[key], fresh[key], err_msg=key)
    np.testing.assert_allclose(kept["centroid_y"], fresh["centroid_y"])


def test_every_tool_on_a_real_segmentation_keeps_layers_index_and_table_in_step(he_setup, qtbot):
    viewer, widget, inst, cls = he_setup
    states = [(np.asarray(inst.data).copy(), np.asarray(cls.data).copy())]
    index = widget.index()
    ids = sorted(index.ids().tolist(), key=index.area_of)[::-1]
    a, b, c, d = ids[0], ids[1], ids[2], ids[3]

    def done():
        check_in_sync(inst, cls)
        check_index(widget, inst, cls)
        states.append((np.asarray(inst.data).copy(), np.asarray(cls.data).copy()))

    labels0 = states[0][0]
    click(inst, deepest(labels0, a), ["Control"])  # select
    click(inst, deepest(labels0, b), ["Control"])
    assert widget.selection == {a, b}
    check_outlines(viewer.layers["he instances selection"], inst, labels0, {a, b})
    press(inst, "Shift-M")  # merge
    done()
    widget.class_combo.setCurrentIndex(widget.class_combo.findData(2))
    press(inst, "Shift-C")  # set class
    assert (cls.data[inst.data == min(a, b)] == 2).all()
    done()
    click(inst, deepest(labels0, c), ["Shift"])  # delete
    assert c not in widget.index()
    done()
    yy, xx = np.nonzero(labels0 == d)  # split
    order = np.argsort(yy * 1000 + xx)
    for k in (len(order) // 6, -len(order) // 6):
        click(inst, (yy[order[k]], xx[order[k]]), ["Alt"])
    press(inst, "Shift-S")
    assert (inst.data == widget.index().next_id - 1).any()
    done()
    widget.class_combo.setCurrentIndex(widget.class_combo.findData(4))
    press(inst, "Shift-N")  # new instance, painted with napari's brush
    new_id = inst.selected_label
    inst.brush_size = 9
    inst.paint(deepest(np.asarray(inst.data), ids[5]), new_id)
    qtbot.waitUntil(lambda: len(widget._undo) == 5, timeout=5000)
    assert (cls.data[inst.data == new_id] == 4).all()
    done()
    for state in reversed(states[:-1]):  # undo everything, one step at a time
        press(inst, "Control-Z")
        np.testing.assert_array_equal(inst.data, state[0])
        np.testing.assert_array_equal(cls.data, state[1])
        check_in_sync(inst, cls)
        check_index(widget, inst, cls)
    for state in states[1:]:  # and redo it
        press(inst, "Control-Shift-Z")
        np.testing.assert_array_equal(inst.data, state[0])
        np.testing.assert_array_equal(cls.data, state[1])
    check_in_sync(inst, cls)
    check_index(widget, inst, cls)


def test_new_instance_painted_over_a_neighbour_gets_the_chosen_class(he_setup, qtbot):
    viewer, widget, inst, cls = he_setup
    labels0, classes0 = np.asarray(inst.data).copy(), np.asarray(cls.data).copy()
    index = widget.index()
    neighbour = max(index.ids().tolist(), key=index.area_of)
    chosen = 3 if index.class_of(neighbour) != 3 else 1
    widget.class_combo.setCurrentIndex(widget.class_combo.findData(chosen))
    press(inst, "Shift-N")
    new_id = inst.selected_label
    window = index.bbox(neighbour)
    inst.brush_size = 15
    inst.paint((window[0].start, window[1].start), new_id)  # a dab over the neighbour's corner and background
    qtbot.waitUntil(lambda: len(widget._undo) == 1, timeout=5000)
    painted = np.asarray(inst.data) == new_id
    assert (painted & (labels0 == neighbour)).any() and (painted & (labels0 == 0)).any()
    assert (cls.data[painted] == chosen).all()  # not the neighbour's class (the old majority rule)
    assert (cls.data[inst.data == neighbour] == index.class_of(neighbour)).all()
    assert inst.features.set_index("label").loc[new_id, "class"] == chosen
    check_in_sync(inst, cls)
    press(inst, "Control-Z")
    np.testing.assert_array_equal(inst.data, labels0)
    np.testing.assert_array_equal(cls.data, classes0)


def test_edits_write_and_remember_only_the_touched_boxes(he_setup, monkeypatch, qtbot):
    """Work in proportion to the touched objects: pixels written, undo entries and outline updates
    stay inside the instance's box (counted, not timed)."""
    viewer, widget, inst, cls = he_setup
    written = {"he instances": [], "he classes": [], "he instances selection": []}
    for layer in (inst, cls):
        original = layer.data_setitem

        def counting(indices, value, refresh=True, _name=layer.name, _original=original):
            written[_name].append(tuple(np.asarray(i) for i in indices))
            return _original(indices, value, refresh)
        monkeypatch.setattr(layer, "data_setitem", counting)
    napari_history = len(inst._undo_history)
    index = widget.index()
    target = sorted(index.ids().tolist(), key=index.area_of)[len(index) // 2]
    box, area = index.bbox(target), index.area_of(target)

    click(inst, deepest(np.asarray(inst.data), target), ["Shift"])
    for name in ("he instances", "he classes"):
        (rows, cols), = written[name]
        assert rows.size == area  # exactly the instance's pixels
        assert box[0].start <= rows.min() and rows.max() < box[0].stop
        assert box[1].start <= cols.min() and cols.max() < box[1].stop
    edit = widget._undo[-1]
    assert [change.key for change in edit.changes] == [box, box]  # instances and classes
    assert sum(change.old.size for change in edit.changes) == 2 * (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
    assert len(inst._undo_history) == napari_history  # napari's own history does not hold a copy

    for name in written:
        written[name].clear()
    # the outline overlay is made ahead of the first selection (adding a layer is a long napari step)
    qtbot.waitUntil(lambda: "he instances selection" in viewer.layers, timeout=10_000)
    overlay = viewer.layers["he instances selection"]
    other = sorted(index.ids().tolist(), key=index.area_of)[len(index) // 3]
    plane_box = widget.index().bbox(other)
    click(inst, deepest(np.asarray(inst.data), other), ["Control"])
    drawn = np.nonzero(overlay_mask(overlay, inst))
    margin = 2 * (192 + 1)  # the overlay covers the selection's box and a margin, not the image
    assert overlay.data.size <= (plane_box[0].stop - plane_box[0].start + margin) * (plane_box[1].stop - plane_box[1].start + margin)
    assert drawn[0].size > 0
    assert plane_box[0].start <= drawn[0].min() and drawn[0].max() < plane_box[0].stop
    assert plane_box[1].start <= drawn[1].min() and drawn[1].max() < plane_box[1].stop
    assert not written["he instances"] and not written["he classes"]  # selecting writes no layer data
    press(inst, "Control-Z")
    (rows, _cols), = written["he instances"]
    assert rows.size == area  # undo rewrites the same pixels, nothing else


def test_dock_fits_a_1280x800_screen(make_napari_viewer, he_result):
    viewer = make_napari_viewer(show=True)
    image, labels, classes, index, names, scores = he_result
    show_segmentation(viewer, viewer.add_image(image, name="he"), labels, classes, class_names=names,
                      class_colors=None, index=index)
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct")
    window = viewer.window._qt_window
    assert window.minimumSizeHint().height() <= 800
    window.resize(1280, 800)
    assert window.height() <= 800
    # every button is reachable: in the scroll area's content
    content = widget.scroll.widget()
    for btn in widget.buttons.values():
        assert content.isAncestorOf(btn)


def test_result_index_is_used_and_data_replaced_by_a_script_is_reindexed(he_setup):
    viewer, widget, inst, cls = he_setup
    carried = inst.metadata["cellzoo"]["index"]
    assert widget.index() is carried  # the Segment job's index, no pass over the pixels
    shifted = np.roll(np.asarray(inst.data), 7, axis=1)
    inst.data = shifted  # replaced behind the widget's back: the carried index no longer describes it
    index = widget.index()
    assert index is not carried
    label = int(index.ids()[0])
    assert (shifted[index.bbox(label)] == label).sum() == index.area_of(label) == (shifted == label).sum()
