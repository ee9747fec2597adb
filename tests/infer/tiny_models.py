"""Small real CellModels for engine tests that must not depend on a particular family's weights."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from cellzoo.models.base import CellModel
from cellzoo.types import Instances


@dataclass
class TinyConfig:
    width: int = 8
    seed: int = 0


class TinyDense(CellModel):
    """Three 3×3 convs (receptive field 7 px, so a halo of 4 makes tiling exact) and a 2-class head."""

    family = "tiny"
    kind = "dense"
    Config = TinyConfig
    dense_maps = {"fg": "softmax"}

    def __init__(self, config=None):
        super().__init__(config or TinyConfig())
        torch.manual_seed(self.config.seed)
        w = self.config.width
        self.body = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(w, 2, 3, padding=1))

    @property
    def halo(self) -> int:
        return 4

    @property
    def size_divisor(self) -> int:
        return 8

    @property
    def min_tile(self) -> int:
        return 16

    def preprocess(self, image):
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) / 255.0

    def forward(self, batch):
        return {"fg": self.body(batch)}

    def default_postprocess_params(self):
        return {"threshold": 0.5}

    def postprocess(self, maps, threshold=0.5):
        labels, _ = ndimage.label(maps["fg"][1] > threshold)
        return Instances(labels=labels.astype(np.int32))


class TinyDetector(CellModel):
    """A parameter-free 'detector': each connected bright blob of a tile is one detection."""

    family = "tinydet"
    kind = "detection"
    Config = TinyConfig

    def __init__(self, config=None):
        super().__init__(config or TinyConfig())
        self.dummy = nn.Parameter(torch.zeros(1))

    @property
    def halo(self) -> int:
        return 16

    def preprocess(self, image):
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) / 255.0

    def forward(self, batch):
        results = []
        for tile in batch:
            labels, count = ndimage.label(tile[0].numpy() > 0.5)
            boxes, masks = [], []
            for sl_index, sl in enumerate(ndimage.find_objects(labels), start=1):
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                masks.append((labels == sl_index)[None].astype(np.float32))
            results.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.ones(count, dtype=torch.int64),
                            "scores": torch.linspace(0.9, 0.6, count) if count else torch.zeros(0),
                            "masks": torch.from_numpy(np.stack(masks)) if masks else
                            torch.zeros((0, 1) + tuple(tile.shape[1:]))})
        return results


_TRAINED_STATE: dict = {}
SMALL_REPSNET = {"filters": (8, 16, 32, 64), "align_corners": False}


def trained_repsnet(data_dir):
    """A narrow real RepSNet trained for 30 steps (seeded) on two MoNuSeg training images with the
    real trainer: enough for decisive nucleus maps (~1,300 objects on a test image), cheap enough
    for tests. Trained once per test session; each call returns a fresh copy in eval mode."""
    import imageio.v3 as iio

    from cellzoo.data.sample import Sample
    from cellzoo.models import build_model
    from cellzoo.train import TrainConfig, train

    if "state" not in _TRAINED_STATE:
        images = sorted((data_dir / "monuseg2018" / "images" / "train").glob("*.png"))[:2]
        samples = [Sample(p.stem, iio.imread(p), iio.imread(data_dir / "monuseg2018" / "labels" / "train" / p.name)
                          .astype(np.int32)) for p in images]
        model = build_model("repsnet", SMALL_REPSNET)
        with torch.random.fork_rng(), tempfile.TemporaryDirectory() as scratch:
            config = TrainConfig(epochs=1, steps_per_epoch=30, batch_size=4, crop=128, lr=3e-3, augment="none",
                                 val_fraction=0, scheduler="none", seed=1, device="cpu", out_dir=scratch)
            train(model, samples, [], config)
        _TRAINED_STATE["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    model = build_model("repsnet", SMALL_REPSNET)
    model.load_state_dict(_TRAINED_STATE["state"])
    return model.eval()

