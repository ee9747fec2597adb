"""Evaluation sanity checks on real label maps: class maps as instances, unrelated or empty maps."""
from __future__ import annotations

import numpy as np

from cellzoo.data.io import read_labels
from cellzoo.metrics.sanity import chance_dice, evaluation_warnings, foreground_dice, map_kind


def _consep(shared_data, index=0):
    folder = shared_data / "consep" / "stitched" / "test"
    name = sorted((folder / "inst").glob("*.png"))[index].name
    return read_labels(folder / "inst" / name), read_labels(folder / "class" / name)


def test_matching_maps_give_no_warning(shared_data):
    inst, _ = _consep(shared_data)
    pred = inst.copy()
    pred[pred == pred.max()] = 0
    assert evaluation_warnings(inst, pred) == []


def test_a_class_map_as_ground_truth_is_named(shared_data):
    """The walkthrough's case: '<image> classes' as GT scored AJI 0.006 with Dice 1.000."""
    inst, classes = _consep(shared_data)
    [warning] = evaluation_warnings(classes, inst, name="test_1")
    assert warning.startswith("test_1: the ground truth looks like a class map") and "instance map" in warning
    assert map_kind(classes).kind == "classes" and map_kind(inst).kind == "instances"
    assert foreground_dice(classes, inst) == 1.0  # why Dice alone did not tell


def test_a_prediction_of_another_image_is_flagged(shared_data):
    first, _ = _consep(shared_data, 0)
    second, _ = _consep(shared_data, 1)
    assert first.shape == second.shape
    dice, chance = foreground_dice(first, second), chance_dice(first, second)
    assert dice < 1.5 * chance
    [warning] = evaluation_warnings(first, second)
    assert "no more than by chance" in warning and f"{dice:.3f}" in warning
    # a poor but real prediction of the same image (half the nuclei, each shrunk) is not flagged
    from scipy import ndimage

    poor = np.where(ndimage.binary_erosion(first > 0, iterations=2) & (first % 2 == 0), first, 0)
    assert 0.2 < foreground_dice(first, poor) < 0.6 and evaluation_warnings(first, poor) == []


def test_empty_sides_and_stacks(shared_data):
    inst, classes = _consep(shared_data)
    empty = np.zeros_like(inst)
    assert "prediction has no objects" in evaluation_warnings(inst, empty)[0]
    assert "ground truth has no objects" in evaluation_warnings(empty, inst)[0]
    assert evaluation_warnings(empty, empty) == []
    # a stack is judged by its first plane with objects
    assert map_kind(np.stack([empty, classes])).kind == "classes"
