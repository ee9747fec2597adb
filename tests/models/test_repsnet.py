"""RepSNet: checkpoint layout, re-parameterisation, targets, post-processing, losses."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io
from torch import nn

from cellzoo.models import build_model
from cellzoo.models.repsnet import (UNKNOWN_TYPE, RepSNet, RepSNetConfig, boundary_votes, distance_targets,
                                    widen_repsnet)

TINY = (8, 16, 32, 64)


def _manifest(shared_data: Path, name: str) -> dict[str, list[int]]:
    path = shared_data.parent / "checkpoint_manifests" / f"{name}.json"
    return json.loads(path.read_text())["tensors"]


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", ["S", "L"])
def test_state_dict_matches_authors_checkpoints(shared_data, variant):
    # meta device: shapes only, so the 206 M-parameter L builds instantly
    with torch.device("meta"):
        model = build_model("repsnet", {"variant": variant, "num_classes": 7})
    train = _manifest(shared_data, f"repsnet_{variant.lower()}_train")
    assert list(_shapes(model).items()) == list(train.items())
    model.reparameterize()
    assert model.config.deploy is True
    deploy = _manifest(shared_data, f"repsnet_{variant.lower()}_deploy")
    assert list(_shapes(model).items()) == list(deploy.items())
    with torch.device("meta"):
        direct = build_model("repsnet", {"variant": variant, "num_classes": 7, "deploy": True})
    assert _shapes(direct) == deploy


def _randomise_bn(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)


@pytest.mark.parametrize("variant, filters, num_classes, input_stride",
                         [("S", TINY, 5, 1), ("L", (8, 16, 24, 32, 48), 7, 1), ("S", TINY, 5, 2),
                          ("S", TINY, 5, 4)])
def test_reparameterized_outputs_equal_unfused(variant, filters, num_classes, input_stride):
    g = torch.Generator().manual_seed(3)
    model = build_model("repsnet", {"variant": variant, "filters": filters, "num_classes": num_classes,
                                    "input_stride": input_stride})
    torch.manual_seed(3)
    for p in model.parameters():
        p.data.normal_(0, 0.3, generator=g) if p.dim() > 1 else None
    _randomise_bn(model, g)
    model.eval()
    x = torch.rand(2, 3, 64 * input_stride, 48 * input_stride, generator=g) * 255
    with torch.no_grad():
        before = model(x)
    model.reparameterize()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        after = model(x)
    assert set(before) == set(after) == {"nucleus", "distance", "type"}
    for name in before:
        rel = (before[name] - after[name]).norm() / before[name].norm()
        assert rel < 1e-4, (name, float(rel))
        assert before[name].abs().max() > 0.01  # a dead network would pass trivially


def test_half_resolution_variant_geometry_and_maps():
    full = build_model("repsnet", {"filters": TINY, "num_classes": 5})
    half = build_model("repsnet", {"filters": TINY, "num_classes": 5, "input_stride": 2})
    # pixels folded into channels: 3 colours x 2 x 2 enter the first unit; everything else is unchanged
    assert half.encoder.downsample_1[0].conv3_bn.conv.weight.shape[1] == 12
    assert (half.size_divisor, half.halo) == (2 * full.size_divisor, 2 * full.halo)
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        out = half.eval()(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "nucleus": (1, 2, 64, 96), "distance": (1, 4, 64, 96), "type": (1, 5, 64, 96)}
    assert float(out["distance"].min()) >= 0.0  # bilinear upsampling keeps the ReLU'd distances >= 0
    with pytest.raises(ValueError, match="divisible by 16"):
        half(torch.rand(1, 3, 64, 72))
    with pytest.raises(ValueError, match="input_stride must be 1, 2 or 4"):
        RepSNetConfig(input_stride=3)


def test_distance_targets_hand_made_case():
    labels = np.array([[0, 1, 1, 1, 0],
                       [2, 2, 1, 1, 1],
                       [2, 0, 0, 1, 0]], dtype=np.int32)
    d = distance_targets(labels)
    left = [[0, 1, 2, 3, 0], [1, 2, 1, 2, 3], [1, 0, 0, 1, 0]]
    right = [[0, 3, 2, 1, 0], [2, 1, 3, 2, 1], [1, 0, 0, 1, 0]]
    up = [[0, 1, 1, 1, 0], [1, 1, 2, 2, 1], [2, 0, 0, 3, 0]]
    down = [[0, 1, 2, 3, 0], [2, 1, 1, 2, 1], [1, 0, 0, 1, 0]]
    np.testing.assert_array_equal(d, np.array([left, right, up, down], np.float32))


def _reference_distances(labels):
    # direct transcription of the authors' per-instance, per-row/column loop
    out = np.zeros((4,) + labels.shape)
    for i in np.unique(labels)[1:]:
        mask = labels == i
        for r in np.flatnonzero(mask.any(1)):
            cols = np.flatnonzero(mask[r])
            out[0, r, cols] = np.arange(1, cols.size + 1)
            out[1, r, cols] = np.arange(cols.size, 0, -1)
        for c in np.flatnonzero(mask.any(0)):
            rows = np.flatnonzero(mask[:, c])
            out[2, rows, c] = np.arange(1, rows.size + 1)
            out[3, rows, c] = np.arange(rows.size, 0, -1)
    return out


def test_distance_targets_match_reference_on_real_labels(shared_data):
    labels = io.imread(shared_data / "consep/train/inst/train_1_004.png").astype(np.int32)[:96, :128]
    assert len(np.unique(labels)) > 5
    np.testing.assert_array_equal(distance_targets(labels), _reference_distances(labels))


def test_targets_and_errors():
    model = RepSNet(RepSNetConfig(filters=TINY, num_classes=3))
    labels = np.zeros((8, 8), np.int32)
    labels[2:5, 2:6] = 7
    classes = np.zeros((8, 8), np.uint8)
    classes[2:5, 2:6] = 2
    t = model.targets(labels, classes)
    assert t["nucleus"].sum() == 12 and t["type"].max() == 2
    np.testing.assert_allclose(t["distance"][0, 3, 2:6], np.sqrt([1, 2, 3, 4]))
    # without a class map, nuclei get the "unknown type" id that the type losses ignore
    assert set(np.unique(model.targets(labels, None)["type"])) == {0, UNKNOWN_TYPE}
    with pytest.raises(ValueError, match="class 5"):
        model.targets(labels, classes * 0 + 5)
    with pytest.raises(ValueError, match="2-D"):
        model.targets(labels[None], None)
    with pytest.raises(ValueError, match="variant"):
        RepSNetConfig(variant="M")
    with pytest.raises(ValueError, match="4 positive"):
        RepSNetConfig(filters=(8, 16))
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.zeros(1, 3, 60, 64))


def _perfect_maps(labels, classes=None, num_classes=2):
    fg = labels > 0
    maps = {"nucleus": np.stack([~fg, fg]).astype(np.float32),
            "distance": np.sqrt(distance_targets(labels))}
    if classes is not None:
        maps["type"] = np.eye(num_classes, dtype=np.float32)[np.where(fg, classes, 0)].transpose(2, 0, 1)
    return maps


def _matched_fraction(gt, pred, iou=0.5):
    ids = np.unique(gt)[1:]
    hits = 0
    for i in ids:
        mask = gt == i
        overlap = np.bincount(pred[mask])
        overlap[0] = 0
        if overlap.max() == 0:
            continue
        j = overlap.argmax()
        hits += overlap[j] / (mask.sum() + (pred == j).sum() - overlap[j]) > iou
    return hits / ids.size


def test_postprocess_keeps_the_nucleus_in_the_top_left_corner():
    labels = np.zeros((48, 48), np.int32)
    labels[0:7, 0:9] = 1           # touches (0, 0): the original dropped this one
    labels[0:6, 9:16] = 2          # touches nucleus 1
    labels[20:30, 20:28] = 3
    labels[35:44, 5:15] = 4
    labels[40:48, 38:48] = 5       # touches the bottom-right corner
    model = RepSNet(RepSNetConfig(filters=TINY, boundary_threshold=3))
    inst = model.postprocess(_perfect_maps(labels))
    assert inst.count == 5
    assert inst.labels[0, 0] != 0
    assert _matched_fraction(labels, inst.labels, iou=0.8) == 1.0
    assert inst.classes is None and set(inst.class_of.values()) == {1}
    assert all(0.99 <= s <= 1.0 for s in inst.scores.values())
    assert inst.labels.dtype == np.int32


def test_postprocess_recovers_real_consep_instances_and_types(shared_data):
    root = shared_data / "consep/train"
    labels = io.imread(root / "inst/train_1_004.png").astype(np.int32)
    classes = io.imread(root / "class/train_1_004.png").astype(np.uint8)
    model = RepSNet(RepSNetConfig(filters=TINY, num_classes=5, boundary_threshold=4))
    inst = model.postprocess(_perfect_maps(labels, classes, 5))
    assert _matched_fraction(labels, inst.labels) >= 0.95
    assert abs(inst.count - (len(np.unique(labels)) - 1)) <= 0.05 * inst.count
    # majority type per predicted instance equals the GT type of the pixels it covers
    agree = (inst.classes == classes)[inst.labels > 0].mean()
    assert agree > 0.95
    assert inst.class_names == ["background", "class 1", "class 2", "class 3", "class 4"]


def test_boundary_votes_hand_case():
    fg = np.zeros((5, 7), bool)
    fg[1:4, 1:6] = True
    d = np.zeros((4, 5, 7), np.float32)
    # centre pixel (2, 3) points 3 left, 3 right, 2 up, 2 down: boundary (2,1), (2,5), (1,3), (3,3)
    d[:, 2, 3] = np.sqrt([3, 3, 2, 2])
    votes = boundary_votes(d, fg)
    contour = fg.copy()
    contour[2, 2:5] = False
    expect = contour.astype(np.int32)
    # every other foreground pixel has distance 0 -> votes one pixel outward of itself (clamped)
    ys, xs = np.nonzero(fg)
    for y, x in zip(ys, xs):
        if (y, x) == (2, 3):
            for vy, vx in [(2, 1), (2, 5), (1, 3), (3, 3)]:
                expect[vy, vx] += 1
        else:
            for vy, vx in [(y, x + 1), (y, x - 1), (y + 1, x), (y - 1, x)]:
                expect[min(max(vy, 0), 4), min(max(vx, 0), 6)] += 1
    np.testing.assert_array_equal(votes, expect)


def test_boundary_votes_equal_a_per_pixel_loop_on_real_distances(shared_data):
    from scipy import ndimage

    labels = io.imread(shared_data / "consep/train/inst/train_1_004.png").astype(np.int32)[:64, :72]
    rng = np.random.default_rng(3)
    # real distance targets, perturbed so that votes also land off the true boundary and past the edges
    sqrt_d = np.sqrt(distance_targets(labels)) + rng.normal(0, 0.4, (4,) + labels.shape).astype(np.float32)
    sqrt_d = np.abs(sqrt_d).astype(np.float32)
    fg = labels > 0
    h, w = fg.shape
    expect = (fg & ~ndimage.binary_erosion(fg, np.ones((3, 3), bool), border_value=1)).astype(np.int32)
    for y, x in zip(*np.nonzero(fg)):
        left, right, up, down = (int(np.floor(v * v + 0.5)) for v in sqrt_d[:, y, x])
        for vy, vx in [(y, x - left + 1), (y, x + right - 1), (y - up + 1, x), (y + down - 1, x)]:
            expect[min(max(vy, 0), h - 1), min(max(vx, 0), w - 1)] += 1
    np.testing.assert_array_equal(boundary_votes(sqrt_d, fg), expect)


def test_fast_erosion_and_channel_argmax_equal_the_library_versions():
    from scipy import ndimage

    from cellzoo.models.repsnet import _argmax_channels, _erode3x3

    rng = np.random.default_rng(5)
    for shape in [(1, 1), (1, 7), (6, 1), (40, 53)]:
        mask = rng.random(shape) < 0.8
        expected = ndimage.binary_erosion(mask, np.ones((3, 3), bool), border_value=1)
        np.testing.assert_array_equal(_erode3x3(mask), expected)
    # probabilities with exact ties (quantised): argmax keeps the first of equal channels, so must this
    prob = np.round(rng.random((5, 30, 40)), 1).astype(np.float32)
    at = np.flatnonzero(rng.random(30 * 40) < 0.5)
    expected = prob[1:].reshape(4, -1)[:, at].argmax(0) + 1
    np.testing.assert_array_equal(_argmax_channels(prob, at, first=1), expected)


def test_postprocess_rejects_bad_maps():
    model = RepSNet(RepSNetConfig(filters=TINY))
    with pytest.raises(ValueError, match="distance"):
        model.postprocess({"nucleus": np.zeros((2, 8, 8), np.float32)})
    with pytest.raises(ValueError, match="unknown"):
        model.postprocess(_perfect_maps(np.zeros((8, 8), np.int32)), threshold=3)


def test_losses_decrease_on_a_real_consep_crop(shared_data):
    torch.manual_seed(0)
    root = shared_data / "consep/train"
    image = io.imread(root / "images/train_1_004.jpg")[:64, :64].astype(np.float32)
    labels = io.imread(root / "inst/train_1_004.png").astype(np.int32)[:64, :64]
    classes = io.imread(root / "class/train_1_004.png").astype(np.uint8)[:64, :64]
    model = build_model("repsnet", {"filters": TINY, "num_classes": 5,
                                    "type_class_weights": (0.5, 1, 1, 1, 2)})
    x = model.preprocess(image)[None]
    assert float(x.max()) > 1.0  # stays on 0-255; the network scales inside
    t = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in model.targets(labels, classes).items()}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(15):
        losses = model.loss(model(x), t)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    assert set(history[0]) == {"nucleus_ce", "nucleus_dice", "type_ce", "type_dice", "type_focal",
                               "distance", "total"}
    for key in ("total", "nucleus_ce", "type_ce", "distance"):
        assert history[-1][key] < 0.8 * history[0][key], key


def _distance_net(labels_batch: torch.Tensor) -> dict[str, torch.Tensor]:
    # a "network" whose output is the exact target of its input: any TTA error shows up exactly
    maps = [np.sqrt(distance_targets(lab.numpy().astype(np.int32))) for lab in labels_batch[:, 0]]
    return {"distance": torch.from_numpy(np.stack(maps))}


def test_dihedral_tta_restores_direction_channels(shared_data):
    from cellzoo.models._dense_common import LRUD, dihedral_transforms, dihedral_tta

    labels = io.imread(shared_data / "consep/train/inst/train_1_004.png").astype(np.int32)[:40, :56]
    x = torch.from_numpy(labels)[None, None]
    exact = _distance_net(x)["distance"]
    for op in dihedral_transforms():
        one = dihedral_tta(_distance_net, x, {"distance": LRUD}, transforms=[op])
        torch.testing.assert_close(one["distance"], exact)
    # without the channel permutation the rotated passes would disagree
    wrong = dihedral_tta(_distance_net, x, None)
    assert (wrong["distance"] - exact).abs().max() > 1


def test_engine_tta_hook_agrees(shared_data):
    from cellzoo.infer.tta import DIHEDRAL_OPS

    model = RepSNet(RepSNetConfig(filters=TINY))
    labels = io.imread(shared_data / "consep/train/inst/train_1_004.png").astype(np.int32)[:40, :56]
    x = torch.from_numpy(labels)[None, None]
    exact = _distance_net(x)["distance"]
    for op in DIHEDRAL_OPS:
        back = op.invert(_distance_net(op.apply(x))["distance"])
        torch.testing.assert_close(model.tta_transform_maps({"distance": back}, op)["distance"], exact)


def test_saved_deploy_model_rebuilds_in_deploy_form(tmp_path):
    from cellzoo.zoo.weights import load_weights, save_weights

    model = build_model("repsnet", {"filters": TINY, "num_classes": 4, "class_names": ["bg", "a", "b", "c"],
                                    "boundary_threshold": 5}).eval()
    model.reparameterize()
    path = save_weights(model, tmp_path / "m.safetensors")
    loaded, meta = load_weights(path)
    assert isinstance(loaded, RepSNet) and loaded.config.deploy and loaded.config.filters == TINY
    assert loaded.class_names == ["bg", "a", "b", "c"]
    assert loaded.default_postprocess_params()["boundary_threshold"] == 5
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x)["type"], model(x)["type"])


def test_attach_to_nearest_equals_euclidean_nearest(shared_data):
    from scipy import ndimage

    from cellzoo.models._dense_common import attach_to_nearest

    labels = io.imread(shared_data / "consep/train/inst/train_1_004.png").astype(np.int32)[:80, :80]
    rng = np.random.default_rng(0)
    holes = (rng.random(labels.shape) < 0.3) | (labels == 0)
    sparse = np.where(holes, 0, labels)
    out = sparse.copy()
    attach_to_nearest(out, holes, 3.0)
    dist = ndimage.distance_transform_edt(sparse == 0)
    # exactly the candidates within 3 px of some instance got an id ...
    np.testing.assert_array_equal(out[holes] > 0, dist[holes] <= 3.0)
    # ... and that id's nearest pixel is as close as the overall nearest (ties may pick either)
    ys, xs = np.nonzero(holes & (out > 0))
    for y, x in zip(ys[::7], xs[::7]):
        py, px = np.nonzero(sparse == out[y, x])
        assert np.isclose(np.sqrt((py - y) ** 2 + (px - x) ** 2).min(), dist[y, x])
    np.testing.assert_array_equal(out[~holes], sparse[~holes])
    # areas handed in by a caller that has them (RepSNet's size filter) give the same result
    given = sparse.copy()
    attach_to_nearest(given, holes, 3.0, area=np.bincount(sparse.ravel()))
    np.testing.assert_array_equal(given, out)


def test_postprocess_is_equivariant_to_flips_and_rotations(shared_data):
    from cellzoo.models._dense_common import LRUD, direction_permutation

    root = shared_data / "consep/train"
    labels = io.imread(root / "inst/train_1_004.png").astype(np.int32)[:128, :160]
    rng = np.random.default_rng(1)
    maps = _perfect_maps(labels)
    # noisy distances: boundaries get broken and doubled, so ties in re-attachment and holes occur
    maps["distance"] = np.clip(maps["distance"] + rng.normal(0, 0.35, maps["distance"].shape), 0, None)
    maps["distance"] = maps["distance"].astype(np.float32) * (labels > 0)
    model = RepSNet(RepSNetConfig(filters=TINY, boundary_threshold=3))
    base = model.postprocess(maps).labels
    assert base.max() > 20
    for k, flip in ((1, False), (2, False), (0, True), (3, True)):
        def forward(a):
            a = a[..., ::-1] if flip else a
            return np.ascontiguousarray(np.rot90(a, k, axes=(-2, -1)))
        moved = {name: forward(v) for name, v in maps.items()}
        # channel c of the moved image's map measures the moved direction; pick them so that they
        # measure left/right/up/down of the moved image (inverse of the TTA permutation)
        inverse = direction_permutation(LRUD, k, flip)
        moved["distance"] = moved["distance"][np.argsort(inverse)]
        result = model.postprocess(moved).labels
        back = np.rot90(result, -k)
        back = back[:, ::-1] if flip else back
        pairs = np.unique(np.stack([base.ravel(), back.ravel()]), axis=1)
        # the same partition: every id pairs with exactly one id of the other result
        assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1], (k, flip)


def test_a_distance_channel_below_zero_still_learns(shared_data):
    # a "dead" ReLU output (pre-activation < 0 everywhere) gets no gradient through the ReLU; the loss fits
    # nucleus pixels on the pre-ReLU map, so the channel recovers instead of voting every pixel a boundary
    root = shared_data / "consep/train"
    image = io.imread(root / "images/train_1_004.jpg")[:64, :64].astype(np.float32)
    labels = io.imread(root / "inst/train_1_004.png").astype(np.int32)[:64, :64]
    model = build_model("repsnet", {"filters": TINY, "input_stride": 2})
    with torch.no_grad():
        model.boundary_distance_map[0].bias[1] = -50.0
    x = model.preprocess(image)[None]
    t = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in model.targets(labels, None).items()}
    out = model.train()(x)
    assert float(out["distance"][:, 1].abs().max()) == 0.0  # dead at the output
    model.loss(out, t)["total"].backward()
    grad = model.boundary_distance_map[0].bias.grad
    assert grad[1] < 0  # gradient descent raises the dead channel's bias
    with torch.no_grad():
        assert "distance_raw" not in model.eval()(x)  # inference and export see the authors' outputs only


def test_type_map_names_instances_but_never_removes_them(shared_data):
    # real MoNuSeg nuclei; the type map calls half of them "background" (as a typed model does on untyped
    # H&E it learned only background from): those nuclei stay, with their most likely foreground type
    labels = io.imread(shared_data / "monuseg2018/labels/test" / sorted(
        p.name for p in (shared_data / "monuseg2018/labels/test").glob("*.png"))[0]).astype(np.int32)[:256, :256]
    maps = _perfect_maps(labels)
    ids = np.unique(labels)[1:]
    type_prob = np.zeros((5,) + labels.shape, np.float32)
    type_prob[0] = 1.0
    type_prob[0, labels > 0] = 0.6
    type_prob[3, labels > 0] = 0.3  # the runner-up foreground type: epithelial
    hidden = np.isin(labels, ids[::2])  # every other nucleus: type map says background
    type_prob[0, (labels > 0) & ~hidden] = 0.1
    type_prob[2, (labels > 0) & ~hidden] = 0.8
    maps["type"] = type_prob
    model = build_model("repsnet", {"filters": TINY, "num_classes": 5})
    result = model.postprocess(maps, min_size=0)
    assert _matched_fraction(labels, result.labels) > 0.95
    right = []
    for gt_id in ids:
        overlap = np.bincount(result.labels[labels == gt_id])
        overlap[0] = 0
        if overlap.max() > 0:
            expected = 3 if gt_id in ids[::2] else 2
            right.append(result.class_of[int(overlap.argmax())] == expected)
    assert len(right) > 0.95 * len(ids) and np.mean(right) > 0.95


def _postprocess_count_in_child(maps, queue):
    model = RepSNet(RepSNetConfig(filters=TINY, num_classes=5, boundary_threshold=4))
    queue.put(int(model.postprocess(maps).labels.max()))


def test_threaded_postprocess_steps_equal_serial_ones_and_survive_fork(shared_data):
    """The post-processing hands independent halves to a helper thread on large images: same results as the
    serial path, and a child forked after the parent used the helper (whose thread it does not inherit)
    still finishes."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    from cellzoo.models._dense_common import attach_to_nearest

    root = shared_data / "consep/stitched/train"
    labels = io.imread(root / "inst/train_1.png").astype(np.int32)
    classes = io.imread(root / "class/train_1.png").astype(np.uint8)
    maps = _perfect_maps(labels, classes, 5)
    fg = labels > 0
    assert fg.sum() > 50_000  # large enough for the threaded branches
    with ThreadPoolExecutor(1) as pool:
        np.testing.assert_array_equal(boundary_votes(maps["distance"], fg, executor=pool),
                                      boundary_votes(maps["distance"], fg))
        holes = (np.random.default_rng(1).random(labels.shape) < 0.3) & fg
        serial, threaded = np.where(holes, 0, labels), np.where(holes, 0, labels)
        attach_to_nearest(serial, holes, 3.0)
        attach_to_nearest(threaded, holes, 3.0, executor=pool)
        np.testing.assert_array_equal(threaded, serial)
    model = RepSNet(RepSNetConfig(filters=TINY, num_classes=5, boundary_threshold=4))
    expected = int(model.postprocess(maps).labels.max())  # the parent's helper thread now exists
    assert expected > 500
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_postprocess_count_in_child, args=(maps, queue))
    child.start()
    child.join(timeout=120)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "post-processing hung in a forked child"
    assert queue.get(timeout=5) == expected


