"""A small real model for engine, trainer and CLI tests."""
from __future__ import annotations

import tempfile

import numpy as np
import torch

_TRAINED_STATE: dict = {}
#: align_corners=False: the translation-equivariant up branch, so tiling is exact (see RepSNetConfig)
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
