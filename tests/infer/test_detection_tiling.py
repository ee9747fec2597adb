"""Cross-tile stitching of detections: objects cut by tile borders come out once."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from cellzoo.infer import plan_tiles, segment
from cellzoo.infer.detection import (TileDetections, deduplicate, merge_hflip, stitch_tile_detections,
                                     tile_crops)
from cellzoo.infer.tiling import reflect_pad
from cellzoo.models import build_model
from cellzoo.models._detection_common import MaskCrop

# 520×696 DSB 2018 test images: many small nuclei / few large ones (larger than the tile overlap)
DENSE = "4dbbb275960ab9e4ec2c66c8d3000f7c70c8dce5112df591b95db84e25efa6e9"
LARGE = "602f267432e7a573e1092f1cf48135c82d0fbc8722bc028b9330ec801a40bb18"


def _gt_tiles(labels: np.ndarray, tile: int, halo: int, rng: np.random.Generator):
    """Per-tile 'detections' made from the GT crops a perfect detector would see in each tile, read
    exactly as the engine reads tiles (reflect padding included, so mirrored ghosts appear too)."""
    plan = plan_tiles(*labels.shape, tile, halo, 32, 128)
    padded = reflect_pad(labels, plan.pad_width())
    th, tw = plan.tile_shape
    tiles = []
    for _r, _c, y, x in plan.positions:
        window = padded[y:y + th, x:x + tw]
        ids = np.unique(window)
        ids = ids[ids != 0]
        masks = np.stack([window == i for i in ids]) if ids.size else np.zeros((0, th, tw), bool)
        boxes = np.zeros((ids.size, 4), np.float32)  # unused by the stitcher (masks carry geometry)
        tiles.append(TileDetections(y - halo, x - halo, th, tw, boxes, rng.uniform(0.6, 1.0, ids.size),
                                    np.ones(ids.size, np.int64), masks))
    return plan, tiles


@pytest.mark.parametrize("name", [DENSE, LARGE])
def test_objects_cut_by_tile_borders_come_out_once(shared_data, name):
    gt = tifffile.imread(shared_data / "dsb2018" / "test" / "masks" / f"{name}.tif").astype(np.int32)
    rng = np.random.default_rng(0)
    plan, tiles = _gt_tiles(gt, tile=192, halo=32, rng=rng)
    assert len(plan) >= 6
    # the case under test really occurs: some tile detections touch an inner tile edge
    n_cut = sum(sum(tile_crops(t, gt.shape, score_threshold=0, mask_threshold=0.5)[1]) for t in tiles)
    assert n_cut > 10
    n_tile_dets = sum(len(t.scores) for t in tiles)
    gt_ids = np.unique(gt)[1:]
    assert n_tile_dets > 1.3 * gt_ids.size  # many objects were seen by several tiles

    result = stitch_tile_detections(tiles, gt.shape, ["background", "nucleus"], score_threshold=0.5)

    assert result.count == gt_ids.size
    for i in gt_ids:  # each GT object is matched by one predicted object with (near) identical mask
        inside = result.labels[gt == i]
        values, counts = np.unique(inside, return_counts=True)
        pred = values[np.argmax(counts)]
        assert pred != 0
        pm, gm = result.labels == pred, gt == i
        iou = (pm & gm).sum() / (pm | gm).sum()
        assert iou > 0.95, (i, iou)
    assert set(result.scores) == set(np.unique(result.labels)[1:])


def test_centre_ownership_would_fail_but_dedup_keeps_the_whole_copy():
    # Hand-made: one 20×20 object at x 90..110; tile A covers x < 100 (sees a 10 px cut piece, centre 95),
    # tile B covers x >= 60 (sees it whole, centre 100).  Both copies are near the seam.
    shape = (64, 200)
    obj = np.zeros(shape, bool)
    obj[20:40, 90:110] = True
    crops = [MaskCrop(20, 90, np.ones((20, 10), bool), 0.9, 1), MaskCrop(20, 90, np.ones((20, 20), bool), 0.8, 1)]
    kept = deduplicate(crops, [True, False], shape)
    assert len(kept) == 1 and kept[0].mask.shape == (20, 20)
    # two cut halves of an object larger than the overlap are merged into one
    halves = [MaskCrop(0, 0, np.ones((30, 60), bool), 0.9, 1), MaskCrop(0, 40, np.ones((30, 60), bool), 0.7, 1)]
    merged = deduplicate(halves, [True, True], (30, 120))
    assert len(merged) == 1 and merged[0].mask.shape == (30, 100) and merged[0].mask.all()
    # two distinct neighbours touching along one column are both kept
    neighbours = [MaskCrop(0, 0, np.ones((10, 10), bool), 0.9, 1), MaskCrop(0, 9, np.ones((10, 10), bool), 0.8, 1)]
    assert len(deduplicate(neighbours, [False, False], (10, 30))) == 2


def test_hflip_tta_merge_maps_back_and_suppresses_the_mirror_copy():
    width = 100
    mask = torch.zeros(1, 20, width)
    mask[0, 5:15, 10:30] = 1
    det = {"boxes": torch.tensor([[10.0, 5, 30, 15]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([1]), "masks": mask}
    # the mirror image's detector finds the same object at x 70..90 (width - 30 .. width - 10), and one more
    fmask = torch.zeros(2, 20, width)
    fmask[0, 5:15, 70:90] = 1
    fmask[1, 0:4, 0:4] = 1
    flipped = {"boxes": torch.tensor([[70.0, 5, 90, 15], [0, 0, 4, 4]]), "scores": torch.tensor([0.8, 0.7]),
               "labels": torch.tensor([1, 1]), "masks": fmask}
    merged = merge_hflip(det, flipped, width)
    assert merged["boxes"].tolist() == [[10.0, 5, 30, 15], [96.0, 0, 100, 4]]
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert merged["masks"][1, 0:4, 96:100].all() and merged["masks"][1].sum() == 16


@pytest.mark.parametrize("family", ["cascade", "scts"])
def test_real_small_model_runs_tiled_through_the_engine(shared_data, family):
    from cellzoo.models.cascade import CascadeConfig
    from cellzoo.models.scts import SCTSConfig
    import dataclasses

    torch.manual_seed(0)
    small = dict(tile_overlap=32, rpn_pre_nms_test=100, rpn_post_nms_test=50)
    cfg = CascadeConfig.small(**small) if family == "cascade" else SCTSConfig.small(**small)
    model = build_model(family, dataclasses.asdict(cfg))
    image = tifffile.imread(sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0])
    image = image[:200, :230]
    events = []
    result = segment(model, image, tile=192, device="cpu", amp=False, tta=True, batch_size=2,
                     params={"score_threshold": 0.0}, on_event=events.append)
    assert result.labels.shape == image.shape[:2]
    assert result.meta["tiles"] >= 4
    assert result.count > 0  # an untrained detector still proposes objects at threshold 0
    assert set(result.scores) == set(np.unique(result.labels)[1:])
