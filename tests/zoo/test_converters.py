"""Authors' checkpoints built from ../shared/checkpoint_manifests (exact names and shapes, random
values), saved with torch.save, converted, loaded strictly into our modules, run forward."""
from __future__ import annotations

import json

import pytest
import torch

from cellzoo.models import build_model
from cellzoo.zoo import convert_checkpoint, model_from_checkpoint
from cellzoo.zoo.converters import repsnet_layout


def manifest(shared_data, name):
    path = shared_data.parent / "checkpoint_manifests" / f"{name}.json"
    return json.loads(path.read_text())


def build_state(man, scale=None, device=None):
    """Tensors with exactly the manifest's names/shapes/dtypes. ``scale`` divides channel dims that are
    multiples of ``scale[0]`` by ``scale[1]`` (a width-scaled copy of a large layout)."""
    ints = man.get("non_float32_dtypes", {})
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in man["tensors"].items():
        shape = list(shape)
        if scale:
            shape = [d // scale[1] if i < 2 and d % scale[0] == 0 else d for i, d in enumerate(shape)]
        if key in ints:
            state[key] = torch.zeros(shape, dtype=torch.int64, device=device)
        elif device == "meta":
            state[key] = torch.empty(shape, device="meta")
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
            if key.endswith("running_var"):
                state[key] = state[key].abs() + 0.5
    return state


def _wrap(man, state):
    if man.get("key_prefix"):
        state = {man["key_prefix"] + k: v for k, v in state.items()}
    if "wrapper_keys" in man and "state_dict" in man["wrapper_keys"]:
        return {"epoch": 300, "state_dict": state, "best_iou": 0.8, "optimizer": {"state": {}, "param_groups": []}}
    return state


def test_repsnet_s_deploy_manifest_converts_loads_strict_and_runs(shared_data, tmp_path):
    """The most likely form of the released RepSNet_S.pth, at full size."""
    man = manifest(shared_data, "repsnet_s_deploy")
    path = tmp_path / "RepSNet_S.pth"
    torch.save(build_state(man), path)
    state, config = convert_checkpoint(path)
    assert config["family"] == "repsnet"
    assert (config["variant"], config["deploy"], config["filters"], config["num_classes"]) == \
        ("S", True, [64, 128, 256, 512], 7)
    assert len(state) == man["n_keys"]
    model = build_model("repsnet", config)
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == man["total_params"]
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32) * 255)
    assert out["nucleus"].shape == (1, 2, 32, 32) and out["type"].shape == (1, 7, 32, 32)
    assert out["distance"].shape == (1, 4, 32, 32)
    assert model.class_names[1] == "neutrophil"


def test_repsnet_s_train_full_size_layout_on_meta_tensors(shared_data):
    man = manifest(shared_data, "repsnet_s_train")
    state = build_state(man, device="meta")
    layout = repsnet_layout(state)
    assert layout == {"variant": "S", "deploy": False, "filters": [64, 128, 256, 512], "num_classes": 7}
    with torch.device("meta"):
        model = build_model("repsnet", layout)
    model.load_state_dict(state, strict=True, assign=True)
    assert sum(p.numel() for p in model.parameters()) == man["total_params"]


def test_repsnet_train_form_file_equals_its_deploy_form(shared_data, tmp_path):
    """A train-form checkpoint file (S manifest, widths / 16) converts, loads strictly, and our
    re-parameterisation gives the authors' deploy layout with the same maps (their model_convert)."""
    man = manifest(shared_data, "repsnet_s_train")
    torch.save(build_state(man, scale=(64, 16)), tmp_path / "train.pth")
    model = model_from_checkpoint(tmp_path / "train.pth").eval()
    assert list(model.config.filters) == [4, 8, 16, 32] and not model.config.deploy
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    assert sorted(model.state_dict()) == sorted(manifest(shared_data, "repsnet_s_deploy")["tensors"])
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["repsnet_l_deploy", "repsnet_l_train"])
def test_repsnet_l_full_size_layout_on_meta_tensors(shared_data, name):
    """The full-width L layout (185-206 M parameters) is detected and matches our module key for key and
    shape for shape, checked without allocating memory (meta tensors)."""
    man = manifest(shared_data, name)
    state = build_state(man, device="meta")
    layout = repsnet_layout(state)
    assert layout == {"variant": "L", "deploy": name.endswith("deploy"), "filters": [96, 192, 384, 768, 1536],
                      "num_classes": 7}
    with torch.device("meta"):
        model = build_model("repsnet", layout)
    model.load_state_dict(state, strict=True, assign=True)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == man["total_params"]


@pytest.mark.parametrize("name", ["repsnet_l_deploy", "repsnet_l_train"])
def test_repsnet_l_scaled_manifest_converts_and_runs(shared_data, tmp_path, name):
    """The L manifest with every width divided by 16 (same names, same structure): a real file, a real
    forward pass."""
    man = manifest(shared_data, name)
    torch.save(build_state(man, scale=(96, 16)), tmp_path / "RepSNet_L.pth")
    model = model_from_checkpoint(tmp_path / "RepSNet_L.pth").eval()
    assert model.config.variant == "L" and list(model.config.filters) == [6, 12, 24, 48, 96]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32) * 255)
    assert out["type"].shape == (1, 7, 32, 32)


