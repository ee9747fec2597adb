"""RepSNet (Xiong et al., arXiv 2505.05073; code luckyrz0/RepSNet): a re-parameterisable RepVGG U-Net
with two decoders. Decoder 1 predicts nucleus / type maps, decoder 2 the square root of each nucleus
pixel's distance to its own boundary going left, right, up and down; boundaries come from a vote.

Parameter names equal the authors' checkpoint keys (train form ``conv3_bn/conv1_bn/bn``, deploy form
``conv_reparam``/``dconv_reparam``), so their ``RepSNet_S.pth``/``RepSNet_L.pth`` load after stripping
wrappers. Differences from the original, on purpose:

* The boundary-vote loss of the original is computed on boolean tensors and has no gradient; it is
  **dropped** here (the other loss terms are exactly the ones that trained the published model).
* Post-processing labels only predicted-foreground, non-boundary pixels, so no component has to be
  assumed to be the background: the original subtracted 1 from all labels and so deleted the nucleus
  that touches the top-left corner.
* ``max_size`` is a parameter (the original's 1000 px drops large nuclei at 40x).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ..types import Instances
from ._dense_common import (LRUD, attach_to_nearest, check_label_map, class_names_for, direction_permutation,
                            focal_loss, fold_bn, soft_dice_loss)
from .base import CellModel

__all__ = ["RepSNetConfig", "RepSNet", "RepVggUnit", "RepUpsample", "distance_targets", "boundary_votes",
           "widen_repsnet"]

DEFAULT_FILTERS = {"S": (64, 128, 256, 512), "L": (96, 192, 384, 768, 1536)}

#: Loss weights of RepSNet_S's ``get_loss`` (L uses type_focal 3); the vote loss is dropped (see above).
DEFAULT_LOSS_WEIGHTS = {"nucleus_ce": 1.0, "nucleus_dice": 1.0, "type_ce": 1.0, "type_dice": 1.0,
                        "type_focal": 2.0, "distance": 1.0}


#: type-target value for nuclei whose class is unknown (ignored by the type losses)
UNKNOWN_TYPE = 255


@dataclass
class RepSNetConfig:
    """``variant`` "S" (4 stages, output stride 8) or "L" (5 stages, stride 16); ``filters`` one width per
    stage (empty = the authors' defaults); ``num_classes`` counts the background, and a type head exists
    only when it is > 2 (as in RepSNet_S). ``boundary_threshold`` T: 3 CoNIC/PanNuke, 4 CoNSeP,
    5 Kumar/CPM17/DSB (authors' values)."""

    variant: str = "S"
    filters: tuple[int, ...] = ()
    num_classes: int = 2
    in_channels: int = 3
    deploy: bool = False
    #: the authors' bilinear ×2 branch uses align_corners=True, whose sampling grid depends on the input
    #: size, so tiled and whole-image outputs differ (tiled-vs-single AJI 0.32 on MoNuSeg with a briefly
    #: trained narrow model); False is translation-equivariant and makes tiling exact (AJI 1.0).
    align_corners: bool = True
    class_names: tuple[str, ...] | None = None
    #: 1 = the authors' network at full resolution. 2 = a faster variant of ours: pixels are folded into
    #: channels on entry (pixel_unshuffle, 3 -> 12 channels at half resolution), the whole U-Net runs at
    #: half resolution and the head maps are upsampled bilinearly back to full size. Nuclei at 40x are
    #: 15-40 px across, so half resolution keeps them resolvable, and the full-resolution layers, which
    #: are memory-bound on a CPU, disappear (about 4x fewer FLOPs and activations per image pixel).
    input_stride: int = 1
    boundary_threshold: float = 4.0
    min_size: int = 8
    max_size: int = 5000
    reattach_distance: float = 3.0
    recover_overlap: float = 0.1
    min_foreground_fraction: float = 0.5
    foreground_threshold: float = 0.5
    #: size filter of the recovered components (None: min_size); see repsnet_postprocess
    recover_min_size: int | None = None
    type_class_weights: tuple[float, ...] | None = None
    focal_gamma: float = 2.0
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))

    def __post_init__(self) -> None:
        self.variant = str(self.variant).upper()
        if self.variant not in DEFAULT_FILTERS:
            raise ValueError(f"RepSNet variant must be 'S' or 'L', got {self.variant!r}")
        self.filters = tuple(int(f) for f in (self.filters or DEFAULT_FILTERS[self.variant]))
        want = len(DEFAULT_FILTERS[self.variant])
        if len(self.filters) != want or min(self.filters) < 1:
            raise ValueError(f"RepSNet_{self.variant} needs {want} positive stage widths in 'filters', "
                             f"got {self.filters}")
        if self.input_stride not in (1, 2, 4):
            raise ValueError(f"RepSNet input_stride must be 1, 2 or 4, got {self.input_stride!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {self.num_classes}")
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)
            class_names_for(self.num_classes, self.class_names)  # validates the length
        if self.type_class_weights is not None:
            self.type_class_weights = tuple(float(w) for w in self.type_class_weights)
            if len(self.type_class_weights) != self.num_classes:
                raise ValueError(f"type_class_weights needs {self.num_classes} values (one per class incl. "
                                 f"background), got {len(self.type_class_weights)}")
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **dict(self.loss_weights)}


