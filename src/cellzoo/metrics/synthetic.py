"""Reproducible imperfect copies of instance maps, for benchmarks, tests and sanity checks.

``perturb_labels`` turns a GT map into a plausible "prediction" with the usual errors of
nucleus segmenters: shrunken outlines, merged neighbours, split nuclei and missed nuclei.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential


def perturb_labels(labels: np.ndarray, seed: int = 0, *, erode: float = 0.3, merge: float = 0.05,
                   split: float = 0.05, drop: float = 0.03) -> np.ndarray:
    """Return a perturbed copy of a 2-D instance map (ids relabelled 1..N).

    Fractions of the objects: ``erode`` lose their outer pixel ring, ``merge`` absorb a
    touching or nearby neighbour, ``split`` are cut in two at their centroid column,
    ``drop`` vanish. Same ``seed`` -> same output.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"perturb_labels needs a 2-D instance map, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    out = labels.astype(np.int64, copy=True)
    ids = np.unique(out)
    ids = ids[ids != 0]
    if ids.size == 0:
        return out.astype(np.int32)
    lut = np.arange(int(out.max()) + 1, dtype=np.int64)

    # merge: an object takes the id of the neighbour found most often within 3 px of it
    grown = ndimage.grey_dilation(out, size=7)
    near = (out > 0) & (grown > 0) & (grown != out)
    a, b = out[near], grown[near]
    if a.size:
        pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1), axis=0)
        chosen = pairs[rng.random(len(pairs)) < merge * len(ids) / max(len(pairs), 1)]
        for small, big in chosen:  # union-find would be overkill for a test fixture
            lut[lut == big] = lut[small]
    out = lut[out]

    # erode: drop the outer ring of a random subset
    eroded_ids = ids[rng.random(ids.size) < erode]
    edge = ndimage.grey_erosion(out, size=3) != ndimage.grey_dilation(out, size=3)
    out[edge & np.isin(out, eroded_ids)] = 0

    # split: pixels left of the centroid get a new id
    present = np.unique(out)
    present = present[present != 0]
    split_ids = present[rng.random(present.size) < split]
    if split_ids.size:
        cols = np.broadcast_to(np.arange(out.shape[1]), out.shape)
        cx = np.zeros(int(out.max()) + 1)
        cx[present] = ndimage.mean(cols, out, present)
        new_id = np.zeros(int(out.max()) + 1, dtype=np.int64)
        new_id[split_ids] = out.max() + 1 + np.arange(split_ids.size)
        left = (new_id[out] > 0) & (cols < cx[out])
        out[left] = new_id[out[left]]

    # drop: missed objects
    present = np.unique(out)
    present = present[present != 0]
    out[np.isin(out, present[rng.random(present.size) < drop])] = 0
    return relabel_sequential(out)[0].astype(np.int32)
