"""Converters for the authors' released checkpoints -> our modules' state dicts + configs.

``convert_checkpoint(path_or_state, family=None) -> (state_dict, config)``

* RepSNet ``RepSNet_S.pth`` / ``RepSNet_L.pth`` (plain state_dict): variant S/L, train or deploy
  form, stage widths and class count are read from the key names and shapes; our parameter
  names equal the authors', so the state dict passes through unchanged.
* FullNet-varCE ``{'epoch','state_dict','best_iou','optimizer'}`` with DataParallel ``module.``
  prefixes: unwrapped, prefix stripped, widths/depths read from shapes.
* The HW03 "Cascade Mask R-CNN" ``best.pth`` (torchvision Mask R-CNN whose modules are registered
  twice, so every tensor appears under 2-3 names): aliases are checked and de-duplicated, the shared
  box head is copied into our three stage heads, the three stage predictors map to ours with their
  per-class box regression (``class_specific_boxes``); our stage k decodes with (k+1)x the torchvision
  box-coder weights, so its regression rows are scaled by k+1, which gives the same boxes.  Anchors are
  set to HW03's 32-512 px.
* SCTS's mmcv checkpoint ``{'meta','state_dict','optimizer','amp'}`` (mmdet HTC, Swin-T): Swin
  ``layers.i.blocks.j`` -> torchvision ``features.(2i+1).j``, ``layers.i.downsample`` ->
  ``features.(2i+2)``, mmdet FPN/RPN/heads -> torchvision names; mmdet's background-last class order
  is flipped to background-first.

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


# ----------------------------------------------------------------------------- HW03 Cascade Mask R-CNN
_RESNET_DEPTH = {6: "resnet50", 23: "resnet101", 36: "resnet152"}


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type != "meta" and a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True  # torch.save keeps shared storage: one tensor stored once
    return a.device.type != "meta" and torch.equal(a, b)


def _dedupe_aliases(state: Mapping[str, torch.Tensor], groups: list[tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """Keep the first name of each alias group (prefixes); the others must hold the same values."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for group in groups:
            for alias in group[1:]:
                if key.startswith(alias):
                    canonical = group[0] + key[len(alias):]
                    if canonical in state:
                        if not _same_values(state[canonical], value):
                            raise ValueError(f"{key} and {canonical} should be the same tensor in an HW03 "
                                             "checkpoint but differ; the file was not written by HW03's train.py")
                        break
                    out[canonical] = value  # only the alias was stored
                    break
            else:
                continue
            break
        else:
            out[key] = value
    return out


