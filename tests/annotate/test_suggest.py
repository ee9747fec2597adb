"""Suggest what to annotate next, on real MoNuSeg test images with the embedded H&E model."""
from __future__ import annotations

import time

import numpy as np
import pytest

from cellzoo.annotate.suggest import (SuggestedPatch, box_inconsistency, candidate_boxes, grid_positions,
                                      nuclear_content_map, suggest_iter, suggest_patches, suggestions_geojson,
                                      two_stage_distance)
from cellzoo.data.io import read_image, read_labels
from cellzoo.types import CancelToken, Cancelled, Progress, run_to_end

MONUSEG_TEST = "monuseg2018/images/test"


@pytest.fixture(scope="module")
def monuseg_images(shared_data):
    paths = sorted((shared_data / MONUSEG_TEST).glob("*.png"))[:2]
    return [read_image(p) for p in paths]


@pytest.fixture(scope="module")
def he_model():
    from cellzoo.zoo import load_model

    loaded = load_model("cellzoo-he")
    return loaded[0] if isinstance(loaded, tuple) else loaded


def _boxes_overlap(a: SuggestedPatch, b: SuggestedPatch) -> bool:
    return (a.image_index == b.image_index and a.y < b.y + b.size and b.y < a.y + a.size
            and a.x < b.x + b.size and b.x < a.x + a.size)


def _check_ranked(patches, n, shapes):
    assert [p.rank for p in patches] == list(range(1, n + 1))
    for p in patches:
        height, width = shapes[p.image_index][:2]
        assert 0 <= p.y and p.y + p.size <= height and 0 <= p.x and p.x + p.size <= width
        assert 0 < p.representativeness <= 1 and 0 <= p.inconsistency <= 1
    assert not any(_boxes_overlap(a, b) for i, a in enumerate(patches) for b in patches[i + 1:])


def test_suggest_with_model_is_ranked_diverse_and_stable(monuseg_images, he_model):
    image = monuseg_images[0][:512, :768]  # 2×3 candidate boxes
    events = []
    started = time.perf_counter()
    patches = run_to_end(suggest_iter(image, he_model, n=3, seed=0), events.append)
    seconds = time.perf_counter() - started
    _check_ranked(patches, 3, [image.shape])
    assert all(p.size == 256 for p in patches)
    # one patch per cluster, ordered by the combined score
    assert len({p.cluster for p in patches}) == 3
    scores = [p.score for p in patches]
    assert scores == sorted(scores, reverse=True)
    assert all(np.isclose(p.score, p.representativeness * p.inconsistency) for p in patches)
    # a real model disagrees with itself somewhere on a real H&E image, and never everywhere
    assert 0 < max(p.inconsistency for p in patches) < 1
    assert isinstance(events[-1], Progress) and events[-1].done == events[-1].total
    again = suggest_patches(image, he_model, n=3, seed=0)
    assert [(p.y, p.x, p.cluster) for p in again] == [(p.y, p.x, p.cluster) for p in patches]
    assert np.allclose([p.score for p in again], scores)
    assert seconds < 40, f"suggest took {seconds:.1f} s for a 512×768 image"


def test_suggest_folder_of_images_without_model_is_stable(monuseg_images):
    patches = suggest_patches(monuseg_images, None, n=6, seed=3)
    _check_ranked(patches, 6, [im.shape for im in monuseg_images])
    # no model, no inconsistency: the estimated nuclear share of the box takes its place
    assert all(p.inconsistency == 0 and np.isclose(p.score, p.representativeness * p.nuclear_content)
               for p in patches)
    assert len({p.cluster for p in patches}) == 6
    plain = suggest_patches(monuseg_images, None, n=6, seed=3, nuclear_share=False)  # the A/B switch
    assert all(p.score == p.representativeness for p in plain) and len({p.cluster for p in plain}) == 6
    # 2 × 3×3 candidate boxes: both images are among the suggestions
    assert {p.image_index for p in patches} == {0, 1}
    again = suggest_patches(monuseg_images, None, n=6, seed=3)
    assert [p.as_dict() for p in again] == [p.as_dict() for p in patches]
    # more than there are candidates: every non-overlapping box, once
    everything = suggest_patches(monuseg_images[0], None, n=50)
    assert len(everything) == 9
    _check_ranked(everything, 9, [monuseg_images[0].shape])


def test_candidate_grid_is_centred_and_non_overlapping():
    assert grid_positions(1000, 256) == [116, 372, 628]
    assert grid_positions(2000, 256) == [104 + 256 * i for i in range(7)]
    assert grid_positions(200, 256) == [0]
    assert candidate_boxes((200, 600), 256) == [(0, 0, 200), (0, 200, 200), (0, 400, 200)]


def test_box_inconsistency_is_one_minus_pq(shared_data):
    labels = read_labels(sorted((shared_data / "monuseg2018/labels/test").glob("*.png"))[0]).astype(np.int32)
    boxes = candidate_boxes(labels.shape, 256)
    assert np.allclose(box_inconsistency([labels, labels, labels], boxes), 0)
    empty = np.zeros_like(labels)
    half = box_inconsistency([labels, labels, empty], boxes)
    # each box with nuclei: PQ 1 with itself and 0 with nothing
    assert np.allclose(half, 0.5)
    eroded = labels.copy()
    eroded[np.isin(labels, np.unique(labels)[1::2])] = 0  # every other nucleus missed
    partial = box_inconsistency([labels, eroded], boxes)
    assert np.all((partial > 0.2) & (partial < 0.8))


