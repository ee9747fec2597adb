"""SCTS (Zhou et al., WACV 2023) on torchvision parts: Swin-T features → FPN → RPN → box and mask heads,
plus HTC's fused semantic head (background / cell / boundary, CE weights 1 / 1 / 10, loss weight 0.5)
whose embedding's RoI features *multiply* into the box and mask RoI features (seeds.md §3).

Differences from the original, on purpose: detections per image default to 1000 (the original's 105 cannot
hold dense images), the semantic CE is computed at full resolution, the boundary class is built here
(inner instance boundary; the original repo lacks this conversion), no ImageNet initialisation.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from skimage.segmentation import find_boundaries
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ._detection_common import TwoStageDetector, detection_targets


@dataclass
class SCTSConfig:
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    drop_path: float = 0.2
    fpn_channels: int = 256
    class_names: list[str] = field(default_factory=lambda: ["background", "nucleus"])
    #: input scaling on the 0–255 image (the original's dark confocal HEK293T statistics)
    mean: tuple[float, float, float] = (11.79, 11.79, 11.79)
    std: tuple[float, float, float] = (15.7, 15.7, 15.7)
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    roi_samples_per_image: int = 512
    representation: int = 1024
    mask_channels: int = 256
    semantic_channels: int = 256
    semantic_class_weights: tuple[float, float, float] = (1.0, 1.0, 10.0)
    semantic_loss_weight: float = 0.5
    mask_dice_weight: float = 0.0
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 1000
    tile_overlap: int = 64

    @classmethod
    def small(cls, **overrides) -> "SCTSConfig":
        """A small configuration for tests and CPU experiments."""
        base = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path=0.0, fpn_channels=64,
                    rpn_pre_nms_train=300, rpn_post_nms_train=200, rpn_pre_nms_test=300, rpn_post_nms_test=200,
                    roi_samples_per_image=64, representation=128, mask_channels=64, semantic_channels=64)
        base.update(overrides)
        return cls(**base)


class SwinFPN(nn.Module):
    """torchvision Swin features at strides 4/8/16/32 (LayerNorm per level, as mmdet's ``norm0..3``) → FPN."""

    def __init__(self, cfg: SCTSConfig) -> None:
        super().__init__()
        swin = SwinTransformer(patch_size=[4, 4], embed_dim=cfg.embed_dim, depths=list(cfg.depths),
                               num_heads=list(cfg.num_heads), window_size=[cfg.window_size] * 2,
                               stochastic_depth_prob=cfg.drop_path)
        self.features = swin.features  # the classifier norm/head are not used
        dims = [cfg.embed_dim * 2 ** i for i in range(4)]
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.fpn = FeaturePyramidNetwork(dims, cfg.fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = cfg.fpn_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        outs = OrderedDict()
        level = 0
        for i, block in enumerate(self.features):
            x = block(x)
            if i % 2 == 1:  # features = [embed, stage1, merge, stage2, merge, stage3, merge, stage4]
                outs[str(level)] = self.norms[level](x).permute(0, 3, 1, 2).contiguous()
                level += 1
        return self.fpn(outs)


class SCTS(TwoStageDetector):
    family = "scts"
    Config = SCTSConfig

    def __init__(self, config: SCTSConfig | None = None) -> None:
        config = config or SCTSConfig()
        if len(config.depths) != 4 or len(config.num_heads) != 4:
            raise ValueError("SCTS needs four Swin stages: depths and num_heads of length 4")
        super().__init__(config)
        self._setup_heads(config, stage_ious=(0.5,), stage_loss_weights=(1.0,), semantic=True)
        self.register_buffer("pixel_mean", torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)

    def _build_backbone(self):
        backbone = SwinFPN(self.config)
        return backbone, backbone.out_channels

    def targets(self, labels: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
        """Detection targets plus ``semantic`` (H×W uint8: 0 background, 1 cell, 2 boundary = the inner
        boundary pixels of each instance, so that touching cells are separated)."""
        out = detection_targets(labels, classes, self.num_classes)
        semantic = (np.asarray(labels) > 0).astype(np.uint8)
        semantic[find_boundaries(labels, mode="inner") & (labels > 0)] = 2
        out["semantic"] = semantic
        return out
