"""FullNet + varCE (Qu et al., MICCAI 2019; code huiqu18/FullNet-varCE): a full-resolution densely
connected network with hybrid dilations that predicts a ternary map (background / nucleus inside /
contour), trained with a weight-map cross entropy plus the variance-constrained loss (varCE).

Parameter names equal the authors' checkpoint keys (``conv1.conv.weight``,
``blocks.block{1..7}.denselayer{1..6}.conv.conv.weight``, ``blocks.trans{k}.*``, ``conv2.weight``), so
``model_MultiOrgan`` loads after stripping its ``module.`` prefix. The weight map, which the authors
computed in MATLAB, is computed here in Python; post-processing grows labels into the
background only (nearest object within the radius) instead of a grey dilation that lets larger ids
overwrite their neighbours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ..types import Instances
from ._dense_common import attach_to_nearest, check_label_map, class_names_for, mean_per_label
from .base import CellModel

__all__ = ["FullNetConfig", "FullNet", "hybrid_dilations", "ternary_labels", "weight_map", "variance_loss",
           "MONUSEG_ANCHOR_LAB", "MULTIORGAN_MEAN", "MULTIORGAN_STD"]

#: Per-layer dilations for each block dilation, from the authors' ``choose_hybrid_dilations``.
HYBRID_DILATIONS = {
    (1, 4): (1, 1, 1, 1), (2, 4): (1, 2, 3, 2), (4, 4): (1, 2, 5, 9), (8, 4): (3, 7, 10, 13),
    (16, 4): (13, 15, 17, 19),
    (1, 6): (1, 1, 1, 1, 1, 1), (2, 6): (1, 2, 3, 1, 2, 3), (4, 6): (1, 2, 3, 5, 6, 7),
    (8, 6): (2, 5, 7, 9, 11, 14), (16, 6): (10, 13, 16, 17, 19, 21),
}
#: Authors' MultiOrgan training-set mean/std of [0, 1] RGB (from their issue #5).
MULTIORGAN_MEAN = (0.7441, 0.5381, 0.6650)
MULTIORGAN_STD = (0.1581, 0.1971, 0.1505)
#: Lab mean/std of the authors' colour anchor, MoNuSeg Prostate_TCGA-G9-6356-01Z-00-DX1, measured with
#: skimage.color.rgb2lab on the copy in ../shared/data/monuseg2018 (train).
MONUSEG_ANCHOR_LAB = ((62.1113, 26.7332, -7.8743), (15.4722, 8.8284, 6.5073))

_CROSS = ndimage.generate_binary_structure(2, 1)


def hybrid_dilations(block_dilation: int, n_layers: int, hybrid: bool = True) -> tuple[int, ...]:
    if not hybrid:
        return (block_dilation,) * n_layers
    try:
        return HYBRID_DILATIONS[(block_dilation, n_layers)]
    except KeyError:
        valid = sorted({d for d, _n in HYBRID_DILATIONS})
        raise ValueError(f"no hybrid dilation schedule for block dilation {block_dilation} with {n_layers} "
                         f"layers; use n_layers 4 or 6 with dilations from {valid}, or hybrid=False") from None


@dataclass
class FullNetConfig:
    """Architecture (authors' defaults: 1.78 M parameters), input normalisation, training targets
    (``label_radius`` 1 for nuclei, 2 for glands; ``w0``/``sigma`` of the weight map; ``varce_weight`` α)
    and post-processing (``min_area`` 20 for nuclei at 40x, ``dilation_radius`` 2)."""

    in_channels: int = 3
    stem_channels: int = 24
    growth_rate: int = 24
    n_layers: int = 6
    compress_ratio: float = 0.5
    drop_rate: float = 0.1
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 4, 1)
    hybrid: bool = True
    reinhard: bool = False
    reinhard_target: tuple[tuple[float, float, float], tuple[float, float, float]] = MONUSEG_ANCHOR_LAB
    mean: tuple[float, ...] = MULTIORGAN_MEAN
    std: tuple[float, ...] = MULTIORGAN_STD
    label_radius: int = 1
    w0: float = 10.0
    sigma: float = 5.0
    varce_weight: float = 1.0
    min_area: int = 20
    dilation_radius: int = 2
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.dilations = tuple(int(d) for d in self.dilations)
        for d in self.dilations:
            hybrid_dilations(d, self.n_layers, self.hybrid)  # validates
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels or min(self.std) <= 0:
            raise ValueError(f"FullNet mean/std need {self.in_channels} values each (std > 0); "
                             f"got mean={self.mean}, std={self.std}")
        self.reinhard_target = tuple(tuple(float(v) for v in part) for part in self.reinhard_target)  # type: ignore
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)
            class_names_for(2, self.class_names)
        if self.sigma <= 0 or self.w0 < 0:
            raise ValueError(f"weight map needs sigma > 0 and w0 >= 0; got sigma={self.sigma}, w0={self.w0}")


# ----------------------------------------------------------------------------- network


class _ConvLayer(nn.Sequential):
    """conv (no bias) → LeakyReLU → BN, in the authors' order."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False)
        self.relu = nn.LeakyReLU(inplace=True)
        self.bn = nn.BatchNorm2d(cout)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, drop_rate: float, dilation: int) -> None:
        super().__init__()
        self.conv = _ConvLayer(cin, growth, 3, padding=dilation, dilation=dilation)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.dropout(self.conv(x), p=self.drop_rate, training=self.training)
        return torch.cat([x, out], 1)


