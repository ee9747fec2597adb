"""The engine's out-of-memory fallback: on a device allocation failure the tile is halved and the pass
retried, down to the model's min_tile. A GPU is not needed to prove the control flow: the real cellzoo-fluo
model is wrapped so that its forward raises torch's own out-of-memory error (fault injection) for tiles
above a size, exactly where a CUDA allocation would fail."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cellzoo.data.samples import sample_image_path
from cellzoo.infer.engine import OUT_OF_MEMORY, segment_iter
from cellzoo.metrics.instance import detection_scores
from cellzoo.types import Message, Progress, run_to_end
from cellzoo.zoo import load_model


def _fails_above(model, max_side: int | None, times: int | None = None):
    """``model`` (changed in place) raises OUT_OF_MEMORY for inputs larger than ``max_side`` (None: any),
    at most ``times`` times (None: always); returns the list of input sides it refused."""
    refused: list[int] = []
    base = type(model)

    class RunsOutOfMemory(base):
        def forward(self, x, *args, **kwargs):
            side = int(max(x.shape[-2:]))
            if (max_side is None or side > max_side) and (times is None or len(refused) < times):
                refused.append(side)
                raise OUT_OF_MEMORY(f"CUDA out of memory (injected for a {side}-px tile)")
            return super().forward(x, *args, **kwargs)

    model.__class__ = RunsOutOfMemory
    return refused


@pytest.fixture(scope="module")
def sample():
    import tifffile

    return tifffile.imread(sample_image_path())


def test_oom_halves_the_tile_and_says_so(sample):
    reference = run_to_end(segment_iter(load_model("cellzoo-fluo"), sample, device="cpu", amp=False, scale=1.0))
    assert reference.meta["tiles"] == 1 and "oom_fallback" not in reference.meta

    model = load_model("cellzoo-fluo")
    refused = _fails_above(model, max_side=400)
    events = []
    gen = segment_iter(model, sample, device="cpu", amp=False, scale=1.0)
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    fallback = result.meta["oom_fallback"]
    first_tile = max(reference.meta["tile"])
    assert refused[0] == first_tile and fallback["failed_tiles"][0] == first_tile
    assert fallback["tile"] <= 400 and max(result.meta["tile"]) == fallback["tile"] and result.meta["tiles"] > 1
    assert "ran out of cpu memory" in fallback["note"]
    warnings = [e for e in events if isinstance(e, Message)]
    assert warnings and warnings[0].level == "warning" and "retrying" in warnings[0].text
    assert isinstance(events[-1], Progress) and events[-1].done == events[-1].total
    # tiled with blended halos the instances are the same objects as the one-pass result
    matched = detection_scores(reference.labels, result.labels, (0.9,))[0.9]
    assert reference.count > 50
    assert matched["tp"] >= 0.95 * max(reference.count, result.count)


def test_oom_once_retries_and_gives_up_at_min_tile(sample):
    sample = sample[:256, :352]  # smaller: this test is about the retries, not the stitching
    model = load_model("cellzoo-fluo")
    refused = _fails_above(model, max_side=None, times=1)  # a transient failure: one retry suffices
    result = run_to_end(segment_iter(model, sample, device="cpu", amp=False, scale=1.0))
    assert len(refused) == 1 and len(result.meta["oom_fallback"]["failed_tiles"]) == 1 and result.count > 10

    model = load_model("cellzoo-fluo")
    refused = _fails_above(model, max_side=None)  # never fits: halved down to min_tile, then the error
    with pytest.raises(OUT_OF_MEMORY):
        run_to_end(segment_iter(model, sample, device="cpu", amp=False, scale=1.0))
    assert refused[-1] == model.min_tile and refused == sorted(refused, reverse=True) and len(refused) >= 3
    assert issubclass(OUT_OF_MEMORY, torch.cuda.OutOfMemoryError)
