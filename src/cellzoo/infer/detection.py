"""Tiled inference for detection families (Cascade Mask R-CNN, SCTS): per-tile detections (optionally
with horizontal-flip TTA merged by NMS) are moved to image coordinates and de-duplicated across tiles.

De-duplication (why not "keep by box centre"): a detector sees an object cut by a tile border as a
smaller object whose centre can fall into the wrong tile, so both or neither copy would survive.  Here
every detection is marked *cut* when its mask touches a tile edge that lies inside the image.  Whole
detections are placed first (best score first), then cut ones; a detection that mostly lies on an
already placed object (intersection over the smaller area > ``dedup_ioa``) is a duplicate and dropped,
except that two cut pieces of the same object (one larger than the tile overlap) are merged.
Finally objects are painted by descending score so that instances never overlap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator, Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms

from ..models._detection_common import MaskCrop, crops_from_mask_probs, masks_to_crops, paint_instances
from ..types import Instances, Progress, check_cancel
from .device import autocast

#: a mask within this many pixels of a tile edge counts as touching it (predicted masks may stop short)
EDGE_MARGIN = 2


@dataclass
class TileDetections:
    """Detections of one tile; ``top``/``left``: the tile's origin in image coordinates (may be negative
    when the tile reads padding); ``masks``: N×h×w probabilities (or booleans) at tile size, or instead
    ``mask_probs``: N×M×M probabilities inside each box (tile coordinates)."""

    top: int
    left: int
    height: int
    width: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    mask_probs: np.ndarray | None = None


def _to_numpy(detections: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for key in ("boxes", "scores", "labels", "masks", "mask_probs"):
        if key not in detections:
            continue
        value = detections[key]
        if isinstance(value, torch.Tensor):
            value = value.detach()
            value = value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
        out[key] = np.asarray(value)
    if "masks" in out and out["masks"].ndim == 4:  # torchvision's N×1×H×W
        out["masks"] = out["masks"][:, 0]
    return out


def merge_hflip(detections: dict[str, torch.Tensor], flipped: dict[str, torch.Tensor], width: int, *,
                iou: float = 0.5, max_detections: int = 1000) -> dict[str, torch.Tensor]:
    """Merge the detections of an image and of its horizontal mirror (mapped back) by class-wise box NMS."""
    boxes = flipped["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - flipped["boxes"][:, 2], width - flipped["boxes"][:, 0]
    merged = {"boxes": torch.cat([detections["boxes"], boxes]),
              "scores": torch.cat([detections["scores"], flipped["scores"]]),
              "labels": torch.cat([detections["labels"], flipped["labels"]])}
    for key in ("masks", "mask_probs"):  # full-size masks or box-local ones: both mirror along x
        if key in detections:
            merged[key] = torch.cat([detections[key], flipped[key].flip(-1)])
    keep = batched_nms(merged["boxes"].float(), merged["scores"].float(), merged["labels"], iou)[:max_detections]
    return {k: v[keep] for k, v in merged.items()}


def tile_crops(tile: TileDetections, image_shape: tuple[int, int], *, score_threshold: float,
               mask_threshold: float) -> tuple[list[MaskCrop], list[bool]]:
    """One tile's detections → mask crops in image coordinates (clipped to the image) and, per crop,
    whether it touches a tile edge that lies inside the image (the object may continue beyond it)."""
    height, width = image_shape
    keep = tile.scores >= score_threshold
    if tile.mask_probs is not None:
        crops = crops_from_mask_probs(tile.mask_probs[keep], tile.boxes[keep], tile.scores[keep], tile.labels[keep],
                                      mask_threshold=mask_threshold, bounds=(tile.height, tile.width),
                                      offset=(tile.top, tile.left))
    else:
        crops = masks_to_crops(tile.masks[keep], tile.scores[keep], tile.labels[keep],
                               mask_threshold=mask_threshold, offset=(tile.top, tile.left))
    inner_top = tile.top > 0
    inner_left = tile.left > 0
    inner_bottom = tile.top + tile.height < height
    inner_right = tile.left + tile.width < width
    out, cut = [], []
    for c in crops:
        # clip to the image (tiles at the border read reflect padding)
        y0, x0 = max(c.y0, 0), max(c.x0, 0)
        y1, x1 = min(c.y0 + c.mask.shape[0], height), min(c.x0 + c.mask.shape[1], width)
        if y1 <= y0 or x1 <= x0:
            continue
        mask = c.mask[y0 - c.y0:y1 - c.y0, x0 - c.x0:x1 - c.x0]
        if not mask.any():
            continue
        touches = ((inner_top and c.y0 - tile.top < EDGE_MARGIN)
                   or (inner_left and c.x0 - tile.left < EDGE_MARGIN)
                   or (inner_bottom and tile.top + tile.height - (c.y0 + c.mask.shape[0]) < EDGE_MARGIN)
                   or (inner_right and tile.left + tile.width - (c.x0 + c.mask.shape[1]) < EDGE_MARGIN))
        out.append(MaskCrop(y0, x0, mask, c.score, c.label))
        cut.append(bool(touches))
    return out, cut


def deduplicate(crops: Sequence[MaskCrop], cut: Sequence[bool], image_shape: tuple[int, int], *,
                dedup_ioa: float = 0.5) -> list[MaskCrop]:
    """Remove cross-tile duplicates (see the module docstring); returns the surviving objects."""
    owner = np.zeros(image_shape, dtype=np.int32)  # index + 1 of the placed object owning each pixel
    placed: list[MaskCrop] = []
    placed_cut: list[bool] = []
    order = sorted(range(len(crops)), key=lambda i: (cut[i], -crops[i].score))
    for i in order:
        crop = crops[i]
        window = crop.window()
        hits = owner[window][crop.mask]
        hits = hits[hits > 0]
        duplicate_of = None
        if hits.size:
            ids, counts = np.unique(hits, return_counts=True)
            best = int(np.argmax(counts))
            other = placed[ids[best] - 1]
            ioa = counts[best] / max(1, min(crop.area, other.area))
            both_cut = cut[i] and placed_cut[ids[best] - 1]
            # pieces of one large object overlap only in the tiles' shared strip: looser threshold
            if ioa > (dedup_ioa / 2 if both_cut else dedup_ioa):
                duplicate_of = int(ids[best]) - 1
        if duplicate_of is None:
            placed.append(crop)
            placed_cut.append(cut[i])
            region = owner[window]
            region[crop.mask & (region == 0)] = len(placed)
        elif cut[i] and placed_cut[duplicate_of]:
            merged = placed[duplicate_of].union(crop)
            placed[duplicate_of] = merged
            region = owner[merged.window()]
            region[merged.mask & (region == 0)] = duplicate_of + 1
    return placed


def stitch_tile_detections(tiles: Sequence[TileDetections], image_shape: tuple[int, int], class_names: list[str],
                           *, score_threshold: float = 0.5, mask_threshold: float = 0.5, dedup_ioa: float = 0.5,
                           min_area: int = 5) -> Instances:
    """Per-tile detections → one :class:`Instances` for the whole image, objects cut by tile borders once."""
    crops: list[MaskCrop] = []
    cut: list[bool] = []
    for tile in tiles:
        c, k = tile_crops(tile, image_shape, score_threshold=score_threshold, mask_threshold=mask_threshold)
        crops += c
        cut += k
    kept = deduplicate(crops, cut, image_shape, dedup_ioa=dedup_ioa)
    return paint_instances(kept, image_shape, class_names, min_area=min_area)


def detect_tiles(model, batch: torch.Tensor, *, tta: bool = False, tta_nms_iou: float = 0.5) -> list[dict]:
    """Run the detector on a B×C×H×W batch (eval mode); with ``tta`` also on its mirror, merged by NMS.
    Masks stay box-local (``mask_probs``)."""
    outputs = model(batch, paste_masks=False)
    if tta:
        flipped = model(batch.flip(-1), paste_masks=False)
        limit = int(getattr(model.config, "detections_per_img", 1000))
        outputs = [merge_hflip(o, f, batch.shape[-1], iou=tta_nms_iou, max_detections=limit)
                   for o, f in zip(outputs, flipped)]
    return outputs


def segment_detection_iter(model, tensor: torch.Tensor, plan, *, batch_size: int, device, dtype=None,
                           channels_last: bool = False, params: dict[str, Any], cancel=None, tta: bool = False
                           ) -> Generator[Progress, None, Instances]:
    """The engine's detection path (``cellzoo.infer.engine`` calls it for ``kind == "detection"``).

    ``tensor``: the preprocessed image, padded as ``plan`` says (tile ``k`` reads
    ``tensor[:, y:y + tile_h, x:x + tile_w]``, which starts at image pixel ``(y - halo, x - halo)``).
    """
    del channels_last  # detection heads gain nothing from it
    # autocast only on CUDA: bf16 anchors / box coordinates (CPU autocast) are off by several pixels
    dtype = dtype if torch.device(device).type == "cuda" else None
    score_threshold = float(params.get("score_threshold", 0.5))
    mask_threshold = float(params.get("mask_threshold", 0.5))
    tile_h, tile_w = plan.tile_shape
    if hasattr(model, "fit_proposals_to_tile"):
        model.fit_proposals_to_tile(tile_h * tile_w)
    halo = plan.halo
    positions = plan.positions
    tiles: list[TileDetections] = []
    done = 0
    with torch.inference_mode():
        for start in range(0, len(positions), batch_size):
            check_cancel(cancel)
            group = positions[start:start + batch_size]
            batch = torch.stack([tensor[:, y:y + tile_h, x:x + tile_w] for _r, _c, y, x in group])
            batch = batch.to(device, dtype=torch.float32)
            with autocast(device, dtype):
                outputs = detect_tiles(model, batch, tta=tta, tta_nms_iou=float(params.get("tta_nms_iou", 0.5)))
            for (_r, _c, y, x), det in zip(group, outputs):
                det = _to_numpy(det)
                keep = det["scores"] >= score_threshold
                tiles.append(TileDetections(y - halo, x - halo, tile_h, tile_w, det["boxes"][keep],
                                            det["scores"][keep], det["labels"][keep],
                                            mask_probs=det["mask_probs"][keep]))
            done += len(group)
            yield Progress("tiles", done, len(positions))
    check_cancel(cancel)
    return stitch_tile_detections(tiles, (plan.height, plan.width), model.class_names,
                                  score_threshold=score_threshold, mask_threshold=mask_threshold,
                                  dedup_ioa=float(params.get("dedup_ioa", 0.5)),
                                  min_area=int(params.get("min_area", 5)))