def test_postprocess_fills_a_hole_inside_one_nucleus_but_not_a_gap_between_two():
    from skimage.draw import disk

    labels = np.zeros((48, 72), np.int32)
    labels[disk((22, 18), 11, shape=labels.shape)] = 1
    labels[disk((22, 18), 3, shape=labels.shape)] = 0  # a hole inside nucleus 1
    labels[10:34, 40:52] = 2  # nuclei 2 and 3 enclose a gap between them
    labels[10:34, 52:64] = 3
    labels[18:26, 48:56] = 0
    model = RepSNet(RepSNetConfig(filters=TINY, num_classes=2, boundary_threshold=4, min_size=8))
    out = model.postprocess(_perfect_maps(labels)).labels
    ring = out[22, 18 + 8]
    assert ring > 0 and out[22, 18] == ring  # the hole took its nucleus' id
    assert out[22, 52] == 0  # the gap touches two nuclei: stays background
    assert len(np.unique(out[10:34, 40:64])) == 3  # background + the two nuclei


def test_recovered_components_have_their_own_size_filter():
    """A small isolated nucleus is a whole foreground component: ``recover_min_size`` keeps it while ``min_size``
    still removes the boundary split's small pieces; by default the two bounds are the same."""
    from skimage.draw import disk

    labels = np.zeros((64, 64), np.int32)
    labels[disk((20, 20), 9, shape=labels.shape)] = 1  # 253 px
    labels[disk((48, 48), 2.5, shape=labels.shape)] = 2  # 21 px: below min_size 32
    maps = _perfect_maps(labels)
    model = RepSNet(RepSNetConfig(filters=TINY, num_classes=2, boundary_threshold=4, min_size=32))
    default = model.postprocess(maps).labels
    assert default.max() == 1 and default[48, 48] == 0
    kept = model.postprocess(maps, recover_min_size=16).labels
    assert kept.max() == 2 and kept[48, 48] == 2
    np.testing.assert_array_equal(kept == 2, labels == 2)
    np.testing.assert_array_equal(kept == 1, default == 1)
    # the bound is strict, as min_size's: a component of exactly recover_min_size pixels stays out
    assert model.postprocess(maps, recover_min_size=int((labels == 2).sum())).labels.max() == 1
    model.config.recover_min_size = 16  # a model's own default, as finalize_default.py stores it
    np.testing.assert_array_equal(model.postprocess(maps).labels, kept)