def test_family_mismatch_and_unknown_layout(shared_data, tmp_path):
    man = manifest(shared_data, "repsnet_s_deploy")
    torch.save(build_state(man), tmp_path / "s.pth")
    with pytest.raises(ValueError, match="looks like a 'repsnet' model"):
        convert_checkpoint(tmp_path / "s.pth", family="fullnet")
    with pytest.raises(ValueError, match="cannot tell which model"):
        convert_checkpoint({"foo.weight": torch.zeros(1)})
    broken = build_state(man)
    broken.pop("encoder.downsample_3.0.conv_reparam.weight")
    with pytest.raises(ValueError, match=r"lacks encoder stage\(s\) \[3\]"):
        convert_checkpoint(broken)


@pytest.mark.parametrize("torch_041", [True, False])
def test_fullnet_manifest_checkpoint_converts_loads_strict_and_runs(shared_data, tmp_path, torch_041):
    """FullNet-varCE's {'epoch','state_dict','best_iou','optimizer'} with 'module.' prefixes and Adam state;
    a torch 0.4.0 file (no num_batches_tracked) loads too."""
    import numpy as np

    man = manifest(shared_data, "fullnet_multiorgan")
    state = build_state(man)
    if not torch_041:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    learnable = [k for k in man["tensors"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(learnable) == man["optimizer_layout"]["n_param_tensors"]
    optimizer = {"state": {i: {"step": 300, "exp_avg": torch.zeros_like(state[k]), "exp_avg_sq": torch.zeros_like(state[k])}
                           for i, k in enumerate(learnable)},
                 "param_groups": [{"lr": 0.001, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 1e-4,
                                   "amsgrad": False, "params": list(range(len(learnable)))}]}
    path = tmp_path / "model_MultiOrgan.pth.tar"
    torch.save({"epoch": 300, "state_dict": state, "best_iou": np.float64(0.8123), "optimizer": optimizer}, path)

    converted, config = convert_checkpoint(path)
    assert config["family"] == "fullnet"
    assert not any(k.startswith("module.") for k in converted)
    assert (config["growth_rate"], config["n_layers"], config["stem_channels"], config["compress_ratio"]) == (24, 6, 24, 0.5)
    model = build_model("fullnet", config)
    model.load_state_dict(converted, strict=True)
    assert sum(p.numel() for p in model.parameters()) == man["total_params"]
    model.eval()
    with torch.no_grad():
        out = model(model.preprocess(np.random.default_rng(0).uniform(0, 255, (40, 48, 3)).astype(np.float32))[None])
    assert out["ternary"].shape == (1, 3, 40, 48)


def _hw03_alias(key):
    """The canonical name of an aliased HW03 key (manifest 'aliasing'), or None for canonical keys."""
    rules = [("roi_heads.box_predictor.", "box_predictors.2."),
             ("base_model.roi_heads.box_predictor.", "box_predictors.2."),
             ("backbone.", "base_model.backbone."), ("rpn.", "base_model.rpn."),
             ("roi_heads.mask_predictor.", "mask_predictor."),
             ("base_model.roi_heads.mask_predictor.", "mask_predictor."),
             ("roi_heads.", "base_model.roi_heads.")]
    for alias, canonical in rules:
        if key.startswith(alias):
            return canonical + key[len(alias):]
    return None


def _hw03_state(man, device=None):
    """HW03 file contents: every manifest key, aliases sharing one tensor as torch.save stores them."""
    state = build_state({"tensors": {k: s for k, s in man["tensors"].items() if _hw03_alias(k) is None}},
                        device=device)
    for key in man["tensors"]:
        if key not in state:
            state[key] = state[_hw03_alias(key)]
    assert list(sorted(state)) == sorted(man["tensors"])
    return state


def test_hw03_cascade_r50_converts_loads_strict_and_detects(shared_data, tmp_path):
    man = manifest(shared_data, "hw03_cascade_r50")
    state = _hw03_state(man)
    assert len({id(v) for v in state.values()}) == man["n_unique_tensors"]
    path = tmp_path / "best.pth"
    torch.save(state, path)
    converted, config = convert_checkpoint(path)
    assert config["family"] == "cascade" and config["backbone"] == "resnet50" and config["norm"] == "frozen"
    assert config["class_names"] == man["class_names"]
    model = build_model("cascade", {**config, "rpn_pre_nms_test": 100, "rpn_post_nms_test": 50,
                                    "detections_per_img": 50})
    model.load_state_dict(converted, strict=True)
    # the shared box head went into every stage; the stage-2 predictor's class scores are HW03's own
    torch.testing.assert_close(model.roi_heads.box_heads[1].fc6.weight, state["roi_heads.box_head.fc6.weight"])
    torch.testing.assert_close(model.roi_heads.box_predictors[2].cls_score.weight,
                               state["box_predictors.2.cls_score.weight"])
    # per-class box regression kept per class, scaled to our stage's box coder (stage 1 decodes with 2x
    # torchvision's weights), so the decoded boxes equal torchvision's decoding of HW03's own deltas
    assert config["class_specific_boxes"] is True
    torch.testing.assert_close(model.roi_heads.box_predictors[1].bbox_pred.bias,
                               state["box_predictors.1.bbox_pred.bias"] * 2)
    from torchvision.models.detection._utils import BoxCoder

    rois = torch.tensor([[10.0, 12.0, 40.0, 50.0], [0.0, 0.0, 20.0, 16.0]])
    hw03_deltas = torch.randn(2, 5 * 4)
    ours = model.roi_heads.box_coders[1].decode(hw03_deltas * 2, [rois])
    torch.testing.assert_close(ours, BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(hw03_deltas, [rois]))
    model.eval()
    image = torch.rand(128, 128, 3).numpy() * 255
    with torch.no_grad():
        out = model([model.preprocess(image)])
    result = out[0] if isinstance(out, list) else out
    assert result["boxes"].shape[-1] == 4 and result["masks"].shape[-2:] == (128, 128)


def test_hw03_cascade_r101_full_layout_on_meta_tensors(shared_data):
    man = manifest(shared_data, "hw03_cascade_r101")
    from cellzoo.zoo.converters import unwrap_state_dict, _convert_cascade

    state = _hw03_state(man, device="meta")
    # aliases are the same tensor objects, so the equality check passes without touching data
    converted, config = _convert_cascade(unwrap_state_dict(state))
    assert config["backbone"] == "resnet101"
    with torch.device("meta"):
        model = build_model("cascade", config)
    model.load_state_dict(converted, strict=True, assign=True)


def test_hw03_aliases_that_differ_are_refused(shared_data):
    man = manifest(shared_data, "hw03_cascade_r50")
    state = _hw03_state(man)
    state["rpn.head.cls_logits.bias"] = state["rpn.head.cls_logits.bias"] + 1
    with pytest.raises(ValueError, match="should be the same tensor"):
        convert_checkpoint(state)


def test_scts_mmcv_checkpoint_converts_loads_strict_and_detects(shared_data, tmp_path):
    from cellzoo.zoo.converters import swin_relative_position_index

    man = manifest(shared_data, "scts_htc_swin_t")
    state = build_state(man)
    state["roi_head.semantic_head.criterion.weight"] = torch.tensor([1.0, 1.0, 10.0])
    for key in man["non_float32_dtypes"]:  # the fixed Swin index buffers, as the authors' model holds them
        state[key] = swin_relative_position_index(7).reshape(49, 49)
    checkpoint = {"meta": {"mmdet_version": "2.11.0", "CLASSES": ("cell",), "epoch": 36, "iter": 972,
                           "env_info": "sys.platform: linux", "config": "model = dict(type='HybridTaskCascade')",
                           "seed": 0, "exp_name": "scts.py", "mmcv_version": "1.3.8", "time": "Mon Jan 1"},
                  "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
                  "amp": {"loss_scaler0": {"loss_scale": 512.0, "unskipped": 12}}}
    path = tmp_path / "epoch_36.pth"
    torch.save(checkpoint, path)
    converted, config = convert_checkpoint(path)
    assert config["family"] == "scts"
    assert (config["embed_dim"], config["depths"], config["num_heads"], config["window_size"]) == \
        (96, [2, 2, 6, 2], [3, 6, 12, 24], 7)
    assert config["semantic_class_weights"] == [1.0, 1.0, 10.0] and config["class_names"] == ["background", "cell"]
    model = build_model("scts", {**config, "rpn_pre_nms_test": 100, "rpn_post_nms_test": 50, "detections_per_img": 50})
    model.load_state_dict(converted, strict=True)
    # mmdet's background-last classes are flipped; the cell mask logits land on our class-1 row
    torch.testing.assert_close(model.roi_heads.box_predictors[0].cls_score.weight[0],
                               state["roi_head.bbox_head.0.fc_cls.weight"][1])
    torch.testing.assert_close(model.roi_heads.mask_predictor.mask_fcn_logits.weight[1],
                               state["roi_head.mask_head.0.conv_logits.weight"][0])
    # the rebuilt index buffer equals torchvision's own
    fresh = build_model("scts", {"depths": [1, 1, 1, 1]})
    assert torch.equal(fresh.backbone.features[1][0].attn.relative_position_index, swin_relative_position_index(7))
    model.eval()
    image = torch.rand(128, 128, 3).numpy() * 40
    with torch.no_grad():
        out = model([model.preprocess(image)])
    result = out[0] if isinstance(out, list) else out
    assert result["boxes"].shape[-1] == 4