# ----------------------------------------------------------------------------- building blocks


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class _DConvBN(nn.Sequential):
    def __init__(self, channels: int, kernel: int, padding: int) -> None:
        super().__init__()
        self.dconv = nn.ConvTranspose2d(channels, channels, kernel, 2, padding, output_padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)


class RepVggUnit(nn.Module):
    """relu(conv3x3+BN + conv1x1+BN [+ BN identity when in==out and stride 1]); fuses into one 3×3 conv."""

    def __init__(self, cin: int, cout: int, stride: int = 1, deploy: bool = False) -> None:
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        if deploy:
            self.conv_reparam = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
        else:
            self.conv3_bn = _ConvBN(cin, cout, 3, stride, 1)
            self.conv1_bn = _ConvBN(cin, cout, 1, stride, 0)
            self.bn = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    @property
    def deployed(self) -> bool:
        return hasattr(self, "conv_reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            # in place: the conv output is a fresh tensor, and relu's backward needs only its own output
            return F.relu(self.conv_reparam(x), inplace=True)
        out = self.conv3_bn(x) + self.conv1_bn(x)
        if self.bn is not None:
            out = out + self.bn(x)
        return F.relu(out)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deployed:
            return
        kernel, bias = fold_bn(self.conv3_bn.conv.weight, self.conv3_bn.bn)
        k1, b1 = fold_bn(self.conv1_bn.conv.weight, self.conv1_bn.bn)
        kernel = kernel + F.pad(k1, [1, 1, 1, 1])
        bias = bias + b1
        if self.bn is not None:
            identity = torch.zeros_like(kernel)
            identity[torch.arange(self.cin), torch.arange(self.cin), 1, 1] = 1.0
            ki, bi = fold_bn(identity, self.bn)
            kernel, bias = kernel + ki, bias + bi
        fused = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, bias=True).to(kernel)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        del self.conv3_bn, self.conv1_bn, self.bn
        self.conv_reparam = fused