@pytest.mark.parametrize("variant, filters, wider, input_stride",
                         [("S", TINY, (12, 20, 40, 64), 2), ("L", (8, 16, 24, 32, 48), (8, 24, 24, 40, 96), 1)])
def test_widened_model_computes_the_same_maps(variant, filters, wider, input_stride):
    g = torch.Generator().manual_seed(5)
    model = build_model("repsnet", {"variant": variant, "filters": filters, "num_classes": 5,
                                    "input_stride": input_stride})
    for p in model.parameters():
        p.data.normal_(0, 0.3, generator=g) if p.dim() > 1 else None
    _randomise_bn(model, g)
    model.eval().reparameterize()
    x = torch.rand(2, 3, 64 * input_stride, 48 * input_stride, generator=g) * 255
    wide = widen_repsnet(model, wider, noise=0.0).eval()
    assert wide.config.filters == wider and wide.config.deploy
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        before, after = model(x), wide(x)
    for name in before:
        rel = (before[name] - after[name]).norm() / before[name].norm()
        assert rel < 1e-5, (name, float(rel))
        assert before[name].abs().max() > 0.01
    # with noise the copies differ from their sources (or training could never tell them apart) ...
    noisy = widen_repsnet(model, wider, noise=0.05, seed=1)
    first = noisy.encoder.downsample_1[0].conv_reparam.weight if variant == "S" else \
        noisy.encoder.downsample_0[0].conv_reparam.weight
    old = filters[0]
    copies = first[old:]
    assert not any(torch.equal(copies[k], first[j]) for k in range(len(copies)) for j in range(old))
    # ... while the maps stay close to the model's
    with torch.no_grad():
        jittered = noisy.eval()(x)
    for name in before:
        assert (before[name] - jittered[name]).norm() / before[name].norm() < 0.2


