"""Colour tools for H&E images: Reinhard normalisation (FullNet's preprocessing) and H&E stain
jitter (a training augmentation, like RepSNet's NMF stain augmentation).

Both take and return H×W×3 float32 images on a 0–255 scale (the engine's canonical form);
uint8 input is accepted too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import color

__all__ = ["LabStats", "lab_stats", "reinhard_normalize", "he_stain_jitter"]


@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and standard deviation of an image in CIE Lab (L in 0–100)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def coerce(cls, value: "LabStats | np.ndarray | dict | tuple") -> "LabStats":
        """Accept LabStats, a target RGB image (H×W×3), a dict {"mean", "std"} or a (mean, std) pair."""
        if isinstance(value, LabStats):
            return value
        if isinstance(value, dict):
            if not {"mean", "std"} <= set(value):
                raise ValueError("Reinhard target stats as a dict need the keys 'mean' and 'std' "
                                 f"(3 values each); got keys {sorted(value)}")
            mean, std = value["mean"], value["std"]
        elif isinstance(value, np.ndarray) and value.ndim == 3:
            return lab_stats(value)
        elif isinstance(value, (tuple, list)) and len(value) == 2:
            mean, std = value
        else:
            raise ValueError("Reinhard target must be an RGB image (H×W×3), LabStats, "
                             "a dict {'mean': [..3], 'std': [..3]} or a (mean, std) pair")
        mean = tuple(float(v) for v in np.asarray(mean, dtype=float).reshape(-1))
        std = tuple(float(v) for v in np.asarray(std, dtype=float).reshape(-1))
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"Reinhard target mean/std need 3 values each (L, a, b); got {mean}, {std}")
        if min(std) <= 0:
            raise ValueError(f"Reinhard target std must be positive; got {std}")
        return cls(mean, std)  # type: ignore[arg-type]


def _as_rgb01(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape H×W×3, got shape {image.shape}; "
                         "convert greyscale or RGBA images to RGB first")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    if image.size and float(image.max()) > 255.0 + 1e-3:
        raise ValueError(f"expected values on a 0–255 scale, got a maximum of {float(image.max()):.1f}; "
                         "rescale 16-bit images to 0–255 first (cellzoo.infer.prepare_image does this)")
    return image / 255.0


def _to_255(rgb01: np.ndarray) -> np.ndarray:
    return (np.clip(rgb01, 0.0, 1.0) * 255.0).astype(np.float32)


def lab_stats(image: np.ndarray, mask: np.ndarray | None = None) -> LabStats:
    """Lab mean/std of an RGB image (0–255), optionally only over ``mask`` pixels."""
    lab = color.rgb2lab(_as_rgb01(image))
    pixels = lab.reshape(-1, 3) if mask is None else lab[np.asarray(mask, bool)]
    if pixels.shape[0] == 0:
        raise ValueError("cannot compute colour statistics of an empty image or mask")
    return LabStats(tuple(map(float, pixels.mean(0))), tuple(map(float, pixels.std(0))))  # type: ignore[arg-type]


def reinhard_normalize(image: np.ndarray, target: "LabStats | np.ndarray | dict | tuple") -> np.ndarray:
    """Reinhard colour transfer: match each Lab channel's mean and std to ``target``.

    ``target`` is a reference RGB image (FullNet used the MoNuSeg slide
    Prostate_TCGA-G9-6356-01Z-00-DX1) or its :class:`LabStats`. Returns float32 0–255.
    """
    stats = LabStats.coerce(target)
    lab = color.rgb2lab(_as_rgb01(image))
    flat = lab.reshape(-1, 3)
    mean = flat.mean(0)
    std = flat.std(0)
    # a flat channel (e.g. a blank tile) has no contrast to rescale; only shift it
    scale = np.where(std > 1e-6, np.asarray(stats.std) / np.maximum(std, 1e-6), 1.0)
    lab = (lab - mean) * scale + np.asarray(stats.mean)
    return _to_255(color.lab2rgb(lab))


def he_stain_jitter(image: np.ndarray, rng: np.random.Generator, amount_matrix: float = 0.15,
                    amount_stains: float = 0.4) -> np.ndarray:
    """Random H&E stain augmentation by colour deconvolution (Ruifrok & Johnston, skimage.color.rgb2hed).

    The image is split into haematoxylin / eosin / DAB concentrations; each stain's concentration is
    scaled by a factor in ``1 ± amount_stains`` and each stain colour vector component perturbed by up to
    ``amount_matrix`` (relative, per RGB component) before recombining. Returns float32 0–255.
    """
    if amount_matrix < 0 or amount_stains < 0:
        raise ValueError(f"stain jitter amounts must be >= 0; got amount_matrix={amount_matrix}, "
                         f"amount_stains={amount_stains}")
    rgb = _as_rgb01(image)
    # Optical density in skimage's convention (separate_stains/combine_stains), written out because
    # skimage.color.rgb2hed clips negative concentrations, which would alter the image even with zero
    # jitter; unclipped, zero jitter returns the input exactly.
    log_adjust = np.log(1e-6)
    optical_density = np.log(np.maximum(rgb, 1e-6)) / log_adjust
    concentrations = optical_density @ color.hed_from_rgb
    concentrations = concentrations * (1.0 + rng.uniform(-amount_stains, amount_stains, size=3))
    stain_vectors = color.rgb_from_hed * (1.0 + rng.uniform(-amount_matrix, amount_matrix, size=(3, 3)))
    out = np.exp((concentrations @ stain_vectors) * log_adjust)
    return _to_255(out)
