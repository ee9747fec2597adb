"""SCTS through the package's trainer (events, space-filling, validation with PQ + COCO AP, checkpoints,
cancel) and then through the segment engine from the saved checkpoint."""
from __future__ import annotations

import dataclasses

import numpy as np
import tifffile
import torch

from cellzoo.data.sample import Sample
from cellzoo.infer import segment
from cellzoo.models import build_model
from cellzoo.models.scts import SCTSConfig
from cellzoo.train import TrainConfig, train_iter
from cellzoo.types import CancelToken, TrainStep, Validation, run_to_end
from cellzoo.zoo.weights import load_weights

NAMES = ["4dbbb275960ab9e4ec2c66c8d3000f7c70c8dce5112df591b95db84e25efa6e9",
         "602f267432e7a573e1092f1cf48135c82d0fbc8722bc028b9330ec801a40bb18"]


def _samples(shared_data):
    folder = shared_data / "dsb2018" / "test"
    return [Sample(n, tifffile.imread(folder / "images" / f"{n}.tif")[:128, :160],
                   tifffile.imread(folder / "masks" / f"{n}.tif")[:128, :160].astype(np.int32)) for n in NAMES]


def test_scts_trains_validates_checkpoints_and_segments(shared_data, tmp_path):
    torch.manual_seed(0)
    model = build_model("scts", dataclasses.asdict(SCTSConfig.small(mean=(0.0,) * 3, std=(255.0,) * 3,
                                                                   roi_samples_per_image=32)))
    train, val = _samples(shared_data)
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, crop=64, augment="none", space_fill=3,
                         out_dir=str(tmp_path / "run"), device="cpu", max_val_images=1, lr=1e-4)
    events = []
    result = run_to_end(train_iter(model, [train], [val], config), events.append)
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(steps) == 2 and {"semantic", "mask", "rpn_obj", "total"} <= set(steps[0].losses)
    validation = [e for e in events if isinstance(e, Validation)]
    assert len(validation) == 1 and {"pq", "coco_ap", "coco_ap50", "coco_ap75"} <= set(validation[0].metrics)
    assert result.best_path is not None and result.best_path.is_file()
    loaded, meta = load_weights(result.best_path)
    assert meta["family"] == "scts" and "coco_ap50" in meta["metrics"]
    instances = segment(loaded, val.image, device="cpu", amp=False, params={"score_threshold": 0.0})
    assert instances.labels.shape == val.image.shape[:2]

    token = CancelToken()
    token.cancel()
    cancelled = run_to_end(train_iter(model, [train], [val], TrainConfig(
        epochs=1, steps_per_epoch=2, batch_size=1, crop=64, augment="none", out_dir=str(tmp_path / "cancel"),
        device="cpu"), token))
    assert cancelled.cancelled and cancelled.best_path is None