class FullNet(CellModel):
    family: ClassVar[str] = "fullnet"
    kind: ClassVar[str] = "dense"
    Config: ClassVar[type] = FullNetConfig
    dense_maps: ClassVar[dict[str, str]] = {"ternary": "softmax"}

    def __init__(self, config: FullNetConfig | None = None) -> None:
        config = config or FullNetConfig()
        super().__init__(config)
        c = config
        channels = c.stem_channels
        self.conv1 = _ConvLayer(c.in_channels, channels, 3, padding=1)
        self.blocks = nn.Sequential()
        for i, block_dilation in enumerate(c.dilations, start=1):
            block = nn.Sequential()
            for j, d in enumerate(hybrid_dilations(block_dilation, c.n_layers, c.hybrid), start=1):
                block.add_module(f"denselayer{j}", _DenseLayer(channels + (j - 1) * c.growth_rate,
                                                               c.growth_rate, c.drop_rate, d))
            self.blocks.add_module(f"block{i}", block)
            widened = channels + c.n_layers * c.growth_rate
            channels = int(math.floor(widened * c.compress_ratio))
            self.blocks.add_module(f"trans{i}", _ConvLayer(widened, channels, 1))
        self.conv2 = nn.Conv2d(channels, 3, 3, padding=1, bias=False)
        # He-normal init over fan-out, as the authors
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def receptive_radius(self) -> int:
        c = self.config
        return 2 + sum(sum(hybrid_dilations(d, c.n_layers, c.hybrid)) for d in c.dilations)

    @property
    def halo(self) -> int:
        # the full receptive field is ~220 px; the authors tiled with 40 px margins (208/80 overlap);
        # 64 px keeps tiles efficient while covering most of the effective field
        return 64

    @property
    def size_divisor(self) -> int:
        return 1

    @property
    def min_tile(self) -> int:
        # keep at least 64 px of each tile outside the halo, else tiles overlap almost completely
        return 2 * self.halo + 64

    @property
    def class_names(self) -> list[str]:
        return class_names_for(2, self.config.class_names)

    # ------------------------------------------------------------------ inference
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        c = self.config
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] != c.in_channels:
            raise ValueError(f"FullNet expects an H×W×{c.in_channels} image, got shape {image.shape}")
        if c.reinhard:
            from ..data.stain import reinhard_normalize

            image = reinhard_normalize(image, c.reinhard_target)
        scaled = (image / 255.0 - np.asarray(c.mean, np.float32)) / np.asarray(c.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1), dtype=np.float32))

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ternary": self.conv2(self.blocks(self.conv1(batch)))}

    def default_postprocess_params(self) -> dict[str, Any]:
        return {"min_area": self.config.min_area, "dilation_radius": self.config.dilation_radius}

    def postprocess(self, maps: dict[str, np.ndarray], **params: Any) -> Instances:
        unknown = set(params) - set(self.default_postprocess_params())
        if unknown:
            raise ValueError(f"unknown FullNet post-processing parameter(s) {sorted(unknown)}; "
                             f"valid: {sorted(self.default_postprocess_params())}")
        p = {**self.default_postprocess_params(), **params}
        if "ternary" not in maps:
            raise ValueError(f"FullNet post-processing needs the 'ternary' map; got {sorted(maps)}")
        prob = np.asarray(maps["ternary"], np.float32)
        if prob.ndim != 3 or prob.shape[0] != 3:
            raise ValueError(f"expected a 3×H×W ternary probability map, got shape {prob.shape}")
        inside = prob.argmax(0) == 1
        # 8-connected components (as skimage.measure.label's default), small ones removed
        labels, n = ndimage.label(inside, structure=np.ones((3, 3), bool))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= int(p["min_area"])
        keep[0] = False
        lut = np.zeros(n + 1, np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1)
        labels = lut[labels]
        n = int(keep.sum())
        scores_all = mean_per_label(1.0 - prob[0], labels, n)
        # give back the contour the inside class leaves out: grow each object into the background by
        # dilation_radius (the authors dilated with disk(2); growing only into background keeps larger
        # ids from overwriting their neighbours, and equidistant pixels go to the larger object so the
        # result does not depend on the image's orientation)
        radius = float(p["dilation_radius"])
        if radius > 0:
            from skimage.morphology import disk

            reach = ndimage.binary_dilation(labels > 0, disk(int(radius)).astype(bool)) & (labels == 0)
            attach_to_nearest(labels, reach, radius)
        labels = labels.astype(np.int32)
        return Instances(labels=labels, classes=None, class_of={i: 1 for i in range(1, n + 1)},
                         scores={i: float(scores_all[i]) for i in range(1, n + 1)},
                         class_names=self.class_names, meta={"family": self.family})

    # ------------------------------------------------------------------ training
    def targets(self, labels: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
        labels = check_label_map(labels, classes)
        ternary = ternary_labels(labels, self.config.label_radius)
        inside_instances, _ = ndimage.label(ternary == 1, structure=np.ones((3, 3), bool))
        return {"ternary": ternary, "weight": weight_map(labels, self.config.w0, self.config.sigma),
                "inside_instances": inside_instances.astype(np.int32)}

    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = outputs["ternary"].float()
        ce = F.cross_entropy(logits, targets["ternary"].long(), reduction="none")
        weighted = (ce * targets["weight"].to(ce.dtype)).mean()
        var = variance_loss(logits.softmax(1), targets["inside_instances"])
        return {"weighted_ce": weighted, "var_ce": var, "total": weighted + self.config.varce_weight * var}


# ----------------------------------------------------------------------------- targets and losses


def _eroded_per_instance(labels: np.ndarray, border_erodes: bool = False) -> np.ndarray:
    """Each instance eroded by the 3×3 cross separately (a pixel stays if its 4 neighbours carry the same
    id). By default the image border does not erode (skimage's reflect padding, used for the ternary
    label); ``border_erodes`` treats outside the image as background (MATLAB's bwboundaries)."""
    padded = np.pad(labels, 1, mode="constant") if border_erodes else np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    same = ((padded[:-2, 1:-1] == centre) & (padded[2:, 1:-1] == centre)
            & (padded[1:-1, :-2] == centre) & (padded[1:-1, 2:] == centre))
    return same & (labels > 0)


def ternary_labels(labels: np.ndarray, radius: int = 1) -> np.ndarray:
    """FullNet's training label (uint8: 0 background, 1 inside, 2 contour), as the authors build it:
    inside = union of per-instance erosions (3×3 cross); contour = dilation(inside, cross) minus
    erosion(inside, disk(radius)), painted over the inside."""
    from skimage.morphology import disk

    labels = check_label_map(labels)
    inside = _eroded_per_instance(labels)
    contour = ndimage.binary_dilation(inside, _CROSS) & ~ndimage.binary_erosion(inside, disk(radius).astype(bool),
                                                                                 border_value=1)
    out = inside.astype(np.uint8)
    out[contour] = 2
    return out


def weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, tolerance: float = 1e-4) -> np.ndarray:
    """w = 1 + w0·exp(−(d1+d2)²/(2σ²)) with d1, d2 the distances to the nearest and second-nearest object
    boundary (object pixels with a 4-neighbour outside the object or the image); w = 1 everywhere with < 2 objects.

    Computed with one Euclidean distance transform per object inside a window around it: farther than
    ``reach`` = σ·sqrt(2·ln(w0/tolerance)) the extra weight is below ``tolerance``, so pixels that see
    fewer than two objects within reach get w = 1 (error < tolerance).
    """
    labels = check_label_map(labels)
    h, w = labels.shape
    out = np.ones((h, w), np.float32)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size < 2 or w0 == 0:
        return out
    reach = sigma * math.sqrt(2.0 * math.log(max(w0 / tolerance, 1.0 + 1e-9)))
    margin = int(math.ceil(reach)) + 1
    d1 = np.full((h, w), np.inf, np.float64)
    d2 = np.full((h, w), np.inf, np.float64)
    boundary = (labels > 0) & ~_eroded_per_instance(labels, border_erodes=True)
    objects = ndimage.find_objects(labels)
    for index, box in enumerate(objects, start=1):
        if box is None:
            continue
        y0, y1 = max(box[0].start - margin, 0), min(box[0].stop + margin, h)
        x0, x1 = max(box[1].start - margin, 0), min(box[1].stop + margin, w)
        window = (slice(y0, y1), slice(x0, x1))
        edge = boundary[window] & (labels[window] == index)
        dist = ndimage.distance_transform_edt(~edge)
        a, b = d1[window], d2[window]
        b[...] = np.minimum(b, np.maximum(a, dist))
        a[...] = np.minimum(a, dist)
    total = d1 + d2
    finite = np.isfinite(total)
    out[finite] += (w0 * np.exp(-(total[finite] ** 2) / (2.0 * sigma ** 2))).astype(np.float32)
    return out


