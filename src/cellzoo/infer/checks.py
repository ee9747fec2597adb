"""Checks before segmenting: images that cannot hold nuclei, and images that do not match the model.

- :func:`image_problem`: too small (1×1), all NaN, or one value everywhere (all zero) — a model would
  return 0 objects without saying why; the Segment widget and ``cellzoo segment`` refuse these.
- :func:`image_modality` / :func:`model_modality` / :func:`modality_warning`: a brightfield stain
  (H&E: light background, colour) into a fluorescence model, or fluorescence (dark background) into
  an H&E model, gives poor results; the widget says so before Run.
"""
from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np

Modality = Literal["brightfield", "fluorescence"]

#: smaller images hold no nucleus (and break the models' down-sampling)
MIN_SIDE = 8
#: median brightness on the image's own 0.5-99.5 % range: DSB 2018 fluorescence 0.00-0.20 (train and test),
#: H&E (MoNuSeg, CoNSeP, MoNuSAC) 0.22-0.74
DARK_BACKGROUND = 0.2
#: mean (max - min) over the colour channels on that range: gray 0, H&E 0.15-1.0
STAINED_CHROMA = 0.1
#: below this a dark image counts as gray (fluorescence: 0); dark H&E patches of CoNSeP: 0.07-0.08
GRAY_CHROMA = 0.05
#: a gray image this light is brightfield (unstained or converted to gray)
LIGHT_BACKGROUND = 0.5
#: pixels looked at for the modality (a 3000² RGB image: 0.1 s instead of 0.9 s for every second pixel)
SAMPLE_PIXELS = 250_000

_FLUORESCENCE_WORDS = re.compile(r"fluoresc|\bfluo\b|\bdsb\b|dsb ?2018|bbbc|dapi|hoechst", re.IGNORECASE)
_BRIGHTFIELD_WORDS = re.compile(r"h&e|\bhe\b|h and e|hematoxylin|haematoxylin|eosin|consep|monuseg|monusac|conic|"
                                r"lizard|glas\b|multiorgan|histolog|\bihc\b|brightfield|bright-field",
                                re.IGNORECASE)


def _plane(image: Any, channel: int | None) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3 and channel is not None and -array.shape[2] <= channel < array.shape[2]:
        return array[..., channel]
    if array.ndim == 3 and array.shape[2] == 1:
        return array[..., 0]
    return array


def image_problem(image: Any, channel: int | None = None) -> str | None:
    """Why ``image`` cannot be segmented (a sentence with what to do), or None when it can."""
    array = _plane(image, channel)
    if array.ndim < 2 or array.size == 0:
        return f"the image has shape {array.shape}; open a 2-D image (H×W or H×W×channels)"
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE:
        return (f"the image is only {height}×{width} px; nuclei need at least {MIN_SIDE}×{MIN_SIDE} px "
                "(open the full image, not a crop of a few pixels)")
    if array.dtype.kind not in "biuf":
        return None  # other dtypes are refused by prepare_image with their own message
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.any():
            return "every pixel is NaN or infinite; the image holds no data (check how it was exported)"
        low, high = float(array[finite].min()), float(array[finite].max())
    else:
        low, high = float(array.min()), float(array.max())
    if low == high:
        if low == 0:
            return "every pixel is 0 (a black, empty image); there is nothing to segment"
        return f"every pixel has the value {low:g} (a constant image); there is nothing to segment"
    return None


def image_modality(image: Any, channel: int | None = None) -> Modality | None:
    """"fluorescence" (dark background), "brightfield" (light background or stained colour), or None.

    Measured on the image's own intensity range (0.5-99.5 percentiles), so 8-bit, 16-bit and float
    images are judged alike; a regular grid of about :data:`SAMPLE_PIXELS` pixels is enough.
    """
    array = _plane(image, channel)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf" or min(array.shape[:2]) < MIN_SIDE:
        return None
    step = max(1, int(np.sqrt(array.shape[0] * array.shape[1] / SAMPLE_PIXELS)))
    sample = np.asarray(array[::step, ::step], dtype=np.float32)
    gray = sample.mean(axis=2) if sample.ndim == 3 else sample
    finite = np.isfinite(gray)
    if not finite.any():
        return None
    low, high = np.percentile(gray[finite], [0.5, 99.5])
    if high <= low:
        return None
    median = (float(np.median(gray[finite])) - low) / (high - low)
    chroma = 0.0
    if sample.ndim == 3 and sample.shape[2] == 3:
        spread = sample.max(axis=2) - sample.min(axis=2)
        chroma = float(np.mean(spread[np.isfinite(spread)])) / (high - low)
    if median < DARK_BACKGROUND:
        # colour on a dark image: a dark, dense H&E field (3 of 656 CoNSeP patches) as likely as a
        # coloured fluorescence composite; unsure, so no warning either way
        return "fluorescence" if chroma < GRAY_CHROMA else None
    if chroma >= STAINED_CHROMA or median >= LIGHT_BACKGROUND:
        return "brightfield"
    return None


def model_modality(info: Any) -> Modality | None:
    """What a model was trained on, from its registry entry / metadata (training data, input, name).

    ``info`` is a :class:`cellzoo.zoo.registry.ModelInfo` or a metadata dict; None when the text does
    not say, or names both kinds.
    """
    fields = ("training_data", "normalization", "name", "source", "notes")
    if isinstance(info, dict):
        parts = [info.get(key) for key in fields]
    else:
        parts = [getattr(info, key, None) for key in fields]
    text = " ".join(str(part) for part in parts if part)
    fluorescence, brightfield = bool(_FLUORESCENCE_WORDS.search(text)), bool(_BRIGHTFIELD_WORDS.search(text))
    if fluorescence == brightfield:
        return None
    return "fluorescence" if fluorescence else "brightfield"


def modality_warning(image: Any, info: Any, channel: int | None = None) -> str | None:
    """A sentence when the image and the model's training images are of different kinds, else None."""
    model_kind = model_modality(info)
    image_kind = image_modality(image, channel) if model_kind else None
    if model_kind is None or image_kind is None or model_kind == image_kind:
        return None
    name = info.get("name") if isinstance(info, dict) else getattr(info, "name", "this model")
    if model_kind == "fluorescence":
        return (f"{name} was trained on fluorescence images (bright nuclei on a dark background), but this image "
                "looks like a brightfield stain such as H&E (light background or colour): choose an H&E model "
                "(e.g. cellzoo-he) or expect poor results.")
    return (f"{name} was trained on brightfield H&E images, but this image looks like fluorescence (bright "
            "nuclei on a dark background): choose a fluorescence model (e.g. cellzoo-fluo) or expect poor "
            "results.")
