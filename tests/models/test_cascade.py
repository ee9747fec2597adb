"""Cascade Mask R-CNN on torchvision parts: stage IoUs, refinement, score averaging, training, classes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch
from skimage.io import imread
from torchvision.ops import box_iou

from cellzoo.models import build_model
from cellzoo.models.cascade import CascadeConfig, CascadeMaskRCNN

DSB = "4dbbb275960ab9e4ec2c66c8d3000f7c70c8dce5112df591b95db84e25efa6e9"


def small(**overrides) -> CascadeMaskRCNN:
    torch.manual_seed(0)
    return build_model("cascade", dataclasses.asdict(CascadeConfig.small(**overrides)))


def dsb_crop(shared_data, size=96):
    folder = shared_data / "dsb2018" / "test"
    image = tifffile.imread(folder / "images" / f"{DSB}.tif")[:size, :size].astype(np.float32)
    labels = tifffile.imread(folder / "masks" / f"{DSB}.tif")[:size, :size].astype(np.int32)
    return np.repeat(image[..., None], 3, -1), labels


def test_stages_assign_different_labels_to_the_same_proposals():
    model = small()
    heads = model.roi_heads
    assert [m.high_threshold for m in heads.matchers] == [0.5, 0.6, 0.7]
    assert [m.low_threshold for m in heads.matchers] == [0.5, 0.6, 0.7]
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    # shift a 40×40 box right by d: IoU = (40-d)/(40+d) -> 0.55, 0.65, 0.75, 0.95, 0.30
    ious = [0.55, 0.65, 0.75, 0.95, 0.30]
    shifts = [40 * (1 - v) / (1 + v) for v in ious]
    proposals = torch.tensor([[10.0 + d, 10.0, 50.0 + d, 50.0] for d in shifts])
    assert box_iou(gt, proposals)[0].tolist() == pytest.approx(ious, abs=1e-5)
    labels = [heads.assign(stage, proposals, gt, torch.tensor([1]))[0].tolist() for stage in range(3)]
    assert labels == [[1, 1, 1, 1, 0],
                      [0, 1, 1, 1, 0],
                      [0, 0, 1, 1, 0]]


def test_stage_heads_are_separate_and_weighted():
    model = small()
    assert model.config.stage_loss_weights == (1.0, 0.5, 0.25)
    assert len(model.roi_heads.box_heads) == 3 and len(model.roi_heads.box_predictors) == 3
    ptrs = {p.data_ptr() for h in model.roi_heads.box_heads for p in h.parameters()}
    assert len(ptrs) == sum(1 for h in model.roi_heads.box_heads for _ in h.parameters())
    assert [c.weights for c in model.roi_heads.box_coders] == [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                                               (30.0, 30.0, 15.0, 15.0)]
    assert CascadeConfig().detections_per_img >= 1000


def _fix_stage(predictor, cls_bias, box_bias):
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor(cls_bias))
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.copy_(torch.tensor(box_bias))


def test_each_stage_refines_the_previous_boxes_and_scores_are_averaged(shared_data):
    model = small(box_nms_thresh=1.0, box_score_thresh=0.0).eval()
    heads = model.roi_heads
    # stage logits (bg, fg): fg probabilities sigmoid(2), 0.5, sigmoid(-1) -> averaged
    _fix_stage(heads.box_predictors[0], [0.0, 2.0], [1.0, 0.0, 0.0, 0.0])  # dx = 1/10 box width
    _fix_stage(heads.box_predictors[1], [0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    _fix_stage(heads.box_predictors[2], [0.0, -1.0], [0.0, 0.0, 0.0, 0.0])
    seen = []
    heads.box_roi_pool.register_forward_pre_hook(lambda _m, args: seen.append([b.clone() for b in args[1]]))
    image, _ = dsb_crop(shared_data)
    out = model([model.preprocess(image)])[0]
    assert len(seen) == 3
    first, second = seen[0][0], seen[1][0]
    width = first[:, 2] - first[:, 0]
    expected = first.clone()
    expected[:, [0, 2]] += (width * 0.1)[:, None]
    expected[:, 0::2] = expected[:, 0::2].clamp(0, image.shape[1])
    assert torch.allclose(second, expected, atol=1e-3)
    assert torch.allclose(seen[2][0], second, atol=1e-4)  # stage 2 does not move boxes
    mean = (torch.sigmoid(torch.tensor(2.0)) + 0.5 + torch.sigmoid(torch.tensor(-1.0))) / 3
    assert out["scores"].numel() > 0
    assert torch.allclose(out["scores"], mean.expand_as(out["scores"]), atol=1e-5)
    assert out["masks"].shape[1:] == image.shape[:2]


def test_training_loss_terms_and_gradients_reach_every_stage(shared_data):
    model = small(mask_dice_weight=1.0, roi_samples_per_image=32, rpn_post_nms_train=100).train()
    image, labels = dsb_crop(shared_data, 64)
    target = {k: torch.as_tensor(v) for k, v in model.targets(labels, None).items()}
    assert target["boxes"].shape[0] == len(np.unique(labels)) - 1
    x = model.preprocess(image)
    losses = model([x], [target])
    assert set(losses) == {"rpn_obj", "rpn_box", "s0_cls", "s0_box", "s1_cls", "s1_box", "s2_cls", "s2_box",
                           "mask", "mask_dice", "total"}
    assert torch.isclose(losses["total"], sum(v for k, v in losses.items() if k != "total"))
    assert model.loss(losses, None) is losses
    losses["total"].backward()
    for name in ("box_predictors.0", "box_predictors.1", "box_predictors.2", "mask_predictor"):
        grads = [p.grad for n, p in model.roi_heads.named_parameters() if n.startswith(name)]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # (that the losses go down with training is checked on the cheaper SCTS; both share the heads' code)


def test_n_classes_from_consep_class_map(shared_data):
    folder = shared_data / "consep" / "train"
    name = "train_10_000"
    image = imread(folder / "images" / f"{name}.jpg")[:96, :96].astype(np.float32)
    inst = imread(folder / "inst" / f"{name}.png")[:96, :96].astype(np.int32)
    cls = imread(folder / "class" / f"{name}.png")[:96, :96].astype(np.uint8)
    names = ["background", "other", "inflammatory", "epithelial", "spindle"]
    model = small(class_names=names)
    assert model.roi_heads.box_predictors[0].cls_score.out_features == 5
    target = model.targets(inst, cls)
    for box_label, mask in zip(target["labels"], target["masks"]):
        assert box_label == np.bincount(cls[mask > 0]).argmax()
    model.train()
    losses = model([model.preprocess(image)], [{k: torch.as_tensor(v) for k, v in target.items()}])
    assert torch.isfinite(losses["total"])
    with pytest.raises(ValueError, match="class_names"):
        small(class_names=names[:3]).targets(inst, cls)


def test_class_specific_boxes_train_and_each_class_keeps_its_own_box(shared_data):
    names = ["background", "a", "b"]
    model = small(class_names=names, class_specific_boxes=True, roi_samples_per_image=32, rpn_post_nms_train=100)
    assert model.roi_heads.box_predictors[0].bbox_pred.out_features == 3 * 4
    image, labels = dsb_crop(shared_data, 64)
    classes = np.where(labels > 0, 1 + labels % 2, 0).astype(np.uint8)
    target = {k: torch.as_tensor(v) for k, v in model.targets(labels, classes).items()}
    assert set(target["labels"].tolist()) == {1, 2}
    losses = model.train()([model.preprocess(image)], [target])
    losses["total"].backward()
    grad = model.roi_heads.box_predictors[0].bbox_pred.bias.grad.reshape(3, 4)
    assert grad[0].abs().sum() == 0  # background rows never regress
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0  # both classes learn their own boxes
    # inference: class a shifts boxes right by 1/10 of their width at the last stage, class b does not
    model = small(class_names=names, class_specific_boxes=True, box_nms_thresh=1.0, box_score_thresh=0.0).eval()
    for stage, predictor in enumerate(model.roi_heads.box_predictors):
        last = stage == 2
        _fix_stage(predictor, [0.0, 1.0, 1.0], [0.0] * 4 + ([3.0] if last else [0.0]) + [0.0] * 7)
    seen = []
    model.roi_heads.box_roi_pool.register_forward_pre_hook(lambda _m, args: seen.append(args[1][0].clone()))
    out = model([model.preprocess(image)])[0]
    boxes_a, boxes_b = out["boxes"][out["labels"] == 1], out["boxes"][out["labels"] == 2]
    rois = seen[2]
    assert boxes_a.shape == boxes_b.shape == rois.shape
    width = rois[:, 2] - rois[:, 0]
    shifted = rois.clone()
    shifted[:, [0, 2]] += (width * 0.1)[:, None]  # stage 2 decodes with 3x weights: 3.0 / 30 = 0.1
    shifted[:, 0::2] = shifted[:, 0::2].clamp(0, image.shape[1])
    key = lambda b: sorted(map(tuple, b.round(decimals=2).tolist()))  # noqa: E731
    assert key(boxes_b) == key(rois)
    assert key(boxes_a) == key(shifted)


def test_postprocess_paints_by_descending_score_without_overlap():
    model = small()
    masks = np.zeros((3, 20, 20), np.float32)
    masks[0, 0:10, 0:10] = 0.9   # score 0.6
    masks[1, 5:15, 5:15] = 0.9   # score 0.9: wins the overlap
    masks[2, 15:20, 15:20] = 0.9  # score 0.3: below the threshold
    det = {"boxes": np.zeros((3, 4)), "scores": np.array([0.6, 0.9, 0.3]), "labels": np.array([1, 1, 1]),
           "masks": masks}
    inst = model.postprocess(det, score_threshold=0.5)
    assert inst.count == 2 and inst.scores == {1: 0.9, 2: 0.6}
    assert (inst.labels[5:15, 5:15] == 1).all()
    assert (inst.labels == 2).sum() == 100 - 25 and inst.class_of == {1: 1, 2: 1}


@pytest.mark.parametrize("backbone", ["resnet34", "resnet101"])
def test_backbones_build(backbone):
    model = build_model("cascade", {"backbone": backbone, "representation": 64, "mask_channels": 32})
    assert model.family == "cascade" and model.kind == "detection"
    assert type(model.backbone.body.layer4[0]).__name__ == ("BasicBlock" if backbone == "resnet34" else "Bottleneck")
    with pytest.raises(ValueError, match="resnet18"):
        build_model("cascade", {"backbone": "resnet42"})


def test_weights_round_trip(tmp_path, shared_data):
    from cellzoo.zoo.weights import load_weights, save_weights

    model = small().eval()
    image, _ = dsb_crop(shared_data, 64)
    path = save_weights(model, tmp_path / "cascade.safetensors", {"name": "test"})
    loaded, meta = load_weights(path)
    assert meta["family"] == "cascade" and isinstance(loaded, CascadeMaskRCNN)
    x = model.preprocess(image)
    a, b = model([x])[0], loaded([x])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_box_local_masks_paint_like_full_size_masks(shared_data):
    # the tiled engine keeps masks box-local (mask_probs); they must paint exactly like the full-size ones
    model = small(box_score_thresh=0.0).eval()
    image, _ = dsb_crop(shared_data, 96)
    x = model.preprocess(image)
    full = model([x])[0]
    local = model([x], paste_masks=False)[0]
    assert "masks" not in local and local["mask_probs"].shape[1:] == (28, 28)
    params = {"score_threshold": 0.0, "mask_threshold": 0.5}
    a = model.postprocess(full, **params)
    b = model.postprocess(local, image_shape=image.shape[:2], **params)
    assert a.count > 0
    assert np.array_equal(a.labels, b.labels) and a.scores == b.scores
