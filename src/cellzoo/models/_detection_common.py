"""Parts shared by the detection families (Cascade Mask R-CNN, SCTS), built from torchvision blocks.

``TwoStageDetector`` = backbone with FPN → torchvision RPN → :class:`CascadeRoIHeads` (one or more box
stages, each with its own IoU matcher, then a mask head), optionally gated by a semantic head (SCTS).
Subclasses only build the backbone and set the input scaling.

Outputs in eval mode, per image (tensors, image coordinates of the input):
``{"boxes": N×4 xyxy, "labels": N (class ids ≥ 1), "scores": N, "masks": N×H×W float probabilities}``.
Training mode returns a loss dict with ``"total"``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import (expand_boxes, expand_masks, paste_masks_in_image,
                                                    project_masks_on_boxes)
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align

from ..types import Instances
from .base import CellModel

#: FPN feature names at strides 4, 8, 16, 32 (+ "pool" at 64 for the RPN)
FPN_LEVELS = ["0", "1", "2", "3"]


# ============================================================================ targets
def detection_targets(labels: np.ndarray, classes: np.ndarray | None, num_classes: int) -> dict[str, np.ndarray]:
    """Instance map (+ class map) → ``boxes`` (N×4 xyxy, float32, exclusive max), ``labels`` (N, int64,
    1 for class-agnostic models, else the majority class id inside the instance) and ``masks`` (N×H×W uint8)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"instance map must be 2-D (H×W), got shape {labels.shape}")
    ids = np.unique(labels)
    ids = ids[ids != 0]
    slices = ndimage.find_objects(labels.astype(np.int64, copy=False))
    boxes, cls, masks = [], [], []
    for i in ids:
        sl = slices[int(i) - 1]
        if sl is None:
            continue
        mask = labels == i
        boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        if num_classes > 2 and classes is not None:
            values = np.bincount(classes[mask].astype(np.int64), minlength=num_classes)
            values[0] = 0  # an instance painted as background in the class map still is an object
            c = int(values.argmax()) if values.any() else 1
            if c >= num_classes:
                raise ValueError(f"class map holds class id {c} but the model has only {num_classes - 1} "
                                 "classes; build the model with matching class_names")
            cls.append(c)
        else:
            cls.append(1)
        masks.append(mask.astype(np.uint8))
    h, w = labels.shape
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(cls, dtype=np.int64),
        "masks": np.stack(masks) if masks else np.zeros((0, h, w), dtype=np.uint8),
    }


