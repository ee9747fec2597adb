"""Converters for the authors' released checkpoints -> our modules' state dicts + configs.

``convert_checkpoint(path_or_state, family=None) -> (state_dict, config)``

* RepSNet ``RepSNet_S.pth`` / ``RepSNet_L.pth`` (plain state_dict): variant S/L, train or deploy
  form, stage widths and class count are read from the key names and shapes; our parameter
  names equal the authors', so the state dict passes through unchanged.
* FullNet-varCE ``{'epoch','state_dict','best_iou','optimizer'}`` with DataParallel ``module.``
  prefixes: unwrapped, prefix stripped, widths/depths read from shapes.

Files are read with :func:`cellzoo.zoo.safe_load.safe_torch_load` (``weights_only=True``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from .safe_load import safe_torch_load

#: wrapper keys under which training scripts store the model's state dict
_STATE_KEYS = ("state_dict", "model", "model_state_dict", "net", "network")


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: a bare state_dict, or one under ``state_dict``/``model``
    (FullNet, mmcv), with a common ``module.`` prefix (DataParallel) stripped."""
    state = obj
    if isinstance(obj, Mapping) and not _is_state(obj):
        for key in _STATE_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise ValueError("the checkpoint holds no state_dict: expected a dict of tensors, or one stored "
                         f"under one of {list(_STATE_KEYS)}")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("the checkpoint's state_dict holds no tensors")
    for prefix in ("module.",):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return dict(tensors)


def detect_family(state: Mapping[str, torch.Tensor]) -> str:
    keys = list(state)
    if any(k.startswith("encoder.downsample_") for k in keys) and any(k.startswith("nucleus_map.") for k in keys):
        return "repsnet"
    if any(k.startswith("blocks.block1.denselayer1.") for k in keys) and "conv2.weight" in state:
        return "fullnet"
    if any(k.startswith("base_model.") for k in keys) and any(k.startswith("box_predictors.") for k in keys):
        return "cascade"
    if any(k.startswith("backbone.patch_embed.") for k in keys) and any(k.startswith("roi_head.") for k in keys):
        return "scts"
    sample = ", ".join(keys[:5])
    raise ValueError(f"cannot tell which model this checkpoint belongs to (first keys: {sample}); "
                     "pass the family explicitly (--family repsnet|fullnet|cascade|scts)")


