"""SCTS on torchvision parts: Swin-T FPN, semantic head (bg / cell / boundary) gating RoI features."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch

from cellzoo.models import build_model
from cellzoo.models.scts import SCTS, SCTSConfig

DSB = "4dbbb275960ab9e4ec2c66c8d3000f7c70c8dce5112df591b95db84e25efa6e9"


def small(**overrides) -> SCTS:
    torch.manual_seed(0)
    return build_model("scts", dataclasses.asdict(SCTSConfig.small(**overrides)))


def dsb_crop(shared_data, size=96):
    folder = shared_data / "dsb2018" / "test"
    image = tifffile.imread(folder / "images" / f"{DSB}.tif")[:size, :size].astype(np.float32)
    labels = tifffile.imread(folder / "masks" / f"{DSB}.tif")[:size, :size].astype(np.int32)
    return np.repeat(image[..., None], 3, -1), labels


def test_semantic_target_background_cell_boundary():
    labels = np.zeros((12, 12), np.int32)
    labels[2:7, 2:10] = 1
    labels[7:11, 2:10] = 2  # touches cell 1 along a row
    target = small().targets(labels, None)
    sem = target["semantic"]
    assert set(np.unique(sem)) == {0, 1, 2}
    assert (sem[labels == 0] == 0).all()
    # the interiors are cells, the 1-px rims (including the shared edge rows 6 and 7) are boundary
    assert (sem[3:6, 3:9] == 1).all()
    assert (sem[6, 2:10] == 2).all() and (sem[7, 2:10] == 2).all() and (sem[2, 2:10] == 2).all()
    assert target["boxes"].tolist() == [[2, 2, 10, 7], [2, 7, 10, 11]]
    assert SCTSConfig().semantic_class_weights == (1.0, 1.0, 10.0)


def test_preprocess_uses_configured_mean_std():
    image = np.full((4, 4, 3), 11.79 + 15.7, np.float32)
    assert torch.allclose(small().preprocess(image), torch.ones(3, 4, 4))
    custom = small(mean=(0.0, 0.0, 0.0), std=(2.0, 2.0, 2.0))
    assert torch.allclose(custom.preprocess(image), torch.full((3, 4, 4), (11.79 + 15.7) / 2))


def test_semantic_embedding_multiplies_into_box_and_mask_features(shared_data):
    model = small(box_nms_thresh=1.0, box_score_thresh=0.0).eval()
    image, _ = dsb_crop(shared_data)
    x = model.preprocess(image)
    before = model([x])[0]["scores"]
    assert before.unique().numel() > 1
    # a zero embedding zeroes every gated RoI feature: all boxes then look alike to the heads
    with torch.no_grad():
        conv = model.semantic_head.embedding[0]
        conv.weight.zero_()
        conv.bias.zero_()
    after = model([x])[0]
    assert after["scores"].numel() > 1
    assert torch.allclose(after["scores"], after["scores"][0].expand_as(after["scores"]))
    # mask logits are constant too: every mask has the same value at its box centre
    centres = [float(m[int((b[1] + b[3]) / 2), int((b[0] + b[2]) / 2)])
               for m, b in zip(after["masks"], after["boxes"]) if min(b[2] - b[0], b[3] - b[1]) >= 6]
    assert len(centres) > 1 and np.allclose(centres, centres[0], atol=1e-4)


def test_training_losses_include_semantic_and_learn(shared_data):
    model = small(roi_samples_per_image=32, rpn_post_nms_train=100).train()
    image, labels = dsb_crop(shared_data, 64)
    target = {k: torch.as_tensor(v) for k, v in model.targets(labels, None).items()}
    x = model.preprocess(image)
    losses = model([x], [target])
    assert set(losses) == {"rpn_obj", "rpn_box", "s0_cls", "s0_box", "mask", "semantic", "total"}
    losses["total"].backward()
    assert model.semantic_head.logits.weight.grad.abs().sum() > 0
    assert model.backbone.features[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="semantic"):
        model([x], [{k: v for k, v in target.items() if k != "semantic"}])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(6):
        opt.zero_grad()
        total = model([x], [target])["total"]
        total.backward()
        opt.step()
        history.append(float(total))
    assert np.mean(history[-2:]) < 0.85 * history[0], history


def test_default_is_swin_t_with_five_fpn_levels():
    model = build_model("scts", {"representation": 64, "mask_channels": 32, "semantic_channels": 32})
    assert model.family == "scts" and model.kind == "detection"
    blocks = [m for m in model.backbone.features.modules() if type(m).__name__ == "SwinTransformerBlock"]
    assert len(blocks) == 12  # depths 2, 2, 6, 2
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        "0": (16, 16), "1": (8, 8), "2": (4, 4), "3": (2, 2), "pool": (1, 1)}
    assert model.config.detections_per_img >= 1000
    with pytest.raises(ValueError, match="four Swin stages"):
        build_model("scts", {"depths": [2, 2]})