def targets_to_torch(target: dict[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in target.items():
        t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        out[key] = t.to(device)
    return out


# ============================================================================ painting
@dataclass
class MaskCrop:
    """One object's binary mask inside its bounding box, placed at (y0, x0) of the full image."""

    y0: int
    x0: int
    mask: np.ndarray  # bool h×w
    score: float
    label: int

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def window(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.mask.shape[0]), slice(self.x0, self.x0 + self.mask.shape[1])

    def union(self, other: "MaskCrop") -> "MaskCrop":
        y0, x0 = min(self.y0, other.y0), min(self.x0, other.x0)
        y1 = max(self.y0 + self.mask.shape[0], other.y0 + other.mask.shape[0])
        x1 = max(self.x0 + self.mask.shape[1], other.x0 + other.mask.shape[1])
        merged = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for c in (self, other):
            merged[c.y0 - y0:c.y0 - y0 + c.mask.shape[0], c.x0 - x0:c.x0 - x0 + c.mask.shape[1]] |= c.mask
        return MaskCrop(y0, x0, merged, max(self.score, other.score), self.label)


def masks_to_crops(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, mask_threshold: float,
                   offset: tuple[int, int] = (0, 0)) -> list[MaskCrop]:
    """Full-size mask probabilities (N×H×W) → thresholded :class:`MaskCrop` list (empty masks dropped)."""
    crops = []
    for m, s, c in zip(masks, scores, labels):
        binary = m >= mask_threshold if m.dtype != bool else m
        sl = ndimage.find_objects(binary.astype(np.uint8))
        if not sl or sl[0] is None:
            continue
        ys, xs = sl[0]
        crops.append(MaskCrop(ys.start + offset[0], xs.start + offset[1], binary[ys, xs].copy(), float(s), int(c)))
    return crops


def crops_from_mask_probs(mask_probs: torch.Tensor | np.ndarray, boxes, scores, labels, *, mask_threshold: float,
                          bounds: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> list[MaskCrop]:
    """Low-resolution mask probabilities (N×M×M, as the mask head predicts them inside each box) → binary
    :class:`MaskCrop` list, resized only to each box (as torchvision's ``paste_masks_in_image`` does, but
    without allocating N full-size images).  Crops are clipped to ``bounds`` = (height, width)."""
    probs = torch.as_tensor(mask_probs, dtype=torch.float32)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if probs.shape[0] == 0:
        return []
    padded, scale = expand_masks(probs[:, None], padding=1)
    boxes = expand_boxes(boxes, scale).to(torch.int64)
    crops = []
    height, width = bounds
    for prob, box, score, label in zip(padded, boxes.tolist(), np.asarray(scores), np.asarray(labels)):
        x0, y0, x1, y1 = box
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        binary = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0] >= mask_threshold
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y0 + h, height), min(x0 + w, width)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        binary = binary[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0].numpy()
        if not binary.any():
            continue
        rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
        binary = binary[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        crops.append(MaskCrop(cy0 + int(rows[0]) + offset[0], cx0 + int(cols[0]) + offset[1], binary.copy(),
                              float(score), int(label)))
    return crops


def paint_instances(crops: Sequence[MaskCrop], shape: tuple[int, int], class_names: list[str], *,
                    min_area: int = 5, min_visible: float = 0.5) -> Instances:
    """Paint objects by descending score onto an empty label map; a pixel belongs to the best-scoring object
    that claims it, so instances never overlap.  Objects left with fewer than ``min_area`` pixels or less than
    ``min_visible`` of their own mask (mostly hidden by better ones: near-duplicates) are dropped."""
    labels = np.zeros(shape, dtype=np.int32)
    class_of: dict[int, int] = {}
    scores: dict[int, float] = {}
    next_id = 1
    for crop in sorted(crops, key=lambda c: -c.score):
        win = crop.window()
        target = labels[win]
        free = crop.mask & (target == 0)
        visible = int(free.sum())
        if visible < min_area or visible < min_visible * max(crop.area, 1):
            continue
        target[free] = next_id
        class_of[next_id] = crop.label
        scores[next_id] = crop.score
        next_id += 1
    classes = None
    if len(class_names) > 2:
        lut = np.zeros(next_id, dtype=np.uint8)
        for k, c in class_of.items():
            lut[k] = c
        classes = lut[labels]
    return Instances(labels=labels, classes=classes, class_of=class_of, scores=scores, class_names=list(class_names))


# ============================================================================ heads
class Float32RPNHead(RPNHead):
    """torchvision's RPN head with fp32 outputs: under autocast its box decoding (``BoxCoder.decode`` casts
    the anchors to the deltas' dtype) would otherwise run in fp16/bf16 and lose pixels on large tiles."""

    def forward(self, x):
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class StagePredictor(nn.Module):
    """Classification over ``num_classes`` (incl. background) and box regression: class-agnostic (4
    outputs) as in Cascade R-CNN / HTC (``reg_class_agnostic=True``), or one box per class
    (``num_classes`` × 4 outputs, torchvision's FastRCNNPredictor layout, which HW03 checkpoints use)."""

    def __init__(self, in_channels: int, num_classes: int, class_agnostic: bool = True) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 if class_agnostic else 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for lin in (self.cls_score, self.bbox_pred):
            nn.init.constant_(lin.bias, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


def deltas_for(box_regression: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """N×4 box deltas: class-agnostic regression as is, per-class regression (N × C·4) at ``classes``."""
    if box_regression.shape[1] == 4:
        return box_regression
    per_class = box_regression.reshape(box_regression.shape[0], -1, 4)
    return per_class[torch.arange(per_class.shape[0], device=per_class.device), classes]


def foreground_argmax(class_logits: torch.Tensor) -> torch.Tensor:
    """The most likely foreground class of each RoI (ids >= 1)."""
    return class_logits[:, 1:].argmax(1) + 1


class FusedSemanticHead(nn.Module):
    """HTC's fused semantic head: 1×1 laterals on all FPN levels summed at stride 8, 4 × 3×3 convs, logits
    (background / cell / boundary) and a 1×1 embedding whose RoI features gate the box and mask features."""

    def __init__(self, in_channels: int = 256, levels: Sequence[str] = ("0", "1", "2", "3", "pool"),
                 fuse_level: str = "1", num_convs: int = 4, channels: int = 256, num_classes: int = 3) -> None:
        super().__init__()
        self.levels = list(levels)
        self.fuse_level = fuse_level
        self.laterals = nn.ModuleList(nn.Conv2d(in_channels, channels, 1) for _ in self.levels)
        self.convs = nn.Sequential(*[nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
                                     for _ in range(num_convs)])
        self.logits = nn.Conv2d(channels, num_classes, 1)
        self.embedding = nn.Sequential(nn.Conv2d(channels, in_channels, 1), nn.ReLU(inplace=True))

    def forward(self, features: "OrderedDict[str, torch.Tensor]") -> tuple[torch.Tensor, torch.Tensor]:
        size = features[self.fuse_level].shape[-2:]
        fused = None
        for name, lateral in zip(self.levels, self.laterals):
            x = lateral(features[name])
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            fused = x if fused is None else fused + x
        x = self.convs(fused)
        return self.logits(x), self.embedding(x)


class CascadeRoIHeads(nn.Module):
    """Box stages with their own IoU thresholds (Cascade R-CNN); a single stage is Mask R-CNN / HTC-1.

    Each stage re-samples the (detached) boxes refined by the previous stage plus the ground truth,
    assigns labels with its own :class:`torchvision...Matcher` (``high = low = iou``, so proposals between
    two stage thresholds are foreground for one stage and background for the next), and regresses with
    its own box-coder weights.  Inference averages the stages' class probabilities and takes the last
    stage's boxes.  The mask head is trained on the positives of the last stage.
    """

    #: mmdet Cascade R-CNN target stds (0.1, 0.05, 0.033) expressed as torchvision BoxCoder weights
    STAGE_BOX_WEIGHTS = [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]

    def __init__(self, *, num_classes: int, stage_ious: Sequence[float], stage_loss_weights: Sequence[float],
                 out_channels: int = 256, representation: int = 1024, mask_channels: int = 256,
                 mask_convs: int = 4, samples_per_image: int = 512, positive_fraction: float = 0.25,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 1000,
                 mask_dice_weight: float = 0.0, semantic_gating: bool = False,
                 class_agnostic_boxes: bool = True) -> None:
        super().__init__()
        if len(stage_ious) != len(stage_loss_weights):
            raise ValueError("stage_ious and stage_loss_weights must have the same length")
        self.num_classes = num_classes
        self.stage_ious = [float(v) for v in stage_ious]
        self.stage_loss_weights = [float(v) for v in stage_loss_weights]
        self.matchers = [det_utils.Matcher(iou, iou, allow_low_quality_matches=False) for iou in self.stage_ious]
        self.sampler = det_utils.BalancedPositiveNegativeSampler(samples_per_image, positive_fraction)
        weights = self.STAGE_BOX_WEIGHTS + [self.STAGE_BOX_WEIGHTS[-1]] * max(0, len(stage_ious) - 3)
        self.box_coders = [det_utils.BoxCoder(weights[i]) for i in range(len(stage_ious))]
        self.box_roi_pool = MultiScaleRoIAlign(FPN_LEVELS, output_size=7, sampling_ratio=2)
        self.mask_roi_pool = MultiScaleRoIAlign(FPN_LEVELS, output_size=14, sampling_ratio=2)
        self.box_heads = nn.ModuleList(TwoMLPHead(out_channels * 49, representation) for _ in self.stage_ious)
        self.class_agnostic_boxes = class_agnostic_boxes
        self.box_predictors = nn.ModuleList(StagePredictor(representation, num_classes, class_agnostic_boxes)
                                            for _ in self.stage_ious)
        self.mask_head = MaskRCNNHeads(out_channels, [mask_channels] * mask_convs, 1)
        self.mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels, num_classes)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_dice_weight = mask_dice_weight
        self.semantic_gating = semantic_gating

    # ------------------------------------------------------------------ label assignment
    def assign(self, stage: int, proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage ``stage``'s matcher: per proposal the class label (0 = background) and the matched GT index."""
        if gt_boxes.numel() == 0:
            n = proposals.shape[0]
            return (torch.zeros(n, dtype=torch.int64, device=proposals.device),
                    torch.zeros(n, dtype=torch.int64, device=proposals.device))
        matched = self.matchers[stage](box_iou(gt_boxes, proposals))
        labels = gt_labels[matched.clamp(min=0)].to(torch.int64)
        labels[matched < 0] = 0
        return labels, matched.clamp(min=0)

    # ------------------------------------------------------------------ features
    def _box_features(self, stage: int, features, boxes: list[torch.Tensor], image_sizes, semantic_embedding):
        x = self.box_roi_pool(features, boxes, image_sizes)
        if self.semantic_gating and semantic_embedding is not None:
            sem = roi_align(semantic_embedding, boxes, output_size=14, spatial_scale=1 / 8, sampling_ratio=2)
            x = x * F.adaptive_avg_pool2d(sem, 7)  # SCTS: multiply (stock HTC adds)
        class_logits, box_regression = self.box_predictors[stage](self.box_heads[stage](x))
        return class_logits.float(), box_regression.float()  # fp32 box decoding under autocast

    def _mask_logits(self, features, boxes: list[torch.Tensor], image_sizes, semantic_embedding) -> torch.Tensor:
        x = self.mask_roi_pool(features, boxes, image_sizes)
        if self.semantic_gating and semantic_embedding is not None:
            x = x * roi_align(semantic_embedding, boxes, output_size=14, spatial_scale=1 / 8, sampling_ratio=2)
        return self.mask_predictor(self.mask_head(x))

    # ------------------------------------------------------------------ training
    def forward_train(self, features, proposals: list[torch.Tensor], image_sizes, targets: list[dict],
                      semantic_embedding=None) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        rois = [p.detach() for p in proposals]
        for stage in range(len(self.stage_ious)):
            sampled, labels, matched_gt, is_gt = [], [], [], []
            for props, tgt in zip(rois, targets):
                n_props = props.shape[0]
                props = torch.cat([props, tgt["boxes"].to(props.dtype)])
                lab, idx = self.assign(stage, props, tgt["boxes"], tgt["labels"])
                sampled.append(props), labels.append(lab), matched_gt.append(idx)
                flags = torch.zeros(props.shape[0], dtype=torch.bool, device=props.device)
                flags[n_props:] = True
                is_gt.append(flags)
            pos_masks, neg_masks = self.sampler(labels)
            keep = [torch.where(p | n)[0] for p, n in zip(pos_masks, neg_masks)]
            sampled = [s[k] for s, k in zip(sampled, keep)]
            labels = [lab[k] for lab, k in zip(labels, keep)]
            matched_gt = [m[k] for m, k in zip(matched_gt, keep)]
            is_gt = [g[k] for g, k in zip(is_gt, keep)]
            class_logits, box_regression = self._box_features(stage, features, sampled, image_sizes, semantic_embedding)
            all_labels = torch.cat(labels)
            coder = self.box_coders[stage]
            regression_targets = coder.encode(
                [t["boxes"][m] if t["boxes"].numel() else s for t, m, s in zip(targets, matched_gt, sampled)],
                sampled)
            regression_targets = torch.cat(regression_targets)
            loss_cls = F.cross_entropy(class_logits, all_labels)
            pos = torch.where(all_labels > 0)[0]
            # per-class regression: positives learn the box of their ground-truth class, and each RoI is
            # refined with that class's box (the predicted foreground class for background RoIs, as mmdet)
            box_classes = torch.where(all_labels > 0, all_labels, foreground_argmax(class_logits.detach()))
            box_regression = deltas_for(box_regression, box_classes)
            loss_box = F.smooth_l1_loss(box_regression[pos], regression_targets[pos], beta=1 / 9,
                                        reduction="sum") / max(all_labels.numel(), 1)
            w = self.stage_loss_weights[stage]
            losses[f"s{stage}_cls"] = w * loss_cls
            losses[f"s{stage}_box"] = w * loss_box
            last = stage == len(self.stage_ious) - 1
            if last:
                losses.update(self._mask_loss(features, sampled, labels, matched_gt, targets, image_sizes,
                                              semantic_embedding))
            else:
                # refine: decode this stage's regression, drop the GT rois we appended (as mmdet does)
                counts = [s.shape[0] for s in sampled]
                decoded = coder.decode(box_regression.detach(), sampled).reshape(-1, 4).split(counts)
                rois = [clip_boxes_to_image(d[~g], size) for d, g, size in zip(decoded, is_gt, image_sizes)]
        return losses

    def _mask_loss(self, features, sampled, labels, matched_gt, targets, image_sizes, semantic_embedding):
        pos_boxes, pos_labels, mask_targets = [], [], []
        for s, lab, m, tgt in zip(sampled, labels, matched_gt, targets):
            pos = torch.where(lab > 0)[0]
            pos_boxes.append(s[pos])
            pos_labels.append(lab[pos])
            if pos.numel():
                mask_targets.append(project_masks_on_boxes(tgt["masks"], s[pos], m[pos], 28))
        if sum(b.shape[0] for b in pos_boxes) == 0:
            zero = sum(p.sum() for p in self.mask_predictor.parameters()) * 0.0
            return {"mask": zero}
        logits = self._mask_logits(features, pos_boxes, image_sizes, semantic_embedding)
        lab = torch.cat(pos_labels)
        logits = logits[torch.arange(lab.numel(), device=lab.device), lab].float()
        target = torch.cat(mask_targets)
        losses = {"mask": F.binary_cross_entropy_with_logits(logits, target)}
        if self.mask_dice_weight > 0:
            prob = logits.sigmoid().flatten(1)
            tgt = target.flatten(1)
            dice = 1 - (2 * (prob * tgt).sum(1) + 1) / (prob.sum(1) + tgt.sum(1) + 1)
            losses["mask_dice"] = self.mask_dice_weight * dice.mean()
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def forward_test(self, features, proposals: list[torch.Tensor], image_sizes, semantic_embedding=None,
                     paste_masks: bool = True) -> list[dict[str, torch.Tensor]]:
        rois = proposals
        stage_probs = []
        n_fg = self.num_classes - 1
        last = len(self.stage_ious) - 1
        for stage in range(len(self.stage_ious)):
            class_logits, box_regression = self._box_features(stage, features, rois, image_sizes, semantic_embedding)
            stage_probs.append(F.softmax(class_logits, -1))
            counts = [r.shape[0] for r in rois]
            if stage == last and not self.class_agnostic_boxes:
                # the last stage's box of every foreground class, one candidate per class below
                deltas = box_regression.reshape(-1, self.num_classes, 4)[:, 1:].reshape(-1, n_fg * 4)
            else:  # one box per RoI: class-agnostic, or the most likely foreground class's box
                deltas = deltas_for(box_regression, foreground_argmax(class_logits))
            per_roi = deltas.shape[1] // 4
            decoded = self.box_coders[stage].decode(deltas, rois).reshape(-1, 4).split([c * per_roi for c in counts])
            rois = [clip_boxes_to_image(d, size) for d, size in zip(decoded, image_sizes)]
        probs = torch.stack(stage_probs).mean(0).split(counts)
        results = []
        for img_boxes, img_probs in zip(rois, probs):
            # per RoI 1 or n_fg boxes; a single box stands for every class
            cand_boxes = img_boxes.reshape(img_probs.shape[0], per_roi, 4).expand(-1, n_fg, 4).reshape(-1, 4)
            cand_scores = img_probs[:, 1:].reshape(-1)
            cand_labels = torch.arange(1, self.num_classes, device=img_boxes.device).repeat(img_probs.shape[0])
            keep = torch.where(cand_scores > self.score_thresh)[0]
            cand_boxes, cand_scores, cand_labels = cand_boxes[keep], cand_scores[keep], cand_labels[keep]
            keep = remove_small_boxes(cand_boxes, 1.0)
            cand_boxes, cand_scores, cand_labels = cand_boxes[keep], cand_scores[keep], cand_labels[keep]
            keep = batched_nms(cand_boxes, cand_scores, cand_labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": cand_labels[keep]})
        det_boxes = [r["boxes"] for r in results]
        if sum(b.shape[0] for b in det_boxes):
            logits = self._mask_logits(features, det_boxes, image_sizes, semantic_embedding)
            lab = torch.cat([r["labels"] for r in results])
            probs = logits[torch.arange(lab.numel(), device=lab.device), lab].float().sigmoid()
            per_image = probs.split([b.shape[0] for b in det_boxes])
        else:
            per_image = [torch.zeros((0, 28, 28), device=det_boxes[0].device) for _ in det_boxes]
        for r, m, size in zip(results, per_image, image_sizes):
            if paste_masks:
                r["masks"] = paste_masks_in_image(m[:, None], r["boxes"], size, padding=1)[:, 0]
            else:
                r["mask_probs"] = m
        return results


# ============================================================================ the detector
class TwoStageDetector(CellModel):
    """Backbone+FPN → RPN → cascade RoI heads (+ optional semantic head). Subclasses implement
    ``_build_backbone() -> (module returning OrderedDict of FPN maps, out_channels)`` and register the
    ``pixel_mean`` / ``pixel_std`` buffers (3×1×1, on the 0–255 scale) that :meth:`preprocess` applies."""

    kind = "detection"

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 float 0–255 → (x − pixel_mean) / pixel_std, channels first."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{type(self).__name__} expects an H×W×3 image, got shape {image.shape}; "
                             "use cellzoo.infer.prepare_image to convert it")
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return (x - self.pixel_mean.cpu()) / self.pixel_std.cpu()

    def _setup_heads(self, cfg, *, stage_ious, stage_loss_weights, semantic: bool) -> None:
        self.backbone, out_channels = self._build_backbone()
        sizes = tuple((int(s),) for s in cfg.anchor_sizes)
        anchor_gen = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
        self.rpn = RegionProposalNetwork(
            anchor_gen, Float32RPNHead(out_channels, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": cfg.rpn_pre_nms_train, "testing": cfg.rpn_pre_nms_test},
            post_nms_top_n={"training": cfg.rpn_post_nms_train, "testing": cfg.rpn_post_nms_test},
            nms_thresh=0.7)
        self.roi_heads = CascadeRoIHeads(
            num_classes=self.num_classes, stage_ious=stage_ious, stage_loss_weights=stage_loss_weights,
            out_channels=out_channels, representation=cfg.representation, mask_channels=cfg.mask_channels,
            samples_per_image=cfg.roi_samples_per_image, score_thresh=cfg.box_score_thresh,
            nms_thresh=cfg.box_nms_thresh, detections_per_img=cfg.detections_per_img,
            mask_dice_weight=getattr(cfg, "mask_dice_weight", 0.0), semantic_gating=semantic,
            class_agnostic_boxes=not getattr(cfg, "class_specific_boxes", False))
        # (no class-level default: a class attribute would shadow the registered submodule)
        self.semantic_head = FusedSemanticHead(out_channels, channels=cfg.semantic_channels) if semantic else None

    #: tile pixels per test-time RPN proposal kept (pre- and post-NMS): a tile packed with small nuclei
    #: (DSB fluorescence: ~100–300 px² each) then never runs out of proposals. Measured on the DSB test
    #: split with cellzoo-scts-dsb (whose small config kept 300 / 200): pooled DSB AP@0.5 0.554 → 0.648
    #: with 1000 / 1000, and no further gain with 2000 / 2000.
    PIXELS_PER_PROPOSAL = 256

    def fit_proposals_to_tile(self, tile_pixels: int) -> int:
        """Raise the RPN's test-time proposal counts to at least one per :attr:`PIXELS_PER_PROPOSAL` pixels of
        a ``tile_pixels`` tile (never below the configuration's own); returns the post-NMS count in use."""
        wanted = -(-int(tile_pixels) // self.PIXELS_PER_PROPOSAL)
        pre = max(int(self.config.rpn_pre_nms_test), wanted)
        post = max(int(self.config.rpn_post_nms_test), wanted)
        self.rpn._pre_nms_top_n["testing"] = pre
        self.rpn._post_nms_top_n["testing"] = post
        return post

    # ------------------------------------------------------------------ geometry
    @property
    def halo(self) -> int:
        # for detectors the engine's tile overlap: larger than a typical nucleus so that every object is
        # whole in at least one tile
        return int(getattr(self.config, "tile_overlap", 64))

    @property
    def size_divisor(self) -> int:
        return 32

    @property
    def min_tile(self) -> int:
        return 128

    def default_postprocess_params(self) -> dict[str, Any]:
        return {"score_threshold": 0.5, "mask_threshold": 0.5, "min_area": 5, "tta_nms_iou": 0.5,
                "dedup_ioa": 0.5}

    # ------------------------------------------------------------------ helpers
    def _to_image_list(self, images) -> ImageList:
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            images = list(images)
        if not images:
            raise ValueError("no images given to the detector")
        sizes = [tuple(int(v) for v in im.shape[-2:]) for im in images]
        d = self.size_divisor
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        h, w = -(-h // d) * d, -(-w // d) * d
        batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        for b, im in zip(batch, images):
            b[:, : im.shape[-2], : im.shape[-1]].copy_(im)
        return ImageList(batch, sizes)

    def forward(self, images, targets: list[dict[str, torch.Tensor]] | None = None, *, paste_masks: bool = True):
        """``images``: list of preprocessed C×H×W tensors or a B×C×H×W batch.  Training (``targets`` given,
        each from :meth:`targets` as tensors): loss dict with ``"total"``.  Eval: list of detection dicts;
        with ``paste_masks=False`` they hold ``mask_probs`` (N×28×28 inside each box) instead of full-size
        ``masks`` (what the tiled engine uses: N full-size masks per tile would cost N×H×W floats)."""
        image_list = self._to_image_list(images)
        features = self.backbone(image_list.tensors)
        semantic_logits = semantic_embedding = None
        if self.semantic_head is not None:
            semantic_logits, semantic_embedding = self.semantic_head(features)
        # fp32 features for the RPN: its anchors take the features' dtype (bf16 anchors are off by pixels)
        rpn_features = OrderedDict((k, v.float()) for k, v in features.items())
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets (from model.targets); call model.eval() to detect")
            targets = [{k: v for k, v in t.items()} for t in targets]
            for t in targets:
                t["boxes"] = t["boxes"].float().reshape(-1, 4)
            proposals, rpn_losses = self.rpn(image_list, rpn_features, targets)
            losses = {"rpn_obj": rpn_losses["loss_objectness"], "rpn_box": rpn_losses["loss_rpn_box_reg"]}
            losses.update(self.roi_heads.forward_train(features, proposals, image_list.image_sizes, targets,
                                                       semantic_embedding))
            if semantic_logits is not None:
                losses["semantic"] = self._semantic_loss(semantic_logits, targets, image_list)
            losses["total"] = sum(losses.values())
            return losses
        proposals, _ = self.rpn(image_list, rpn_features)
        return self.roi_heads.forward_test(features, proposals, image_list.image_sizes, semantic_embedding,
                                           paste_masks=paste_masks)

    def _semantic_loss(self, logits, targets, image_list) -> torch.Tensor:
        # CE on the full-resolution target (logits upsampled) so that 1-px boundaries are not lost by the
        # ×1/8 nearest rescaling of the original
        h, w = image_list.tensors.shape[-2:]
        sem = torch.full((len(targets), h, w), 255, dtype=torch.int64, device=logits.device)
        for b, (t, size) in enumerate(zip(targets, image_list.image_sizes)):
            if "semantic" not in t:
                raise ValueError("SCTS targets need a 'semantic' map; build them with model.targets(...)")
            sem[b, : size[0], : size[1]] = t["semantic"].to(torch.int64)
        up = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        weight = torch.tensor(self.config.semantic_class_weights, dtype=up.dtype, device=up.device)
        return self.config.semantic_loss_weight * F.cross_entropy(up, sem, weight=weight, ignore_index=255)

    def targets(self, labels: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
        return detection_targets(labels, classes, self.num_classes)

    def loss(self, outputs: dict[str, torch.Tensor], targets: Any = None) -> dict[str, torch.Tensor]:
        """``forward(images, targets)`` already returns the losses in training mode; this returns them."""
        if "total" not in outputs:
            raise ValueError("detection losses are computed by forward(images, targets) in training mode")
        return outputs

    def postprocess(self, maps: dict[str, Any], **params: Any) -> Instances:
        """Detections of one image (tensors or numpy; ``masks`` N×H×W probabilities) → :class:`Instances`
        painted by descending score (no overlaps)."""
        p = {**self.default_postprocess_params(), **params}
        det = {k: (v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) and v.is_floating_point()
                   else v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in maps.items()}
        keep = det["scores"] >= p["score_threshold"]
        if "masks" in det:
            shape = tuple(det["masks"].shape[-2:])
            crops = masks_to_crops(det["masks"][keep], det["scores"][keep], det["labels"][keep],
                                   mask_threshold=p["mask_threshold"])
        else:  # compact masks: the caller says how large the image is
            if "image_shape" not in p:
                raise ValueError("detections with mask_probs need image_shape=(height, width) to be painted")
            shape = tuple(int(v) for v in p["image_shape"])
            crops = crops_from_mask_probs(det["mask_probs"][keep], det["boxes"][keep], det["scores"][keep],
                                          det["labels"][keep], mask_threshold=p["mask_threshold"], bounds=shape)
        return paint_instances(crops, shape, self.class_names, min_area=p["min_area"])
