"""Cascade Mask R-CNN from torchvision parts (no mmdetection).

ResNet-FPN backbone (18/34/50/101/152, ``weights=None``: no ImageNet download), torchvision RPN with
nucleus-sized anchors (8–128 px), three box stages whose matchers really use IoU 0.5 / 0.6 / 0.7 with loss
weights 1 / 0.5 / 0.25, each stage refining the previous stage's boxes, and a mask head (BCE + optional
Dice).  Inference averages the stages' class probabilities (see ``CascadeRoIHeads``).

Unlike the homework this replaces (seeds.md §5), the stage thresholds are the matchers' own
``high/low_threshold`` (the homework set an attribute torchvision never reads) and each stage has its own
box head and sees the previous stage's refined boxes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from ._detection_common import TwoStageDetector

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class CascadeConfig:
    backbone: str = "resnet50"
    #: "group" (GroupNorm 32, robust for the small batches of from-scratch training), "batch" or "frozen"
    norm: str = "group"
    class_names: list[str] = field(default_factory=lambda: ["background", "nucleus"])
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 2000
    rpn_post_nms_test: int = 2000
    roi_samples_per_image: int = 512
    representation: int = 1024
    mask_channels: int = 256
    stage_ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    mask_dice_weight: float = 0.0
    #: one regressed box per class (torchvision / HW03 layout) instead of one class-agnostic box
    class_specific_boxes: bool = False
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 1000
    #: tile overlap (px) used by the engine for large images; must exceed the largest object
    tile_overlap: int = 64

    @classmethod
    def small(cls, **overrides) -> "CascadeConfig":
        """A small configuration for tests and CPU experiments."""
        base = dict(backbone="resnet18", rpn_pre_nms_train=300, rpn_post_nms_train=200, rpn_pre_nms_test=300,
                    rpn_post_nms_test=200, roi_samples_per_image=64, representation=128, mask_channels=64)
        base.update(overrides)
        return cls(**base)


def _norm_layer(name: str):
    if name == "group":
        return lambda channels: nn.GroupNorm(32, channels)
    if name == "batch":
        return nn.BatchNorm2d
    if name == "frozen":
        from torchvision.ops import FrozenBatchNorm2d

        return FrozenBatchNorm2d
    raise ValueError(f"unknown norm {name!r}; use 'group', 'batch' or 'frozen'")


class CascadeMaskRCNN(TwoStageDetector):
    family = "cascade"
    Config = CascadeConfig

    def __init__(self, config: CascadeConfig | None = None) -> None:
        config = config or CascadeConfig()
        if config.backbone not in _RESNETS:
            raise ValueError(f"unknown Cascade backbone {config.backbone!r}; choose one of {list(_RESNETS)}")
        if len(config.class_names) < 2:
            raise ValueError("class_names needs background plus at least one class, e.g. ['background', 'nucleus']")
        super().__init__(config)
        self._setup_heads(config, stage_ious=config.stage_ious, stage_loss_weights=config.stage_loss_weights,
                          semantic=False)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255, persistent=False)

    def _build_backbone(self):
        backbone = resnet_fpn_backbone(backbone_name=self.config.backbone, weights=None,
                                       norm_layer=_norm_layer(self.config.norm), trainable_layers=5)
        return backbone, backbone.out_channels

