"""Input normalisation: any 2-D image → the engine's canonical H×W×3 float32 on a 0–255 scale."""
from __future__ import annotations

import numpy as np

NORMALIZE_CHOICES = ("auto", "percentile", "none")


def prepare_image(image, channel: int | None = None, normalize: str = "auto",
                  percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """Convert a gray / RGB / RGBA / multichannel image of any numeric dtype to H×W×3 float32 0–255.

    * gray (H×W or H×W×1) → three identical channels; RGBA drops alpha;
    * ``channel=k`` picks channel ``k`` of a H×W×C image (e.g. the nuclear stain) and treats it as gray;
    * ``normalize="auto"``: uint8 stays as is, floats already in [0, 1] are scaled by 255, floats in
      [0, 255] are kept, everything else (16-bit, other integers, wider floats) is percentile-normalised;
      ``"percentile"`` always maps the ``percentiles`` (jointly over all channels, so colours keep their
      balance) to 0 and 255 and clips; ``"none"`` only casts to float32.
    """
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}; got {normalize!r}")
    array = np.asarray(image)
    if array.dtype == bool or np.issubdtype(array.dtype, np.complexfloating) or array.dtype == object \
            or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"image dtype {array.dtype} is not supported; give a real-valued image "
                         "(uint8, uint16, int, or float)")
    if array.size == 0:
        raise ValueError(f"the image is empty (shape {array.shape})")
    if array.ndim < 2:
        raise ValueError(f"expected a 2-D image (H×W, H×W×C); got a {array.ndim}-D array of shape {array.shape}")
    if array.ndim > 3:
        raise ValueError(f"expected a single 2-D image (H×W or H×W×C); got shape {array.shape}. "
                         "For stacks use cellzoo.infer.segment_stack_iter (one plane at a time)")
    if array.ndim == 3:
        n_channels = array.shape[2]
        if channel is not None:
            if not -n_channels <= channel < n_channels:
                raise ValueError(f"channel {channel} does not exist: the image has {n_channels} channels "
                                 f"(0..{n_channels - 1})")
            array = array[..., channel]
        elif n_channels == 1:
            array = array[..., 0]
        elif n_channels == 4:
            array = array[..., :3]  # RGBA: drop alpha
        elif n_channels != 3:
            raise ValueError(f"image of shape {array.shape} has {n_channels} channels; choose one with "
                             "channel=K (e.g. the nuclear stain), or give gray / RGB / RGBA. "
                             "If the first axis is planes (Z/T), use segment_stack_iter")
    elif channel is not None and channel not in (0, -1):
        raise ValueError(f"channel {channel} was requested but the image is single-channel (shape {array.shape})")
    if min(array.shape[:2]) < 1:
        raise ValueError(f"the image is empty (shape {array.shape})")

    out = _scale(array, normalize, percentiles)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _scale(array: np.ndarray, normalize: str, percentiles: tuple[float, float]) -> np.ndarray:
    if normalize == "none":
        return _finite(array.astype(np.float32))
    if normalize == "auto":
        if array.dtype == np.uint8:
            return array.astype(np.float32)
        if np.issubdtype(array.dtype, np.floating):
            data = _finite(array.astype(np.float32))
            low, high = float(data.min()), float(data.max())
            if low >= 0.0 and high <= 1.0:
                return data * 255.0
            if low >= 0.0 and high <= 255.0 and high > 1.0:
                return data
        # 16-bit and wider data rarely use their full range (12-bit cameras, dim fluorescence):
        # percentiles make the result independent of the bit depth and the exposure.
    return percentile_normalize(array, percentiles)


def percentile_normalize(array: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """Map the low/high percentiles of ``array`` (over all its values) to 0 and 255, clipped."""
    low_pct, high_pct = percentiles
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100; got {percentiles}")
    data = _finite(array.astype(np.float32))
    low, high = np.percentile(data, [low_pct, high_pct])
    if high <= low:  # flat image: nothing to stretch
        high = low + 1.0
    return np.clip((data - low) * (255.0 / (high - low)), 0.0, 255.0)


def _finite(data: np.ndarray) -> np.ndarray:
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return data


#: a last axis this short is colour/channels (gray+alpha, RGB, RGBA, a few stains); longer ones are planes
MAX_CHANNELS_LAST = 4


def arrange_image(image, channel: int | None = None, name: str = "image"
                  ) -> tuple[np.ndarray, bool, int | None, str | None]:
    """Decide planes vs channels for an image as read from a file, by one rule that is said out loud.

    Returns ``(array, is_stack, channel, note)``: ``array`` is one H×W[×C] image (``is_stack`` False) or a
    stack of planes (Z×H×W[×C]); ``channel`` is what is left for :func:`prepare_image` to pick per image;
    ``note`` says what was decided when it was not obvious (None otherwise).

    * H×W: one gray image. H×W×C with C ≤ 4: one image with C channels (an H×W×2 image is 2 channels,
      never 128 planes of 128×2; without ``channel`` :func:`prepare_image` asks which one).
    * Z×H×W with a last axis > 4: Z gray planes, each segmented on its own. With ``channel=k`` and Z ≤ 4
      the first axis is read as channels (C×H×W, e.g. a 2-channel TIFF) and plane k is used; with more
      planes ``channel`` is refused (a gray stack has no channel axis).
    * Z×H×W×C (C ≤ 4): Z planes of C channels; ``channel`` picks one in every plane.
    """
    array = np.asarray(image) if not hasattr(image, "shape") else image
    shape = tuple(array.shape)
    if len(shape) == 2:
        if channel not in (None, 0, -1):
            raise ValueError(f"{name}: --channel {channel} was given but the image is single-channel {shape}")
        return array, False, None, None
    if len(shape) == 3:
        if shape[2] <= MAX_CHANNELS_LAST:
            return array, False, channel, None
        if channel is None:
            return array, True, None, (f"read as {shape[0]} gray planes of {shape[1]}×{shape[2]} (Z×H×W: the last "
                                       f"axis is longer than {MAX_CHANNELS_LAST}); each is segmented on its own")
        if shape[0] <= MAX_CHANNELS_LAST:
            if not -shape[0] <= channel < shape[0]:
                raise ValueError(f"{name}: channel {channel} does not exist: the image has {shape[0]} channels "
                                 f"on its first axis (C×H×W {shape}), 0..{shape[0] - 1}")
            return np.asarray(array[channel]), False, None, (
                f"read as {shape[0]} channels of {shape[1]}×{shape[2]} (C×H×W); used channel {channel}")
        raise ValueError(f"{name}: --channel {channel} was given but {shape} is a stack of {shape[0]} gray planes "
                         f"(Z×H×W) without a channel axis; leave out --channel to segment every plane")
    if len(shape) == 4:
        if shape[3] <= MAX_CHANNELS_LAST:
            return array, True, channel, f"read as {shape[0]} planes of {shape[1]}×{shape[2]}×{shape[3]} (Z×H×W×C)"
        raise ValueError(f"{name}: cannot tell planes from channels in shape {shape}; save it as Z×H×W×C "
                         f"with at most {MAX_CHANNELS_LAST} channels last, or one plane per file")
    raise ValueError(f"{name}: a {len(shape)}-D image {shape} is not supported; give H×W, H×W×C, Z×H×W or "
                     f"Z×H×W×C")