class RepUpsample(nn.Module):
    """relu(tconv3x3+BN + tconv1x1+BN + bilinear×2), all stride 2; the two transposed convs fuse into one."""

    def __init__(self, channels: int, deploy: bool = False, align_corners: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.align_corners = align_corners
        if deploy:
            self.dconv_reparam = nn.ConvTranspose2d(channels, channels, 3, 2, 1, output_padding=1, bias=True)
        else:
            self.dconv3_bn = _DConvBN(channels, 3, 1)
            self.dconv1_bn = _DConvBN(channels, 1, 0)

    @property
    def deployed(self) -> bool:
        return hasattr(self, "dconv_reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=self.align_corners)
        if self.deployed:
            return F.relu(self.dconv_reparam(x).add_(up), inplace=True)
        return F.relu(self.dconv3_bn(x) + self.dconv1_bn(x) + up)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deployed:
            return
        # transposed-conv kernels are [in, out, k, k]: BN scales dim 1; the 1×1 tap lands on the
        # 3×3 kernel's centre (padding 1 vs 0 keeps both outputs aligned)
        kernel, bias = fold_bn(self.dconv3_bn.dconv.weight, self.dconv3_bn.bn, out_dim=1)
        k1, b1 = fold_bn(self.dconv1_bn.dconv.weight, self.dconv1_bn.bn, out_dim=1)
        fused = nn.ConvTranspose2d(self.channels, self.channels, 3, 2, 1, output_padding=1, bias=True).to(kernel)
        fused.weight.copy_(kernel + F.pad(k1, [1, 1, 1, 1]))
        fused.bias.copy_(bias + b1)
        del self.dconv3_bn, self.dconv1_bn
        self.dconv_reparam = fused


def _stage(units: list[tuple[int, int, int]], deploy: bool) -> nn.Sequential:
    return nn.Sequential(*[RepVggUnit(cin, cout, stride, deploy) for cin, cout, stride in units])


class _Encoder(nn.Module):
    def __init__(self, cin: int, filters: tuple[int, ...], variant: str, deploy: bool) -> None:
        super().__init__()
        # stage names/order as in the authors' code: S has downsample_1..4, L adds a full-res
        # downsample_0 and a 6-unit stage 3
        first = 0 if variant == "L" else 1
        self.names: list[str] = []
        prev = cin
        for i, width in enumerate(filters):
            name = f"downsample_{first + i}"
            if i == 0:
                units = [(prev, width, 1), (width, width, 1)]
            else:
                extra = 4 if (variant == "L" and i == 3) else 1
                units = [(prev, width, 1), (width, width, 2)] + [(width, width, 1)] * extra
            self.add_module(name, _stage(units, deploy))
            self.names.append(name)
            prev = width

    def forward(self, x: torch.Tensor, skip_first_unit: bool = False) -> list[torch.Tensor]:
        """``skip_first_unit``: ``x`` already went through the first stage's first unit (the folded stem)."""
        feats = []
        for index, name in enumerate(self.names):
            stage = getattr(self, name)
            x = stage[1:](x) if index == 0 and skip_first_unit else stage(x)
            feats.append(x)
        return feats


class _Decoder(nn.Module):
    def __init__(self, filters: tuple[int, ...], deploy: bool, align_corners: bool = True) -> None:
        super().__init__()
        self.steps = len(filters) - 1
        for j in range(1, self.steps + 1):
            deep, skip = filters[-j], filters[-j - 1]
            self.add_module(f"upsample_{j}", RepUpsample(deep, deploy, align_corners))
            self.add_module(f"up_repvgg_{j}", RepVggUnit(deep + skip, skip, 1, deploy))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for j in range(1, self.steps + 1):
            x = getattr(self, f"upsample_{j}")(x)
            x = torch.cat([x, feats[-j - 1]], dim=1)
            x = getattr(self, f"up_repvgg_{j}")(x)
        return x


# ----------------------------------------------------------------------------- targets / votes (numpy)


def _run_ranks(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For keys that are grouped (equal keys contiguous), return each element's 1-based rank within its
    group and its group's size."""
    n = keys.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group = np.repeat(np.arange(starts.size), sizes)
    rank = np.arange(n) - starts[group] + 1
    return rank, sizes[group]


def distance_targets(labels: np.ndarray) -> np.ndarray:
    """4×H×W float32 distances (not yet square-rooted), channels left, right, up, down.

    As the authors' loader: for each instance and each row it occupies, its pixels in that row are
    numbered 1..n from the left (n..1 from the right), counting only that instance's pixels (gaps of a
    concave shape are skipped), so the edge pixel itself has distance 1. Same per column for up/down.
    Vectorised: a stable sort groups pixels by (row, instance) in column order; ranks within groups
    give the counts.
    """
    labels = check_label_map(labels)
    h, w = labels.shape
    out = np.zeros((4, h, w), np.float32)
    n_ids = int(labels.max()) + 1
    ys, xs = np.nonzero(labels)  # raster order: by row, then column
    ids = labels[ys, xs]
    order = np.argsort(ys * n_ids + ids, kind="stable")
    rank, size = _run_ranks((ys * n_ids + ids)[order])
    out[0, ys[order], xs[order]] = rank
    out[1, ys[order], xs[order]] = size - rank + 1
    order = np.lexsort((ys, ids, xs))  # by column, then id, then row
    rank, size = _run_ranks((xs * n_ids + ids)[order])
    out[2, ys[order], xs[order]] = rank
    out[3, ys[order], xs[order]] = size - rank + 1
    return out


def _erode3x3(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by a 3×3 square, outside the image counting as set (``binary_erosion(mask,
    np.ones((3, 3)), border_value=1)``) as two separable passes of shifted ANDs: 0.2 ms instead of 4.6 ms
    per megapixel here, and this runs once per image."""
    padded = np.pad(mask, 1, constant_values=True)
    rows = padded[:, :-2] & padded[:, 1:-1] & padded[:, 2:]
    return rows[:-2] & rows[1:-1] & rows[2:]


def _vote_counts(planes: np.ndarray, flat_fg: np.ndarray, ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int],
                 channels: tuple[int, ...]) -> np.ndarray:
    """Votes (int64, flat H·W) cast by the foreground pixels ``flat_fg`` along the given distance channels."""
    h, w = shape
    flat = np.empty((len(channels), flat_fg.size), np.int64)
    # one channel at a time: a 1-D take per plane is ~1.5x faster than indexing the 4×N array by columns
    for row, channel in enumerate(channels):
        sign, limit = ((-1, w), (1, w), (-1, h), (1, h))[channel]
        d = planes[channel].take(flat_fg).astype(np.float32, copy=False)
        np.multiply(d, d, out=d)
        d += 0.5
        step = np.floor(d, out=d).astype(np.int64) - 1  # the boundary pixel is d - 1 steps away
        position = (xs if channel < 2 else ys) + sign * step
        np.clip(position, 0, limit - 1, out=position)
        flat[row] = ys * w + position if channel < 2 else position * w + xs
    return np.bincount(flat.ravel(), minlength=h * w)


def boundary_votes(sqrt_distances: np.ndarray, foreground: np.ndarray, executor=None) -> np.ndarray:
    """Vote map (int32 H×W): 1 on the inner contour of ``foreground`` plus, for every foreground pixel,
    one vote at each of the 4 boundary positions its predicted distances point to.

    Hand-written because no library does this scatter: np.bincount over flat indices accumulates the
    votes (duplicates counted), like the original's ``torch.unique(..., return_counts)``. ``executor``: a
    ``concurrent.futures`` executor that counts the up/down votes while this thread counts left/right.
    """
    h, w = foreground.shape
    votes = (foreground & ~_erode3x3(foreground)).astype(np.int32)
    flat_fg = np.flatnonzero(foreground)
    if flat_fg.size == 0:
        return votes
    ys, xs = np.divmod(flat_fg, w)
    planes = sqrt_distances.reshape(4, -1)
    if executor is not None and flat_fg.size > 50_000:
        up_down = executor.submit(_vote_counts, planes, flat_fg, ys, xs, (h, w), (2, 3))
        counts = _vote_counts(planes, flat_fg, ys, xs, (h, w), (0, 1))
        counts += up_down.result()
    else:
        counts = _vote_counts(planes, flat_fg, ys, xs, (h, w), (0, 1, 2, 3))
    votes += counts.reshape(h, w)  # int64 into int32 in place: no pixel gets near 2**31 votes
    return votes


_CROSS = ndimage.generate_binary_structure(2, 1)


def _argmax_channels(prob: np.ndarray, at: np.ndarray | None, first: int = 0) -> np.ndarray:
    """Index of the largest of channels ``first``… of a C×H×W map at the flat pixel positions ``at`` (every
    pixel, flattened, when ``at`` is None).

    A running comparison over contiguous rows: numpy's argmax over the leading axis of a C×N array walks
    it with stride N and took 13 ms per megapixel here, this a few."""
    rows = prob.reshape(prob.shape[0], -1)
    best = rows[first].copy() if at is None else rows[first].take(at)
    index = np.full(best.size, first, np.int64)
    for channel in range(first + 1, prob.shape[0]):
        value = rows[channel] if at is None else rows[channel].take(at)
        # strict: ties keep the lower channel, as argmax does; copyto/maximum instead of boolean-mask
        # assignments, which cost several times more here
        np.copyto(index, channel, where=value > best)
        np.maximum(best, value, out=best)
    return index


_HELPER: tuple[int, ThreadPoolExecutor] | None = None


def _helper_thread() -> ThreadPoolExecutor:
    """One worker thread for the post-processing steps that do not depend on the instance chain. numpy and
    scipy.ndimage release the GIL in these loops, so on a 2-core CPU they run beside the chain (1024²
    MoNuSeg maps: 63 -> 42 ms with it). Its tasks never wait on other tasks, so concurrent callers only
    queue. Re-created after a fork, whose child has the executor but not its thread."""
    global _HELPER
    if _HELPER is None or _HELPER[0] != os.getpid():
        _HELPER = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="repsnet-postprocess"))
    return _HELPER[1]


def _independent_maps(foreground: np.ndarray, type_prob: np.ndarray | None):
    """The foreground's 4-connected components (with their count and sizes) and, for typed models, every
    pixel's most likely foreground type: inputs of the recovery and typing steps that need nothing from
    the instance chain."""
    components, count = ndimage.label(foreground, structure=_CROSS)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    types = None if type_prob is None else _argmax_channels(type_prob, None, first=1)
    return (components, count, sizes), types


def _filter_sizes(labels: np.ndarray, n: int, min_size: int, max_size: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Components of ``min_size`` < area <= ``max_size`` renumbered 1..k: (labels, k, area of each new id)."""
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = (sizes > min_size) & (sizes <= max_size)
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[labels], int(keep.sum()), np.r_[0, sizes[keep]]


def _hole_fill(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background pixels to fill (flat positions, ids): 4-connected background components that do not reach
    the image border and touch a single instance. Reads ``labels`` only."""
    h, w = labels.shape
    none = np.zeros(0, np.int64), np.zeros(0, labels.dtype)
    empty, k = ndimage.label(labels == 0, structure=_CROSS)
    if not k:
        return none
    border = np.unique(np.r_[empty[0], empty[-1], empty[:, 0], empty[:, -1]])
    is_hole = np.ones(k + 1, bool)
    is_hole[border] = False
    is_hole[0] = False
    hole_at = np.flatnonzero(is_hole[empty])
    if not hole_at.size:
        return none
    hy, hx = np.divmod(hole_at, w)
    hole_id = empty.ravel()[hole_at]
    lowest = np.full(k + 1, np.iinfo(np.int32).max, np.int64)
    highest = np.zeros(k + 1, np.int64)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        near = labels[np.clip(hy + dy, 0, h - 1), np.clip(hx + dx, 0, w - 1)].astype(np.int64)
        np.minimum.at(lowest, hole_id, np.where(near > 0, near, lowest[hole_id]))
        np.maximum.at(highest, hole_id, near)
    single = (lowest == highest) & (highest > 0)
    fill = single[hole_id]
    return hole_at[fill], highest[hole_id[fill]].astype(labels.dtype)


def repsnet_postprocess(nucleus_prob: np.ndarray, sqrt_distances: np.ndarray, type_prob: np.ndarray | None,
                        *, boundary_threshold: float = 4.0, min_size: int = 8, max_size: int = 5000,
                        reattach_distance: float = 3.0, recover_overlap: float = 0.1,
                        min_foreground_fraction: float = 0.5, foreground_threshold: float = 0.5,
                        recover_min_size: int | None = None,
                        ) -> tuple[np.ndarray, np.ndarray | None, dict[int, float]]:
    """Instances from RepSNet maps; returns (labels int32, per-instance class array or None, scores).

    ``recover_min_size`` (default ``min_size``): the size filter of the recovered foreground components. They
    are whole isolated objects, unlike the pieces the boundary split leaves behind, so small nuclei
    (fluorescence) can be kept by a lower bound here without keeping those fragments."""
    recover_min_size = min_size if recover_min_size is None else recover_min_size
    foreground = nucleus_prob > foreground_threshold
    helper = _helper_thread()
    boundary = boundary_votes(sqrt_distances, foreground, executor=helper) >= boundary_threshold
    # queued after the votes (which use the helper themselves); needed only from the recovery step on
    side = helper.submit(_independent_maps, foreground, type_prob)
    # 4-connected components of foreground pixels that are not boundary; restricting to the
    # foreground keeps the background out, so no component needs to be discarded as "background"
    labels, n = ndimage.label(foreground & ~boundary, structure=_CROSS)
    labels, n, area = _filter_sizes(labels, n, min_size, max_size)
    # re-attach boundary pixels to the nearest instance pixel within reattach_distance
    attach_to_nearest(labels, boundary & (labels == 0), reattach_distance, area, executor=helper)
    # recover nuclei the boundaries missed: foreground components mostly not covered by instances
    (comps, m, sizes), pixel_types = side.result()
    if m:
        covered = np.bincount(comps[labels > 0], minlength=m + 1)
        new = (sizes > recover_min_size) & (sizes <= max_size) & (covered < recover_overlap * sizes)
        new[0] = False
        if new.any():
            lut = np.zeros(m + 1, np.int32)
            lut[new] = n + np.arange(1, int(new.sum()) + 1)
            # only uncovered foreground can be filled: look up those few pixels, not the whole image
            open_fg = np.flatnonzero(foreground & (labels == 0))
            ids = lut[comps.ravel()[open_fg]]
            labels.ravel()[open_fg[ids > 0]] = ids[ids > 0]
            n += int(new.sum())
    # drop stray pixels that have no 4-neighbour of their own instance
    padded = np.pad(labels, 1)
    same = ((padded[:-2, 1:-1] == labels) | (padded[2:, 1:-1] == labels)
            | (padded[1:-1, :-2] == labels) | (padded[1:-1, 2:] == labels))
    labels[~same] = 0
    # fill holes: background components that do not reach the image border and touch a single instance
    # (as per-instance binary_fill_holes in the original; a gap between two nuclei stays background). Found by
    # the helper while this thread gathers the statistics of the pixels labelled so far; the hole pixels'
    # share is added afterwards (holes only take ids that exist already).
    holes = helper.submit(_hole_fill, labels)
    # per-instance statistics with one bincount each (ids may have gaps here), over labelled pixels only
    # (about a quarter of the image in dense tissue)
    flat = labels.ravel()
    at = np.flatnonzero(flat)
    ids = flat[at]
    n = int(ids.max()) if ids.size else 0
    fg_flat, prob_flat = foreground.ravel(), nucleus_prob.ravel()

    def sums(pixel_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Per id: pixel count, foreground pixel count, summed nucleus probability (3 × (n + 1))."""
        return np.stack([np.bincount(pixel_ids, minlength=n + 1),
                         np.bincount(pixel_ids[fg_flat.take(positions)], minlength=n + 1),
                         np.bincount(pixel_ids, weights=prob_flat.take(positions), minlength=n + 1)])

    totals = sums(ids, at)
    hole_at, hole_ids = holes.result()
    if hole_at.size:
        flat[hole_at] = hole_ids
        totals += sums(hole_ids, hole_at)
        at, ids = np.concatenate([at, hole_at]), np.concatenate([ids, hole_ids])
    area, fg_count, score_sum = totals
    type_votes = None
    if type_prob is not None:
        # The nucleus map decides which instances exist; the type map only names them, by the majority of
        # each pixel's most likely *foreground* type. (Requiring type votes dropped every nucleus a model
        # called "background" in its type map, which a typed model trained partly on untyped data such as
        # MoNuSeg does: MoNuSeg validation AJI fell to 0.02.) Counted in the helper beside the renumbering.
        ncls = type_prob.shape[0]
        type_votes = helper.submit(lambda: np.bincount(ids.astype(np.int64) * ncls + pixel_types.take(at),
                                                       minlength=(n + 1) * ncls).reshape(n + 1, ncls))
    keep = (area > 0) & (fg_count / np.maximum(area, 1) > min_foreground_fraction)
    keep[0] = False
    score_all = score_sum / np.maximum(area, 1)
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    flat[at] = lut[ids]  # renumber the labelled pixels only (labels is this function's own array)
    scores = {int(lut[i]): float(score_all[i]) for i in np.flatnonzero(keep)}
    classes = None if type_votes is None else type_votes.result().argmax(1)
    if classes is not None:
        classes = np.r_[0, classes[keep]].astype(np.uint8)
    return labels, classes, scores


# ----------------------------------------------------------------------------- the model


class RepSNet(CellModel):
    family: ClassVar[str] = "repsnet"
    kind: ClassVar[str] = "dense"
    Config: ClassVar[type] = RepSNetConfig
    #: channels of the "distance" map measure these (dy, dx) directions (for dihedral TTA)
    direction_maps: ClassVar[dict[str, tuple]] = {"distance": LRUD}

    def __init__(self, config: RepSNetConfig | None = None) -> None:
        config = config or RepSNetConfig()
        super().__init__(config)
        c = config
        self.encoder = _Encoder(c.in_channels * c.input_stride ** 2, c.filters, c.variant, c.deploy)
        self.decoder1 = _Decoder(c.filters, c.deploy, c.align_corners)
        self.decoder2 = _Decoder(c.filters, c.deploy, c.align_corners)
        width = c.filters[0]
        # head registration order follows the authors' classes (S: nucleus, distance, type;
        # L: nucleus, type, distance) so state_dict order matches their checkpoints too
        self.nucleus_map = nn.Sequential(nn.Conv2d(width, 2, 1))
        if c.variant == "L" and self.has_type_head:
            self.type_map = nn.Sequential(nn.Conv2d(width, c.num_classes, 1))
        self.boundary_distance_map = nn.Sequential(nn.Conv2d(width, 4, 1), nn.ReLU())
        if c.variant == "S" and self.has_type_head:
            self.type_map = nn.Sequential(nn.Conv2d(width, c.num_classes, 1))
        if c.type_class_weights is not None:
            self.register_buffer("type_class_weights", torch.tensor(c.type_class_weights, dtype=torch.float32),
                                 persistent=False)
        else:
            self.type_class_weights = None

    # ------------------------------------------------------------------ geometry
    @property
    def has_type_head(self) -> bool:
        return self.config.num_classes > 2

    @property
    def halo(self) -> int:
        # the receptive field grows with the input stride
        return (32 if self.config.variant == "S" else 64) * self.config.input_stride

    @property
    def size_divisor(self) -> int:
        return 2 ** (len(self.config.filters) - 1) * self.config.input_stride

    @property
    def output_stride(self) -> int:
        return self.config.input_stride

    @property
    def inference_bytes_per_pixel(self) -> float:
        """Peak memory per input pixel for the engine's tile-size choice, about twice what was measured
        (cellzoo-he 138 B/px at 2048², cellzoo-fluo 348 B/px at 1024², post-processing included): encoder
        features kept for the skips plus one decoder's concatenation, fp32, at 1/stride², and the
        full-resolution output maps with their copies."""
        f = self.config.filters
        features = 2 * sum(width / 4 ** level for level, width in enumerate(f)) + 3 * f[0]
        outputs = 2 + 4 + (self.config.num_classes if self.has_type_head else 0)
        return 4.0 * features / self.config.input_stride ** 2 + 12.0 * outputs + 64.0

    @property
    def min_tile(self) -> int:
        # keep at least 64 px of each tile outside the halo on both sides, else tiling degenerates
        return -(-(2 * self.halo + 64) // self.size_divisor) * self.size_divisor

    @property
    def class_names(self) -> list[str]:
        return class_names_for(self.config.num_classes, self.config.class_names)

    @property
    def dense_maps(self) -> dict[str, str]:  # type: ignore[override]
        maps = {"nucleus": "softmax", "distance": "identity"}
        if self.has_type_head:
            maps["type"] = "softmax"
        return maps

    # ------------------------------------------------------------------ inference
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] != self.config.in_channels:
            raise ValueError(f"RepSNet expects an H×W×{self.config.in_channels} image, got shape {image.shape}")
        # values stay on 0–255: the network divides by 255 itself, as the authors' model does
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def forward(self, batch: torch.Tensor, full_resolution: bool = True) -> dict[str, torch.Tensor]:
        """Raw maps of a N×C×H×W batch on 0–255. ``full_resolution=False`` (with ``input_stride`` > 1) leaves
        them at 1/input_stride: the engine upsamples only the tile cores it keeps (see ``output_stride``)."""
        h, w = batch.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"RepSNet_{self.config.variant} needs height and width divisible by "
                             f"{self.size_divisor}, got {h}×{w}; pad or tile the image")
        stride = self.config.input_stride
        first_stage = getattr(self.encoder, self.encoder.names[0])
        if first_stage[0].deployed and not self.training:
            feats = self.encoder(self._folded_stem(batch, first_stage[0].conv_reparam), skip_first_unit=True)
        else:
            x = batch / 255.0
            if stride > 1:
                x = F.pixel_unshuffle(x, stride)
            feats = self.encoder(x)
        x1 = self.decoder1(feats)
        x2 = self.decoder2(feats)
        distance_conv, distance_relu = self.boundary_distance_map
        raw_distance = distance_conv(x2)
        out = {"nucleus": self.nucleus_map(x1), "distance": distance_relu(raw_distance)}
        if self.training:
            # the loss fits nucleus pixels on the pre-ReLU output, so a channel pushed below zero still gets
            # a gradient (with the ReLU output alone a channel can die: it happened to the "right" distance
            # of a CPU-trained model, every pixel then voted for its own left neighbour as boundary)
            out["distance_raw"] = raw_distance
        if self.has_type_head:
            out["type"] = self.type_map(x1)
        if stride > 1 and full_resolution:
            out = {name: F.interpolate(value, scale_factor=stride, mode="bilinear", align_corners=False)
                   for name, value in out.items()}
        return out

    def _folded_stem(self, batch: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """The first fused unit with the /255 and the pixel_unshuffle folded into its kernel.

        A 3×3 conv over the s×s-unshuffled image equals a 3s×3s conv with stride s and padding s over the
        image itself (unshuffled channel c·s²+i·s+j at offset d holds image pixel s·d+i, s·d+j), and the
        scale is linear, so both fold into the weights: two full-resolution passes fewer. Inference only
        (deployed, eval); the weights are re-arranged on every call (a few hundred values), so there is
        no cache to go stale when the model is fine-tuned."""
        s = self.config.input_stride
        weight = conv.weight / 255.0
        if s > 1:
            cout, cin = weight.shape[0], weight.shape[1] // (s * s)
            # [o, c, i, j, dy, dx] → [o, c, dy, i, dx, j] → kernel index (s·dy + i, s·dx + j)
            weight = weight.reshape(cout, cin, s, s, 3, 3).permute(0, 1, 4, 2, 5, 3).reshape(cout, cin, 3 * s, 3 * s)
        return F.relu(F.conv2d(batch, weight, conv.bias, stride=s, padding=s), inplace=True)

    def tta_transform_maps(self, maps: dict[str, torch.Tensor], op: Any) -> dict[str, torch.Tensor]:
        """Engine hook for dihedral TTA: ``maps`` were predicted on an image flipped left-right (``op.flip``)
        then rotated ``op.k`` quarter turns, and already mapped back spatially; re-order the distance
        channels so that each again measures left, right, up, down of the original image."""
        out = dict(maps)
        for name, directions in self.direction_maps.items():
            if name in out:
                out[name] = out[name][:, direction_permutation(directions, int(op.k), bool(op.flip))]
        return out

    def reparameterize(self) -> "RepSNet":
        """Fold every RepVGG unit into one biased 3×3 conv and every RepUpsample pair into one transposed
        conv, in place; afterwards the state_dict has the authors' deploy layout and
        ``config.deploy`` is True so saved metadata rebuilds this form."""
        for module in self.modules():
            if isinstance(module, (RepVggUnit, RepUpsample)):
                module.reparameterize()
        self.config.deploy = True
        return self

    def default_postprocess_params(self) -> dict[str, Any]:
        c = self.config
        return {"boundary_threshold": c.boundary_threshold, "min_size": c.min_size, "max_size": c.max_size,
                "reattach_distance": c.reattach_distance, "recover_overlap": c.recover_overlap,
                "min_foreground_fraction": c.min_foreground_fraction,
                "foreground_threshold": c.foreground_threshold, "recover_min_size": c.recover_min_size}

    def postprocess(self, maps: dict[str, np.ndarray], **params: Any) -> Instances:
        unknown = set(params) - set(self.default_postprocess_params())
        if unknown:
            raise ValueError(f"unknown RepSNet post-processing parameter(s) {sorted(unknown)}; "
                             f"valid: {sorted(self.default_postprocess_params())}")
        for name in ("nucleus", "distance"):
            if name not in maps:
                raise ValueError(f"RepSNet post-processing needs the {name!r} map; got {sorted(maps)}")
        p = {**self.default_postprocess_params(), **params}
        nucleus = np.asarray(maps["nucleus"], np.float32)
        distance = np.asarray(maps["distance"], np.float32)
        if nucleus.ndim != 3 or nucleus.shape[0] != 2 or distance.shape != (4,) + nucleus.shape[1:]:
            raise ValueError(f"expected nucleus 2×H×W and distance 4×H×W maps, got {nucleus.shape} "
                             f"and {distance.shape}")
        type_prob = maps.get("type") if self.has_type_head else None
        labels, classes_of, scores = repsnet_postprocess(nucleus[1], distance, type_prob, **p)
        names = self.class_names
        if classes_of is not None:
            class_of = {i: int(classes_of[i]) for i in range(1, classes_of.size)}
            class_map = classes_of[labels]
        else:
            class_of = {i: 1 for i in range(1, int(labels.max()) + 1)}
            class_map = None
        return Instances(labels=labels, classes=class_map, class_of=class_of, scores=scores,
                         class_names=names, meta={"family": self.family})

    # ------------------------------------------------------------------ training
    def targets(self, labels: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
        labels = check_label_map(labels, classes)
        out = {"nucleus": (labels > 0).astype(np.uint8),
               "distance": np.sqrt(distance_targets(labels))}
        if self.has_type_head:
            # Without a class map (e.g. MoNuSeg mixed into a typed training set) the nuclei's types are
            # unknown: they are ignored by the type losses, while background pixels still count.
            known = np.asarray(classes) if classes is not None else UNKNOWN_TYPE
            type_map = np.where(labels > 0, known, 0)
            if classes is not None and type_map.max(initial=0) == UNKNOWN_TYPE:
                type_map = np.where(type_map == UNKNOWN_TYPE, 0, type_map)
            if classes is not None and type_map.max(initial=0) >= self.config.num_classes:
                raise ValueError(f"class map holds class {int(type_map.max())} but the model has "
                                 f"{self.config.num_classes} classes (incl. background)")
            out["type"] = type_map.astype(np.uint8)
        return out

    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        wts = self.config.loss_weights
        nucleus_true = targets["nucleus"].long()
        nucleus = outputs["nucleus"].float()
        terms = {"nucleus_ce": F.cross_entropy(nucleus, nucleus_true),
                 "nucleus_dice": soft_dice_loss(nucleus.softmax(1), nucleus_true)}
        if self.has_type_head:
            type_true = targets["type"].long()
            logits = outputs["type"].float()
            weight = self.type_class_weights
            if (type_true != UNKNOWN_TYPE).any():
                terms["type_ce"] = F.cross_entropy(logits, type_true, weight=weight, ignore_index=UNKNOWN_TYPE)
            else:  # a batch without any known type: keep the graph, contribute nothing
                terms["type_ce"] = logits.sum() * 0.0
            terms["type_dice"] = soft_dice_loss(logits.softmax(1), type_true, ignore_index=UNKNOWN_TYPE)
            terms["type_focal"] = focal_loss(logits, type_true, self.config.focal_gamma, weight,
                                             ignore_index=UNKNOWN_TYPE)
        # SmoothL1 on nucleus pixels (sqrt scale) + mean prediction on background pixels (pushes it to 0);
        # nucleus pixels use the pre-ReLU output when the model gives it (targets there are >= 1, so the
        # optimum is the same, but a negative pre-activation is still pulled back up)
        pred = outputs["distance"].float().permute(0, 2, 3, 1)
        fit = outputs.get("distance_raw", outputs["distance"]).float().permute(0, 2, 3, 1)
        true = targets["distance"].float().permute(0, 2, 3, 1)
        inside = nucleus_true > 0
        dist = pred.new_zeros(())
        if inside.any():
            dist = dist + F.smooth_l1_loss(fit[inside], true[inside])
        if (~inside).any():
            dist = dist + pred[~inside].mean()
        terms["distance"] = dist
        # the authors' boundary-vote loss is dropped, not ported: it compares boolean vote maps, so it
        # never had a gradient and did not train the published model
        terms["total"] = sum(wts[k] * v for k, v in terms.items())
        return terms


# ----------------------------------------------------------------------------- growing a trained model


def widen_repsnet(model: RepSNet, filters: tuple[int, ...], noise: float = 0.01, seed: int = 0) -> RepSNet:
    """A copy of a re-parameterised (deploy-form) RepSNet with more channels per level that computes the
    same maps, to continue training a model whose narrow widths limit it (function-preserving widening,
    Chen et al., "Net2Net", ICLR 2016).

    Each new channel of a level copies a randomly chosen old channel of that level (its incoming kernel and
    bias); every layer reading that level then divides its weights of the copied channel among the copies,
    so sums are unchanged. The skip concatenations, the bilinear branch of the upsampling (channel j + its
    own copy) and the heads follow the same per-level map. ``noise``: relative Gaussian noise on the new
    channels' incoming kernels (std × ``noise``), without which copies get equal gradients and never part;
    0 gives exactly the old outputs (tested). Hand-written: torch has no model-surgery helper for this.
    """
    c = model.config
    if not c.deploy or not all(m.deployed for m in model.modules() if isinstance(m, (RepVggUnit, RepUpsample))):
        raise ValueError("widen_repsnet needs a re-parameterised model: call model.reparameterize() first")
    filters = tuple(int(f) for f in filters)
    if len(filters) != len(c.filters) or any(new < old for new, old in zip(filters, c.filters)):
        raise ValueError(f"filters {filters} must have {len(c.filters)} levels, each at least the model's "
                         f"{tuple(c.filters)}")
    rng = np.random.default_rng(seed)
    # per level: source channel of every new channel, and how many copies each old channel has
    sources = [np.concatenate([np.arange(old), rng.integers(0, old, new - old)])
               for old, new in zip(c.filters, filters)]
    copies = [np.bincount(s, minlength=old).astype(np.float32) for s, old in zip(sources, c.filters)]
    image_channels = c.in_channels * c.input_stride ** 2
    identity = (np.arange(image_channels), np.ones(image_channels, np.float32))

    wide = type(model)(RepSNetConfig(**{**c.__dict__, "filters": filters}))
    generator = torch.Generator().manual_seed(seed)

    def spread(weight: torch.Tensor, out_map, in_map, out_dim: int = 0) -> torch.Tensor:
        """``weight`` re-indexed to the wide channels: rows (``out_dim``) by source, the input dimension by
        source divided by the number of copies."""
        in_dim = 1 - out_dim
        in_src, in_copies = in_map
        index = [slice(None)] * weight.dim()
        index[in_dim] = torch.as_tensor(in_src)
        w = weight[tuple(index)]
        shape = [1] * weight.dim()
        shape[in_dim] = -1
        w = w / torch.as_tensor(in_copies[in_src]).reshape(shape)
        if out_map is not None:
            index = [slice(None)] * weight.dim()
            index[out_dim] = torch.as_tensor(out_map)
            w = w[tuple(index)].clone()
            new = torch.as_tensor(np.arange(len(out_map)) >= weight.shape[out_dim])
            if noise > 0 and bool(new.any()):
                jitter = torch.randn(w.shape, generator=generator) * weight.std() * noise
                mask = new.reshape([-1 if d == out_dim else 1 for d in range(weight.dim())])
                w = w + jitter * mask
        return w

    def level(i: int):
        return sources[i], copies[i]

    def cat(a, b, offset: int):
        return np.concatenate([a[0], b[0] + offset]), np.concatenate([a[1], b[1]])

    new_state = {}

    def put(prefix: str, weight: torch.Tensor, bias: torch.Tensor | None, out_src, in_map, out_dim=0):
        new_state[f"{prefix}.weight"] = spread(weight, out_src, in_map, out_dim)
        if bias is not None:
            new_state[f"{prefix}.bias"] = bias[torch.as_tensor(out_src)] if out_src is not None else bias.clone()

    with torch.no_grad():
        for i, stage_name in enumerate(model.encoder.names):
            stage = getattr(model.encoder, stage_name)
            for k, unit in enumerate(stage):
                in_map = (identity if i == 0 else level(i - 1)) if k == 0 else level(i)
                conv = unit.conv_reparam
                put(f"encoder.{stage_name}.{k}.conv_reparam", conv.weight, conv.bias, sources[i], in_map)
        top = len(c.filters) - 1
        for decoder in ("decoder1", "decoder2"):
            dec = getattr(model, decoder)
            for j in range(1, dec.steps + 1):
                deep, skip = top - j + 1, top - j
                up = getattr(dec, f"upsample_{j}").dconv_reparam  # weight [in, out, k, k]
                put(f"{decoder}.upsample_{j}.dconv_reparam", up.weight, up.bias, sources[deep], level(deep),
                    out_dim=1)
                unit = getattr(dec, f"up_repvgg_{j}").conv_reparam
                put(f"{decoder}.up_repvgg_{j}.conv_reparam", unit.weight, unit.bias, sources[skip],
                    cat(level(deep), level(skip), c.filters[deep]))
        for head in ("nucleus_map", "boundary_distance_map", "type_map"):
            if hasattr(model, head):
                conv = getattr(model, head)[0]
                put(f"{head}.0", conv.weight, conv.bias, None, level(0))
    missing = set(wide.state_dict()) - set(new_state)
    if missing:  # pragma: no cover - a layer this function does not know about
        raise RuntimeError(f"widen_repsnet does not handle {sorted(missing)}")
    wide.load_state_dict(new_state)
    wide.metadata = dict(getattr(model, "metadata", None) or {})
    return wide.train(model.training)