def _convert_cascade(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = _dedupe_aliases(state, [
        ("base_model.backbone.", "backbone."), ("base_model.rpn.", "rpn."),
        ("base_model.roi_heads.mask_predictor.", "roi_heads.mask_predictor.", "mask_predictor."),
        ("base_model.roi_heads.", "roi_heads.")])
    needed = ["base_model.roi_heads.box_head.fc6.weight", "box_predictors.0.cls_score.weight",
              "base_model.roi_heads.mask_predictor.mask_fcn_logits.weight", "base_model.backbone.body.conv1.weight"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"HW03 Cascade checkpoint lacks {missing}; not the layout of HW03/models.py")
    layer3 = {int(k.split(".")[4]) for k in state if k.startswith("base_model.backbone.body.layer3.")}
    depth = len(layer3)
    if depth not in _RESNET_DEPTH:
        raise ValueError(f"HW03 Cascade checkpoint has {depth} blocks in ResNet layer3; expected 6 (R50), "
                         "23 (R101) or 36 (R152)")
    stages = sorted({int(k.split(".")[1]) for k in state if k.startswith("box_predictors.")})
    num_classes = int(state["box_predictors.0.cls_score.weight"].shape[0])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(("base_model.backbone.", "base_model.rpn.")):
            out[key[len("base_model."):]] = value
        elif key.startswith(("base_model.roi_heads.mask_head.", "base_model.roi_heads.mask_predictor.")):
            out[key[len("base_model."):]] = value
    head = {k[len("base_model.roi_heads.box_head."):]: v for k, v in state.items()
            if k.startswith("base_model.roi_heads.box_head.")}
    for stage in stages:
        for name, value in head.items():  # HW03 shares one box head between its stages
            out[f"roi_heads.box_heads.{stage}.{name}"] = value.clone()
        prefix = f"box_predictors.{stage}."
        out[f"roi_heads.{prefix}cls_score.weight"] = state[prefix + "cls_score.weight"]
        out[f"roi_heads.{prefix}cls_score.bias"] = state[prefix + "cls_score.bias"]
        for part in ("weight", "bias"):
            # our stage k decodes deltas divided by (k+1)x torchvision's weights: scale to keep the boxes
            out[f"roi_heads.{prefix}bbox_pred.{part}"] = state[prefix + f"bbox_pred.{part}"] * (stage + 1)
    names = ["background"] + [f"class{i}" for i in range(1, num_classes)]
    config = {"backbone": _RESNET_DEPTH[depth], "norm": "frozen", "class_names": names,
              "anchor_sizes": [32, 64, 128, 256, 512], "stage_ious": [0.5, 0.6, 0.7][: len(stages)],
              "stage_loss_weights": [1.0, 0.5, 0.25][: len(stages)], "detections_per_img": 2000,
              "class_specific_boxes": True,
              "representation": int(head["fc6.weight"].shape[0]),
              "mask_channels": int(state["base_model.roi_heads.mask_head.0.0.weight"].shape[0])}
    return out, config


# ----------------------------------------------------------------------------- SCTS (mmcv HTC + Swin-T)
_SCTS_RULES = [
    (r"^backbone\.patch_embed\.proj\.", "backbone.features.0.0."),
    (r"^backbone\.patch_embed\.norm\.", "backbone.features.0.2."),
    (r"^backbone\.norm(\d)\.", r"backbone.norms.\1."),
    (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"backbone.fpn.inner_blocks.\1.0."),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.", r"backbone.fpn.layer_blocks.\1.0."),
    (r"^rpn_head\.rpn_conv\.", "rpn.head.conv.0.0."),
    (r"^rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
    (r"^rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
    (r"^roi_head\.bbox_head\.(\d+)\.shared_fcs\.0\.", r"roi_heads.box_heads.\1.fc6."),
    (r"^roi_head\.bbox_head\.(\d+)\.shared_fcs\.1\.", r"roi_heads.box_heads.\1.fc7."),
    (r"^roi_head\.bbox_head\.(\d+)\.fc_cls\.", r"roi_heads.box_predictors.\1.cls_score."),
    (r"^roi_head\.bbox_head\.(\d+)\.fc_reg\.", r"roi_heads.box_predictors.\1.bbox_pred."),
    (r"^roi_head\.mask_head\.0\.convs\.(\d+)\.conv\.", r"roi_heads.mask_head.\1.0."),
    (r"^roi_head\.mask_head\.0\.upsample\.", "roi_heads.mask_predictor.conv5_mask."),
    (r"^roi_head\.mask_head\.0\.conv_logits\.", "roi_heads.mask_predictor.mask_fcn_logits."),
    (r"^roi_head\.semantic_head\.lateral_convs\.(\d+)\.conv\.", r"semantic_head.laterals.\1."),
    (r"^roi_head\.semantic_head\.convs\.(\d+)\.conv\.", r"semantic_head.convs.\1.0."),
    (r"^roi_head\.semantic_head\.conv_embedding\.conv\.", "semantic_head.embedding.0."),
    (r"^roi_head\.semantic_head\.conv_logits\.", "semantic_head.logits."),
]
_SWIN_BLOCK = re.compile(r"^backbone\.layers\.(\d)\.blocks\.(\d+)\.(.*)$")
_SWIN_MERGE = re.compile(r"^backbone\.layers\.(\d)\.downsample\.(.*)$")
_SWIN_PARTS = {"mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.3."}


def swin_relative_position_index(window: int) -> torch.Tensor:
    """The fixed index buffer of Swin window attention (same formula in mmdet's Swin and torchvision);
    rebuilt here rather than trusted from the file, flattened as torchvision stores it."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1).flatten()


def _convert_scts(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if "backbone.patch_embed.proj.weight" not in state or "roi_head.bbox_head.0.fc_cls.weight" not in state:
        raise ValueError("SCTS checkpoint lacks the Swin patch embedding or the HTC box head; "
                         "not the layout of configs/scts/scts.py")
    extra = sorted(k for k in state if re.match(r"^roi_head\.(bbox_head|mask_head)\.[1-9]", k))
    if extra:
        raise ValueError(f"SCTS checkpoint has more than one HTC stage ({extra[0]}...); ours has one, as "
                         "configs/scts/scts.py")
    depths = [1 + max((int(m.group(2)) for k in state if (m := _SWIN_BLOCK.match(k)) and m.group(1) == str(i)),
                      default=-1) for i in range(4)]
    tables = [state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(4)]
    window = int(round((tables[0].shape[0] ** 0.5 + 1) / 2))
    out: dict[str, torch.Tensor] = {}
    class_weights = None
    for key, value in state.items():
        if (m := _SWIN_BLOCK.match(key)):
            rest = m.group(3)
            for old, new in _SWIN_PARTS.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
            if rest == "attn.relative_position_index":
                value = swin_relative_position_index(window)
            out[f"backbone.features.{2 * int(m.group(1)) + 1}.{m.group(2)}.{rest}"] = value
            continue
        if (m := _SWIN_MERGE.match(key)):
            out[f"backbone.features.{2 * int(m.group(1)) + 2}.{m.group(2)}"] = value
            continue
        if key == "roi_head.semantic_head.criterion.weight":
            class_weights = [float(v) for v in value]
            continue
        for pattern, repl in _SCTS_RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise ValueError(f"SCTS checkpoint key {key!r} has no counterpart in our SCTS module")
    # mmdet orders classes foreground first, background last; ours background first
    for stage_key in [k for k in out if re.match(r"roi_heads\.box_predictors\.\d+\.cls_score\.", k)]:
        out[stage_key] = out[stage_key].roll(1, dims=0)
    fg = int(state["roi_head.bbox_head.0.fc_cls.weight"].shape[0]) - 1
    for part in ("weight", "bias"):
        key = f"roi_heads.mask_predictor.mask_fcn_logits.{part}"
        logits = out[key]  # mmdet: one row per foreground class; ours has a (unused) background row first
        out[key] = torch.cat([logits[:1], logits]) if logits.shape[0] == fg else logits
    config = {
        "embed_dim": int(state["backbone.patch_embed.proj.weight"].shape[0]),
        "depths": depths, "num_heads": [int(t.shape[1]) for t in tables], "window_size": window,
        "fpn_channels": int(state["neck.lateral_convs.0.conv.weight"].shape[0]),
        "representation": int(state["roi_head.bbox_head.0.shared_fcs.0.weight"].shape[0]),
        "mask_channels": int(state["roi_head.mask_head.0.convs.0.conv.weight"].shape[0]),
        "semantic_channels": int(state["roi_head.semantic_head.lateral_convs.0.conv.weight"].shape[0]),
        "class_names": ["background"] + (["cell"] if fg == 1 else [f"class{i}" for i in range(1, fg + 1)]),
        "anchor_sizes": [32, 64, 128, 256, 512],  # mmdet: octave scale 8 x strides 4..64
    }
    if class_weights is not None:
        config["semantic_class_weights"] = class_weights
    return out, config


# ----------------------------------------------------------------------------- entry point
_CONVERTERS = {"repsnet": _convert_repsnet, "fullnet": _convert_fullnet, "cascade": _convert_cascade,
               "scts": _convert_scts}

#: config keys a converter reads from the weights; registry/user overrides may not change them
ARCHITECTURE_KEYS = {
    "repsnet": {"variant", "deploy", "filters", "num_classes", "in_channels"},
    "fullnet": {"in_channels", "stem_channels", "growth_rate", "n_layers", "compress_ratio", "dilations"},
    "cascade": {"backbone", "norm", "stage_ious", "representation", "mask_channels", "anchor_sizes"},
    "scts": {"embed_dim", "depths", "num_heads", "window_size", "fpn_channels", "representation",
             "mask_channels", "semantic_channels", "anchor_sizes"},
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

            from .weights import read_safetensors_header

            read_safetensors_header(path)  # damaged files fail clearly before the library reads them
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