def _fill_num_batches_tracked(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Files from PyTorch 0.4.0 lack BatchNorm's ``num_batches_tracked``; it only matters for
    momentum-free BN, so a zero counter is added to let the strict load through."""
    for key in [k for k in state if k.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        state.setdefault(counter, torch.tensor(0, dtype=torch.int64))
    return state


# ----------------------------------------------------------------------------- RepSNet
def _stage_width(state: Mapping[str, torch.Tensor], stage: int) -> int | None:
    prefix = f"encoder.downsample_{stage}.0."
    for key in (prefix + "conv_reparam.weight", prefix + "conv3_bn.conv.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def repsnet_layout(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Variant, form, widths and class count of a RepSNet state dict (authors' or ours)."""
    keys = list(state)
    deploy = any(".conv_reparam." in k or ".dconv_reparam." in k for k in keys)
    train = any(".conv3_bn." in k or ".dconv3_bn." in k for k in keys)
    if deploy and train:
        raise ValueError("RepSNet checkpoint mixes train-form (conv3_bn) and deploy-form (conv_reparam) "
                         "units; it is damaged or from a different model")
    if not (deploy or train):
        raise ValueError("RepSNet checkpoint has neither train-form (conv3_bn) nor deploy-form "
                         "(conv_reparam) units; is it a RepSNet checkpoint?")
    variant = "L" if any(k.startswith("encoder.downsample_0.") for k in keys) else "S"
    stages = range(0, 5) if variant == "L" else range(1, 5)
    filters = [_stage_width(state, s) for s in stages]
    if any(f is None for f in filters):
        missing = [s for s, f in zip(stages, filters) if f is None]
        raise ValueError(f"RepSNet_{variant} checkpoint lacks encoder stage(s) {missing}; it is incomplete")
    if "nucleus_map.0.weight" not in state:
        raise ValueError("RepSNet checkpoint lacks the nucleus head 'nucleus_map.0.weight'")
    head_width = int(state["nucleus_map.0.weight"].shape[1])
    if head_width != filters[0]:
        raise ValueError(f"RepSNet checkpoint: head width {head_width} differs from the first stage width "
                         f"{filters[0]}; the file does not follow the authors' layout")
    num_classes = int(state["type_map.0.weight"].shape[0]) if "type_map.0.weight" in state else 2
    return {"variant": variant, "deploy": deploy, "filters": filters, "num_classes": num_classes}


def _convert_repsnet(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    layout = repsnet_layout(state)
    state = _fill_num_batches_tracked(state)
    config = dict(layout)
    if layout["num_classes"] == 7:  # CoNIC, the authors' only published setting
        config["class_names"] = ["background", "neutrophil", "epithelial", "lymphocyte", "plasma",
                                 "eosinophil", "connective"]
        config["boundary_threshold"] = 3.0  # the authors' value for CoNIC
    return state, config


# ----------------------------------------------------------------------------- FullNet
_DENSE_LAYER = re.compile(r"^blocks\.block(\d+)\.denselayer(\d+)\.conv\.conv\.weight$")


def fullnet_layout(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    layers: dict[int, int] = {}
    for key in state:
        m = _DENSE_LAYER.match(key)
        if m:
            block, layer = int(m.group(1)), int(m.group(2))
            layers[block] = max(layers.get(block, 0), layer)
    if not layers or "conv1.conv.weight" not in state or "conv2.weight" not in state:
        raise ValueError("FullNet checkpoint lacks conv1/blocks/conv2 tensors; is it a FullNet checkpoint?")
    n_blocks = max(layers)
    n_layers = layers[1]
    if set(layers) != set(range(1, n_blocks + 1)) or any(v != n_layers for v in layers.values()):
        raise ValueError(f"FullNet checkpoint has uneven dense blocks {layers}; not the authors' layout")
    growth = int(state["blocks.block1.denselayer1.conv.conv.weight"].shape[0])
    stem = int(state["conv1.conv.weight"].shape[0])
    in_block = stem + n_layers * growth
    trans_out = int(state["blocks.trans1.conv.weight"].shape[0]) if "blocks.trans1.conv.weight" in state else in_block
    return {
        "in_channels": int(state["conv1.conv.weight"].shape[1]),
        "out_channels": int(state["conv2.weight"].shape[0]),
        "n_blocks": n_blocks,
        "n_layers": n_layers,
        "growth_rate": growth,
        "stem_channels": stem,
        "compress_ratio": round(trans_out / in_block, 4),
    }


def _convert_fullnet(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    layout = fullnet_layout(state)
    if layout["out_channels"] != 3:
        raise ValueError(f"FullNet checkpoint predicts {layout['out_channels']} channels; ours predicts the "
                         "ternary map (background, inside, contour) with 3")
    if layout["n_blocks"] != 7:
        # dilations are not stored in the weights; only the authors' 7-block schedule is known
        raise ValueError(f"FullNet checkpoint has {layout['n_blocks']} dense blocks; only the authors' 7-block "
                         "layout (dilations 1,2,4,8,16,4,1) can be converted")
    config = {k: layout[k] for k in ("in_channels", "stem_channels", "growth_rate", "n_layers", "compress_ratio")}
    config["dilations"] = [1, 2, 4, 8, 16, 4, 1]
    return _fill_num_batches_tracked(state), config


# ----------------------------------------------------------------------------- entry point
_CONVERTERS = {"repsnet": _convert_repsnet, "fullnet": _convert_fullnet}

#: config keys a converter reads from the weights; registry/user overrides may not change them
ARCHITECTURE_KEYS = {
    "repsnet": {"variant", "deploy", "filters", "num_classes", "in_channels"},
    "fullnet": {"in_channels", "stem_channels", "growth_rate", "n_layers", "compress_ratio", "dilations"},
}


def convert_checkpoint(path_or_state: str | os.PathLike | Mapping[str, Any],
                       family: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert an authors' checkpoint (file or loaded object) into ``(state_dict, config)`` for
    ``build_model(family, config)`` + strict ``load_state_dict``.  ``config`` also carries
    ``"family"``."""
    if isinstance(path_or_state, (str, os.PathLike)):
        path = Path(path_or_state)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = safe_torch_load(path)
    else:
        obj = path_or_state
    state = unwrap_state_dict(obj)
    detected = detect_family(state) if family is None else family.lower()
    if family is not None:
        try:
            actual = detect_family(state)
        except ValueError:
            actual = family
        if actual != family.lower():
            raise ValueError(f"the checkpoint looks like a {actual!r} model, not {family!r}; "
                             f"use --family {actual}")
    if detected not in _CONVERTERS:
        raise ValueError(f"no converter for the {detected!r} family yet (supported: {sorted(_CONVERTERS)})")
    state, config = _CONVERTERS[detected](state)
    config = dict(config)
    config["family"] = detected
    return state, config