def variance_loss(probs: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    """varCE: (1/B) Σ_b (1/N_b) Σ_i Σ_c Var_{p∈i}(P_c(p)), unbiased variance over each instance's pixels
    (instances with one pixel add 0 but count in N_b, as the authors' ``LossVariance``).

    ``probs``: B×C×H×W softmax probabilities; ``instances``: B×H×W instance ids (0 = none).
    Vectorised with two scatter passes (mean, then squared deviations) instead of a Python loop.
    """
    batch, channels = probs.shape[:2]
    total = probs.new_zeros(())
    for b in range(batch):
        ids = instances[b].reshape(-1).long()
        present = torch.unique(ids)
        present = present[present > 0]
        if present.numel() == 0:
            continue
        # compact ids 0..K-1 for the pixels inside instances
        mask = ids > 0
        compact = torch.searchsorted(present, ids[mask])
        values = probs[b].reshape(channels, -1)[:, mask]  # C×P
        k = present.numel()
        counts = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(
            0, compact, torch.ones_like(compact, dtype=values.dtype))
        sums = torch.zeros(channels, k, dtype=values.dtype, device=values.device).index_add_(1, compact, values)
        means = sums / counts
        sq = (values - means[:, compact]) ** 2
        sq_sums = torch.zeros(channels, k, dtype=values.dtype, device=values.device).index_add_(1, compact, sq)
        valid = counts > 1
        var = sq_sums[:, valid] / (counts[valid] - 1)
        total = total + var.sum() / (k + 1e-8)
    return total / batch