def test_two_stage_distance_prefers_the_cluster_core():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 10.0]])
    patches = np.concatenate([c + rng.normal(0, 0.5, (20, 2)) for c in centres])
    quads = patches[:, None, :] + rng.normal(0, 0.1, (40, 4, 2))
    patches[5] = centres[0]  # exactly at the centre, with tight quadrants
    quads[5] = centres[0]
    distance, clusters = two_stage_distance(patches, quads, 2, seed=0)
    assert len(set(clusters[:20])) == 1 and len(set(clusters[20:])) == 1 and clusters[0] != clusters[20]
    assert int(np.argmin(distance[:20])) == 5


def test_suggest_errors_and_cancel(monuseg_images):
    with pytest.raises(ValueError, match="n must be"):
        suggest_patches(monuseg_images[0], None, n=0)
    with pytest.raises(ValueError, match="no images"):
        suggest_patches([], None)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        suggest_patches(monuseg_images[0], None, cancel=token)


def test_geojson_rectangles():
    patch = SuggestedPatch(rank=1, image_index=0, y=10, x=20, size=256, score=0.5, representativeness=0.5,
                           inconsistency=1.0, cluster=0)
    feature = suggestions_geojson([patch])["features"][0]
    assert feature["geometry"]["coordinates"][0] == [[20, 10], [276, 10], [276, 266], [20, 266], [20, 10]]
    assert feature["properties"]["name"] == "1"


def test_threshold_variants_come_back_at_the_image_size_when_the_model_rescales():
    """cellzoo-fluo segments at scale "auto" (here 0.5): its kept maps are at that scale, the threshold
    variants are brought back to the image's size (they were not: 1 − PQ then failed on the shape)."""
    from cellzoo.annotate.suggest import segmentation_variants
    from cellzoo.data.samples import sample_image_path

    image = read_image(sample_image_path())[:256, :320]
    labels = run_to_end(segmentation_variants("cellzoo-fluo", image, variants=()))
    assert len(labels) == 3 and {lab.shape for lab in labels} == {image.shape}
    assert all(lab.max() > 0 for lab in labels)


def test_a_model_of_the_other_modality_ranks_by_colour_and_texture(monuseg_images):
    """cellzoo-fluo cannot see H&E nuclei: "auto" features fall back to the image's colour / texture (and no
    inconsistency), says so, and ranks exactly as without a model; "model" still uses the model."""
    from cellzoo.types import Message
    from cellzoo.zoo import load_model

    fluo = load_model("cellzoo-fluo")
    events = []
    auto = run_to_end(suggest_iter(monuseg_images[:1], fluo, n=3, seed=0), events.append)
    messages = [e.text for e in events if isinstance(e, Message)]
    assert any("colour and texture only" in m and "fluorescence" in m for m in messages)
    assert all(p.inconsistency == 0.0 for p in auto)
    without = suggest_patches(monuseg_images[:1], None, n=3, seed=0)
    assert [(p.y, p.x) for p in auto] == [(p.y, p.x) for p in without]
    forced = suggest_patches(monuseg_images[:1], fluo, n=3, seed=0, features="model")
    assert any(p.inconsistency > 0 for p in forced)
    with pytest.raises(ValueError, match="features must be"):
        suggest_patches(monuseg_images[:1], fluo, features="pixels")


def test_the_nuclear_content_estimate_follows_the_true_nuclei_and_steers_a_modelless_pick(shared_data):
    """Haematoxylin above Otsu (H&E) / brightness above Otsu (fluorescence): box means correlate with the true
    nuclear share of real 256² boxes; without a model the first pick holds more nuclei than the median box."""
    from cellzoo.data import load_shared_dataset
    from cellzoo.infer.prepare import prepare_image

    for dataset, floor in (("monuseg2018", 0.5), ("dsb2018", 0.6)):
        samples = [s for s in load_shared_dataset(dataset, "train", root=shared_data)
                   if min(s.labels.shape) >= 256][:8]
        estimated, true = [], []
        for sample in samples:
            prepared = prepare_image(sample.image)
            content, stride = nuclear_content_map(prepared)
            assert content.shape[:2] == tuple(-(-n // stride) for n in prepared.shape[:2])
            for y, x, size in candidate_boxes(prepared.shape[:2], 256):
                estimated.append(content[y // 2:(y + size) // 2, x // 2:(x + size) // 2].mean())
                true.append((sample.labels[y:y + size, x:x + size] > 0).mean())
        assert np.corrcoef(estimated, true)[0, 1] >= floor, dataset
        first = suggest_patches([s.image for s in samples], None, n=1, seed=0)[0]
        picked = samples[first.image_index].labels[first.y:first.y + 256, first.x:first.x + 256]
        assert (picked > 0).mean() >= np.median(true), dataset