def test_widening_a_trained_model_keeps_its_segmentation(shared_data):
    from cellzoo.infer import segment
    from cellzoo.metrics.instance import aji
    from cellzoo.zoo.weights import load_weights

    model = load_weights(Path(__file__).parents[2] / "src/cellzoo/zoo/embedded/cellzoo-fluo.safetensors")[0]
    image = io.imread(next(iter(sorted((shared_data / "dsb2018/test/images").glob("*.tif")))))
    wide = widen_repsnet(model, (24, 40, 64, 160), noise=0.0)
    a = segment(model, image, amp=False, device="cpu", scale=1.0).labels
    b = segment(wide, image, amp=False, device="cpu", scale=1.0).labels
    assert a.max() > 5 and aji(a, b) > 0.999


def test_widening_refuses_what_it_cannot_do():
    model = build_model("repsnet", {"variant": "S", "filters": TINY, "num_classes": 2})
    with pytest.raises(ValueError, match="reparameterize"):
        widen_repsnet(model, (16, 32, 48, 64))
    model.reparameterize()
    with pytest.raises(ValueError, match="at least"):
        widen_repsnet(model, tuple(f - 1 for f in TINY))
    with pytest.raises(ValueError, match="levels"):
        widen_repsnet(model, TINY[:-1])
