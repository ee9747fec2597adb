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
