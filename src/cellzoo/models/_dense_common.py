"""Helpers shared by the dense-map families (RepSNet, FullNet): losses, BN folding, dihedral TTA,
and small numpy label-map utilities used by post-processing."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- losses


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-3,
                   ignore_index: int | None = None) -> torch.Tensor:
    """1 − soft Dice per channel, averaged over channels (RepSNet's form, eps 1e-3).

    ``probs``: B×C×H×W probabilities; ``target``: B×H×W class ids in [0, C), or ``ignore_index`` for
    pixels whose class is unknown (left out of every sum). Sums run over the whole batch, as in the original.
    """
    target = target.long()
    if ignore_index is not None:
        valid = (target != ignore_index).unsqueeze(1).to(probs.dtype)
        probs = probs * valid
        target = torch.where(target == ignore_index, torch.zeros_like(target), target)
    onehot = F.one_hot(target, num_classes=probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    if ignore_index is not None:
        onehot = onehot * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None, ignore_index: int = -100) -> torch.Tensor:
    """Multi-class focal loss (1 − p_t)^γ · CE, mean over pixels (p_t from the weighted CE, as the original);
    pixels labelled ``ignore_index`` are left out of the mean."""
    target = target.long()
    ce = F.cross_entropy(logits, target, weight=weight, reduction="none", ignore_index=ignore_index)
    pt = torch.exp(-ce)
    valid = target != ignore_index
    return ((1.0 - pt) ** gamma * ce)[valid].sum() / valid.sum().clamp(min=1)


# ----------------------------------------------------------------------------- re-parameterisation


def fold_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d, out_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding (bias-free) conv kernel.

    ``out_dim`` is the kernel's output-channel axis: 0 for Conv2d, 1 for ConvTranspose2d.
    Returns ``(kernel · γ/σ, β − μ·γ/σ)``.
    """
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std
    shape = [1, 1, 1, 1]
    shape[out_dim] = -1
    return kernel * scale.reshape(shape), bn.bias - bn.running_mean * scale


# ----------------------------------------------------------------------------- test-time augmentation

#: Displacement (dy, dx) that each channel of a direction map measures; RepSNet's distance map
#: is ordered left, right, up, down.
LRUD = ((0, -1), (0, 1), (-1, 0), (1, 0))


def _rotate_vector(v: tuple[int, int], k: int) -> tuple[int, int]:
    # torch.rot90(k=1, dims=(-2, -1)) sends pixel (y, x) to (W-1-x, y): a displacement (dy, dx)
    # becomes (-dx, dy)
    dy, dx = v
    for _ in range(k % 4):
        dy, dx = -dx, dy
    return dy, dx


def direction_permutation(directions: Sequence[tuple[int, int]], k: int, flip: bool) -> list[int]:
    """For a prediction made on ``rot90(flip(x), k)`` and spatially mapped back, entry ``c`` of the
    result is the channel (of the mapped-back map) that measures original direction ``c``."""
    directions = [tuple(d) for d in directions]
    perm = [0] * len(directions)
    for c_t, d_t in enumerate(directions):
        dy, dx = _rotate_vector(d_t, -k)
        if flip:
            dx = -dx
        perm[directions.index((dy, dx))] = c_t
    return perm


def dihedral_transforms() -> list[tuple[int, bool]]:
    """The 8 elements of the dihedral group as (rotations k, horizontal flip first)."""
    return [(k, flip) for flip in (False, True) for k in range(4)]


def dihedral_tta(fn: Callable[[torch.Tensor], Mapping[str, torch.Tensor] | torch.Tensor], x: torch.Tensor,
                 direction_maps: Mapping[str, Sequence[tuple[int, int]]] | None = None,
                 transforms: Sequence[tuple[int, bool]] | None = None):
    """Average ``fn`` over the 8 flips/rotations of ``x`` (B×C×H×W), each output mapped back.

    ``fn`` returns a B×C×H×W tensor or a dict of them (e.g. activated maps). Maps named in
    ``direction_maps`` hold one channel per direction (e.g. RepSNet's distances, :data:`LRUD`);
    their channels are permuted back so that each still measures its original direction.
    Non-square inputs work too (rotated tiles are H↔W swapped; fully convolutional nets accept them).
    """
    direction_maps = dict(direction_maps or {})
    transforms = list(transforms or dihedral_transforms())
    total: dict[str, torch.Tensor] | None = None
    single = False
    for k, flip in transforms:
        xt = torch.flip(x, dims=(-1,)) if flip else x
        xt = torch.rot90(xt, k, dims=(-2, -1))
        out = fn(xt)
        if isinstance(out, torch.Tensor):
            single = True
            out = {"": out}
        back = {}
        for name, y in out.items():
            y = torch.rot90(y, -k, dims=(-2, -1))
            if flip:
                y = torch.flip(y, dims=(-1,))
            if name in direction_maps:
                y = y[:, direction_permutation(direction_maps[name], k, flip)]
            back[name] = y
        if total is None:
            total = {n: v.clone() for n, v in back.items()}
        else:
            for n, v in back.items():
                total[n] += v
    assert total is not None
    result = {n: v / len(transforms) for n, v in total.items()}
    return result[""] if single else result


# ----------------------------------------------------------------------------- label-map utilities


def check_label_map(labels: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D instance label map (H×W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"instance label map must hold integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("instance label map has negative ids; use 0 for background and 1..N for objects")
    if classes is not None and np.shape(classes) != labels.shape:
        raise ValueError(f"class map shape {np.shape(classes)} does not match label map shape {labels.shape}")
    return labels.astype(np.int64, copy=False)


def mean_per_label(values: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Mean of ``values`` inside each label 0..n_labels (vectorised with bincount)."""
    flat = labels.ravel()
    sums = np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n_labels + 1)
    counts = np.bincount(flat, minlength=n_labels + 1)
    return sums / np.maximum(counts, 1)


def class_names_for(num_classes: int, names: Sequence[str] | None) -> list[str]:
    if names:
        names = list(names)
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} entries but num_classes is {num_classes} "
                             "(both count the background as class 0)")
        return names
    if num_classes <= 2:
        return ["background", "nucleus"]
    return ["background"] + [f"class {k}" for k in range(1, num_classes)]


def _offset_rings(radius: float) -> list[np.ndarray]:
    """Integer offsets (dy, dx) with 0 < distance <= radius, grouped by distance, nearest ring first."""
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    dy, dx = dy.ravel(), dx.ravel()
    d2 = dy ** 2 + dx ** 2
    return [np.stack([dy[d2 == v], dx[d2 == v]], 1) for v in np.unique(d2) if 0 < v <= radius ** 2]


def _nearest_ids(flat_source: np.ndarray, centres: np.ndarray, area: np.ndarray, width: int,
                 radius: float) -> np.ndarray:
    """For flat positions ``centres`` of a padded label map, the id of the nearest labelled pixel within
    ``radius`` (0 if none), larger ``area`` first among equally near ones; ring by ring of equal distance."""
    found = np.zeros(centres.size, flat_source.dtype)
    todo = np.arange(centres.size)
    for ring in _offset_rings(radius):
        vals = flat_source[centres[todo, None] + (ring[:, 0] * width + ring[:, 1])]
        pick = area[vals].argmax(1)
        hit = vals[np.arange(todo.size), pick]
        found[todo] = hit
        todo = todo[hit == 0]
        if todo.size == 0:
            break
    return found


def attach_to_nearest(labels: np.ndarray, pixels: np.ndarray, radius: float, area: np.ndarray | None = None,
                      executor=None) -> None:
    """Give each ``pixels`` (bool mask) position the id of the nearest labelled pixel within ``radius``
    (Euclidean), in place; between equally near instances the larger one wins, so the result does not
    depend on the image's orientation. Only candidate pixels are visited, ring by ring of equal
    distance, which is much cheaper than a full-image distance transform with indices.

    ``area``: the pixel count of every id (index = id) when the caller has it already; counted here
    otherwise. ``executor``: a ``concurrent.futures`` executor that takes half of the candidates (the
    halves are independent: both read a padded copy of the labels), for large candidate sets."""
    if not labels.flags.c_contiguous:
        raise ValueError("attach_to_nearest works in place on a C-contiguous label map")
    at = np.flatnonzero(pixels)  # flat positions: cheaper than (row, col) pairs to find and to write back
    if at.size == 0:
        return
    r = int(np.floor(radius))
    # a copy padded by the radius: neighbours outside the image read 0 without bounds checks
    source = np.pad(labels, r)
    width = source.shape[1]
    flat_source = source.ravel()
    if area is None:
        area = np.bincount(flat_source)
    area = area.astype(np.int64)  # a copy: the background entry is zeroed below
    area[0] = 0
    ys, xs = np.divmod(at, labels.shape[1])
    centres = (ys + r) * width + (xs + r)
    if executor is not None and at.size > 20_000:
        half = at.size // 2
        other = executor.submit(_nearest_ids, flat_source, centres[half:], area, width, radius)
        found = np.concatenate([_nearest_ids(flat_source, centres[:half], area, width, radius), other.result()])
    else:
        found = _nearest_ids(flat_source, centres, area, width, radius)
    flat_labels = labels.reshape(-1)  # a view: labels is C-contiguous (checked above)
    flat_labels[at] = np.where(found > 0, found, flat_labels[at])
