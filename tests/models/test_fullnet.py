"""FullNet + varCE: checkpoint layout, ternary labels, weight map, varCE, post-processing, losses."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage import io

from cellzoo.data.stain import lab_stats
from cellzoo.models import build_model
from cellzoo.models.fullnet import (FullNet, FullNetConfig, MONUSEG_ANCHOR_LAB, ternary_labels, variance_loss,
                                    weight_map)

TINY = {"stem_channels": 8, "growth_rate": 6, "n_layers": 4, "dilations": (1, 2, 4, 1)}


def test_state_dict_matches_authors_checkpoint(shared_data):
    manifest = json.loads((shared_data.parent / "checkpoint_manifests/fullnet_multiorgan.json").read_text())
    expected = [(k.removeprefix("module."), v) for k, v in manifest["tensors"].items()]
    model = build_model("fullnet", {})
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"]


def test_hybrid_dilation_schedule_and_errors():
    model = FullNet()
    convs = [m for name, m in model.named_modules() if name.endswith("denselayer3.conv.conv")]
    assert [c.dilation[0] for c in convs] == [1, 3, 3, 7, 16, 3, 1]
    with pytest.raises(ValueError, match="hybrid dilation"):
        FullNetConfig(n_layers=5)
    with pytest.raises(ValueError, match="mean/std"):
        FullNetConfig(std=(1.0, 0.0, 1.0))


def test_ternary_labels_hand_made_case():
    labels = np.zeros((9, 14), np.int32)
    labels[1:8, 1:6] = 1
    labels[1:8, 6:13] = 2     # touches object 1 along a column
    t = ternary_labels(labels, radius=1)
    inside = np.zeros_like(labels, bool)
    inside[2:7, 2:5] = True   # object 1 eroded by the cross
    inside[2:7, 7:12] = True  # object 2 eroded
    assert set(np.unique(t)) == {0, 1, 2}
    # inside class = inside minus its own 1-px rim (erosion by disk(1)), contour = rim + 1 px outside
    from scipy import ndimage
    cross = ndimage.generate_binary_structure(2, 1)
    core = ndimage.binary_erosion(inside, cross, border_value=1)
    ring = ndimage.binary_dilation(inside, cross) & ~core
    np.testing.assert_array_equal(t == 1, core)
    np.testing.assert_array_equal(t == 2, ring)
    # the two touching nuclei are separated in the inside class
    _, n = ndimage.label(t == 1)
    assert n == 2


def _reference_weight_map(labels, w0, sigma):
    # direct per-pixel computation: distances to every object's boundary pixels, two smallest
    h, w = labels.shape
    padded = np.pad(labels, 1)
    bounds = []
    for i in np.unique(labels)[1:]:
        ys, xs = np.nonzero(labels == i)
        keep = [(y, x) for y, x in zip(ys, xs)
                if min(padded[y, x + 1], padded[y + 2, x + 1], padded[y + 1, x], padded[y + 1, x + 2]) != i
                or max(padded[y, x + 1], padded[y + 2, x + 1], padded[y + 1, x], padded[y + 1, x + 2]) != i]
        bounds.append(np.array(keep, float))
    out = np.ones((h, w))
    for y in range(h):
        for x in range(w):
            d = sorted(np.sqrt(((b - (y, x)) ** 2).sum(1)).min() for b in bounds)
            out[y, x] += w0 * math.exp(-(d[0] + d[1]) ** 2 / (2 * sigma ** 2))
    return out


def test_weight_map_matches_direct_computation():
    labels = np.zeros((30, 34), np.int32)
    labels[3:10, 4:12] = 1
    labels[5:14, 13:20] = 2
    labels[18:27, 8:15] = 3
    labels[20:30, 26:34] = 4   # touches the image border
    got = weight_map(labels, w0=10, sigma=5)
    np.testing.assert_allclose(got, _reference_weight_map(labels, 10, 5), atol=2e-4)
    assert got.max() > 8  # pixels between touching objects get most of w0
    single = np.zeros((10, 10), np.int32)
    single[2:5, 2:5] = 1
    np.testing.assert_array_equal(weight_map(single), 1.0)


def test_variance_loss_against_hand_computation():
    # one image, 2 channels, 1×4 pixels; instance 1 = pixels 0,1; instance 2 = pixel 3 (single pixel)
    probs = torch.tensor([[[[0.2, 0.6, 0.5, 0.9]], [[0.8, 0.4, 0.5, 0.1]]]])
    instances = torch.tensor([[[1, 1, 0, 2]]])
    # unbiased var of (0.2, 0.6) = 0.08 per channel, both channels -> 0.16; two instances -> /2
    assert float(variance_loss(probs, instances)) == pytest.approx(0.16 / 2, rel=1e-5)
    # batch of two: second image has no instance and contributes 0; mean over batch
    both = variance_loss(torch.cat([probs, probs]), torch.cat([instances, torch.zeros_like(instances)]))
    assert float(both) == pytest.approx(0.16 / 2 / 2, rel=1e-5)


def test_variance_loss_matches_authors_loop_on_random_maps():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 3, 20, 20, generator=g).softmax(1)
    instances = torch.randint(0, 6, (3, 20, 20), generator=g)
    expected = 0.0
    for b in range(3):
        vals = [v for v in instances[b].unique() if v != 0]
        s = sum(probs[b][:, instances[b] == v].var(dim=1).sum() for v in vals
                if (instances[b] == v).sum() > 1)
        expected += s / (len(vals) + 1e-8)
    assert float(variance_loss(probs, instances)) == pytest.approx(float(expected) / 3, rel=1e-5)


def test_postprocess_recovers_real_monuseg_instances(shared_data):
    labels = io.imread(shared_data / "monuseg2018/labels/train/TCGA-G9-6356-01Z-00-DX1.png").astype(np.int32)
    labels = labels[:400, :400]
    model = FullNet(FullNetConfig(**TINY))
    t = model.targets(labels, None)
    perfect = np.eye(3, dtype=np.float32)[t["ternary"]].transpose(2, 0, 1)
    inst = model.postprocess({"ternary": perfect})
    ids = np.unique(labels)[1:]
    big = [i for i in ids if (labels == i).sum() >= 60]
    hits = 0
    for i in big:
        mask = labels == i
        overlap = np.bincount(inst.labels[mask])
        overlap[0] = 0
        j = overlap.argmax()
        hits += overlap[j] / (mask.sum() + (inst.labels == j).sum() - overlap[j]) > 0.5
    assert hits / len(big) >= 0.9
    assert inst.labels.dtype == np.int32 and inst.classes is None
    assert all(0.99 < s <= 1.0 for s in inst.scores.values())
    with pytest.raises(ValueError, match="ternary"):
        model.postprocess({"x": perfect})
    with pytest.raises(ValueError, match="unknown"):
        model.postprocess({"ternary": perfect}, min_size=3)


def test_postprocess_removes_small_and_dilates():
    prob = np.zeros((3, 20, 20), np.float32)
    prob[0] = 1
    prob[:, 2:8, 2:8] = np.array([0, 1, 0])[:, None, None]   # 36 px inside
    prob[:, 15:18, 15:18] = np.array([0, 1, 0])[:, None, None]  # 9 px: removed (min_area 20)
    inst = FullNet(FullNetConfig(**TINY)).postprocess({"ternary": prob})
    assert inst.count == 1
    from scipy import ndimage
    from skimage.morphology import disk
    square = np.zeros((20, 20), bool)
    square[2:8, 2:8] = True
    grown = ndimage.binary_dilation(square, disk(2).astype(bool))
    np.testing.assert_array_equal(inst.labels > 0, grown)   # 6x6 grown by disk(2): 88 px
    assert inst.scores == {1: pytest.approx(1.0)}          # scored on the predicted inside only


def test_preprocess_reinhard_and_normalisation(shared_data):
    image = io.imread(shared_data / "consep/train/images/train_1_004.jpg").astype(np.float32)
    plain = FullNet(FullNetConfig(**TINY)).preprocess(image)
    mean = np.array([0.7441, 0.5381, 0.6650])[:, None, None]
    std = np.array([0.1581, 0.1971, 0.1505])[:, None, None]
    np.testing.assert_allclose(plain.numpy(), (image.transpose(2, 0, 1) / 255 - mean) / std, rtol=1e-4, atol=1e-4)
    normed = FullNet(FullNetConfig(**TINY, reinhard=True)).preprocess(image).numpy()
    rgb = ((normed * std + mean) * 255).transpose(1, 2, 0)
    stats = lab_stats(np.clip(rgb, 0, 255))
    np.testing.assert_allclose(stats.mean, MONUSEG_ANCHOR_LAB[0], atol=1.0)
    np.testing.assert_allclose(stats.std, MONUSEG_ANCHOR_LAB[1], rtol=0.08)


def test_losses_decrease_on_a_real_monuseg_crop(shared_data):
    torch.manual_seed(0)
    name = "TCGA-G9-6356-01Z-00-DX1.png"
    image = io.imread(shared_data / "monuseg2018/images/train" / name)[384:432, 600:648, :3].astype(np.float32)
    labels = io.imread(shared_data / "monuseg2018/labels/train" / name).astype(np.int32)[384:432, 600:648]
    model = build_model("fullnet", {**TINY, "drop_rate": 0.0})
    x = model.preprocess(image)[None]
    t = {k: torch.from_numpy(v)[None] for k, v in model.targets(labels, None).items()}
    assert int(t["inside_instances"].max()) >= 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(12):
        losses = model.loss(model(x), t)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    assert set(history[0]) == {"weighted_ce", "var_ce", "total"}
    assert history[-1]["total"] < 0.7 * history[0]["total"]
    assert history[-1]["weighted_ce"] < 0.7 * history[0]["weighted_ce"]


def test_weights_round_trip(tmp_path):
    from cellzoo.zoo.weights import load_weights, save_weights

    model = build_model("fullnet", {**TINY, "reinhard": True, "min_area": 30}).eval()
    loaded, _meta = load_weights(save_weights(model, tmp_path / "f.safetensors"))
    assert isinstance(loaded, FullNet) and loaded.config == model.config
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x)["ternary"], model(x)["ternary"])


def test_postprocess_is_equivariant_to_flips_and_rotations(shared_data):
    labels = io.imread(shared_data / "monuseg2018/labels/train/TCGA-G9-6356-01Z-00-DX1.png").astype(np.int32)
    labels = labels[:150, :130]
    model = FullNet(FullNetConfig(**TINY, dilation_radius=3))  # radius 3: neighbours compete for gaps
    prob = np.eye(3, dtype=np.float32)[model.targets(labels, None)["ternary"]].transpose(2, 0, 1)
    base = model.postprocess({"ternary": prob}).labels
    assert base.max() > 10
    for k, flip in ((1, False), (2, False), (0, True), (3, True)):
        moved = prob[..., ::-1] if flip else prob
        result = model.postprocess({"ternary": np.ascontiguousarray(np.rot90(moved, k, axes=(1, 2)))}).labels
        back = np.rot90(result, -k)
        back = back[:, ::-1] if flip else back
        pairs = np.unique(np.stack([base.ravel(), back.ravel()]), axis=1)
        assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1], (k, flip)
