"""Training augmentations shared by every family (RepSNet's and FullNet's recipes, seeds §1.4/§2.3).

Every transform is a callable ``(image, labels, classes, rng) -> (image, labels, classes)`` with
``image`` H×W×3 float32 on 0–255, ``labels`` H×W int32 instance ids and ``classes`` H×W uint8 or
``None``; geometric transforms move all three together (nearest-neighbour for label maps).
:func:`build_augment` makes a pipeline from names, used by the trainer and the Fine-tune widget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .stain import he_stain_jitter

Triple = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
Transform = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.random.Generator], Triple]


def _map_all(image, labels, classes, fn_image, fn_label) -> Triple:
    return fn_image(image), fn_label(labels), (None if classes is None else fn_label(classes))


@dataclass
class FlipRot90:
    """Random quarter turn plus horizontal / vertical flips, each with probability ``p``."""

    p: float = 0.5

    def __call__(self, image, labels, classes, rng):
        k = int(rng.integers(4)) if rng.random() < self.p else 0
        hflip, vflip = rng.random() < self.p, rng.random() < self.p

        def move(a):
            a = np.rot90(a, k, axes=(0, 1))
            if hflip:
                a = a[:, ::-1]
            if vflip:
                a = a[::-1]
            return np.ascontiguousarray(a)
        return _map_all(image, labels, classes, move, move)


def _cubic_zoom_weights(n: int, size: int) -> np.ndarray:
    """``size``×``n`` matrix W such that W @ v is ``ndimage.zoom(v, size / n, order=3)[:size]`` for any v."""
    return ndimage.zoom(np.eye(n), (size / n, 1), order=3)[:size]


@dataclass
class Elastic:
    """Smooth random displacement: offsets up to ``amount`` px drawn on a ``grid``×``grid`` lattice and
    interpolated (cubic) to every pixel; bilinear for the image, nearest for labels."""

    grid: int = 5
    amount: float = 10.0
    p: float = 0.3

    def __call__(self, image, labels, classes, rng):
        if rng.random() >= self.p or self.amount <= 0:
            return image, labels, classes
        height, width = labels.shape
        coarse = rng.uniform(-self.amount, self.amount, size=(2, self.grid, self.grid))
        # the cubic-spline zoom of the lattice, done as rows @ lattice @ columns.T: the spline is a tensor
        # product, so this equals ndimage.zoom(lattice, order=3) (to 1e-14) at ~1/13 of its cost (416²: 8 vs
        # 99 ms on a shared core)
        rows = _cubic_zoom_weights(self.grid, height)
        cols = _cubic_zoom_weights(self.grid, width)
        dy = rows @ coarse[0] @ cols.T
        dx = rows @ coarse[1] @ cols.T
        yy, xx = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                             indexing="ij")
        coords = np.stack([yy + dy, xx + dx])

        def warp_image(a):
            return np.stack([ndimage.map_coordinates(a[..., c], coords, order=1, mode="reflect")
                             for c in range(a.shape[2])], axis=-1).astype(np.float32)

        def warp_label(a):
            # same border mode as the image: a nucleus mirrored at the border is labelled as its mirror
            return ndimage.map_coordinates(a, coords, order=0, mode="reflect").astype(a.dtype)
        return _map_all(image, labels, classes, warp_image, warp_label)


@dataclass
class StainJitter:
    """H&E stain jitter by colour deconvolution (``cellzoo.data.stain.he_stain_jitter``)."""

    amount_matrix: float = 0.15
    amount_stains: float = 0.4
    p: float = 0.3

    def __call__(self, image, labels, classes, rng):
        if rng.random() >= self.p:
            return image, labels, classes
        return he_stain_jitter(image, rng, self.amount_matrix, self.amount_stains), labels, classes


@dataclass
class GaussianBlur:
    """Gaussian blur with sigma drawn from ``sigma`` (per image, same for every channel)."""

    sigma: tuple[float, float] = (0.0, 2.0)
    p: float = 0.3

    def __call__(self, image, labels, classes, rng):
        if rng.random() >= self.p:
            return image, labels, classes
        s = float(rng.uniform(*self.sigma))
        if s <= 0:
            return image, labels, classes
        return ndimage.gaussian_filter(image, sigma=(s, s, 0)).astype(np.float32), labels, classes


@dataclass
class BrightnessContrast:
    """``image * (1 ± contrast) + 255 * (± brightness)``, clipped to 0–255."""

    brightness: float = 0.1
    contrast: float = 0.1
    p: float = 0.3

    def __call__(self, image, labels, classes, rng):
        if rng.random() >= self.p:
            return image, labels, classes
        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        offset = 255.0 * rng.uniform(-self.brightness, self.brightness)
        mean = float(image.mean())
        out = (image - mean) * gain + mean + offset
        return np.clip(out, 0.0, 255.0).astype(np.float32), labels, classes


@dataclass
class RandomScale:
    """Resize by a factor drawn from ``scale`` (FullNet: 0.8–1.25); bilinear image, nearest labels."""

    scale: tuple[float, float] = (0.8, 1.25)
    p: float = 0.5

    def __call__(self, image, labels, classes, rng):
        if rng.random() >= self.p:
            return image, labels, classes
        factor = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        height, width = labels.shape
        shape = (max(1, round(height * factor)), max(1, round(width * factor)))
        zoom = (shape[0] / height, shape[1] / width)

        def scale_image(a):
            # one 2-D zoom per channel: the same values as a 3-D zoom with factor 1 on the channel axis,
            # at half its cost (that one interpolates over 8 neighbours instead of 4)
            planes = [ndimage.zoom(a[..., c], zoom, order=1, grid_mode=True, mode="grid-mirror")
                      for c in range(a.shape[2])]
            return np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.float32)

        def scale_label(a):
            return ndimage.zoom(a, zoom, order=0, grid_mode=True, mode="grid-mirror").astype(a.dtype)
        return _map_all(image, labels, classes, scale_image, scale_label)


@dataclass
class RandomCrop:
    """Random ``size``×``size`` crop; smaller inputs are reflect-padded (labels padded with 0)."""

    size: int = 256

    def __call__(self, image, labels, classes, rng):
        return random_crop(image, labels, classes, self.size, rng)


def random_crop(image, labels, classes, size: int, rng: np.random.Generator) -> Triple:
    height, width = labels.shape
    pad_y, pad_x = max(0, size - height), max(0, size - width)
    if pad_y or pad_x:
        widths = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
        mode = "reflect" if min(height, width) > 1 else "edge"
        image = np.pad(image, widths + ((0, 0),), mode=mode)
        labels = np.pad(labels, widths)
        classes = None if classes is None else np.pad(classes, widths)
        height, width = labels.shape
    y = int(rng.integers(height - size + 1))
    x = int(rng.integers(width - size + 1))
    window = (slice(y, y + size), slice(x, x + size))
    return (np.ascontiguousarray(image[window]), np.ascontiguousarray(labels[window]),
            None if classes is None else np.ascontiguousarray(classes[window]))


class Compose:
    """Apply transforms in order; ``names`` records what the pipeline contains (for metadata)."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image, labels, classes, rng):
        for transform in self.transforms:
            image, labels, classes = transform(image, labels, classes, rng)
        return image, labels, classes

    def __len__(self) -> int:
        return len(self.transforms)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": type(t).__name__, **getattr(t, "__dict__", {})} for t in self.transforms]


#: name -> transform class, in the order the pipeline applies them (geometry first, colour after)
AUGMENTATIONS: dict[str, type] = {
    "flip": FlipRot90,
    "scale": RandomScale,
    "elastic": Elastic,
    "stain": StainJitter,
    "blur": GaussianBlur,
    "brightness": BrightnessContrast,
}
#: RepSNet's recipe (flips/rot90, stain jitter, elastic, blur, brightness) plus FullNet's scale jitter
DEFAULT_AUGMENT = ("flip", "scale", "elastic", "stain", "blur", "brightness")
#: fluorescence images have no H&E stain
FLUORESCENCE_AUGMENT = ("flip", "scale", "elastic", "blur", "brightness")


def build_augment(spec: Iterable[str] | Mapping[str, Any] | str | None = "default") -> Compose:
    """A :class:`Compose` from ``"default"``, ``"none"``, a list of names, or a dict
    ``{name: True | False | {param: value}}``. Names: flip, scale, elastic, stain, blur, brightness."""
    if spec is None or spec == "none":
        return Compose([])
    if spec == "default":
        spec = DEFAULT_AUGMENT
    elif spec == "fluorescence":
        spec = FLUORESCENCE_AUGMENT
    elif isinstance(spec, str):
        spec = [name.strip() for name in spec.split(",") if name.strip()]
    items: dict[str, Any] = dict(spec) if isinstance(spec, Mapping) else {name: True for name in spec}
    unknown = sorted(set(items) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {sorted(AUGMENTATIONS)}, "
                         "'default', 'fluorescence' or 'none'")
    transforms = []
    for name, cls in AUGMENTATIONS.items():
        options = items.get(name, False)
        if options is False or options is None:
            continue
        if options is True:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"options for augmentation {name!r} must be true/false or a mapping; got {options!r}")
        try:
            transforms.append(cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}))
        except TypeError as exc:
            raise ValueError(f"bad options for augmentation {name!r}: {exc}") from None
    return Compose(transforms)


def class_aware_oversampling_weights(samples: Sequence[Any], n_rare: int = 4, extra_fraction: float = 0.5,
                                     num_classes: int | None = None) -> np.ndarray:
    """Sampling weights that favour samples rich in the rarest classes (StarDist's CoNIC oversampling,
    seeds §1.4): the ``n_rare`` classes with the fewest pixels each get extra draws ∝ sqrt(total / class
    pixels), shared out between samples ∝ (that class's pixels in the sample)². ``extra_fraction`` is the
    total number of extra draws relative to the number of samples. Returns weights ≥ 1 per sample
    (all 1 when no sample has a class map)."""
    count = len(samples)
    weights = np.ones(count, dtype=np.float64)
    class_maps = [getattr(s, "classes", None) for s in samples]
    if count == 0 or all(c is None for c in class_maps):
        return weights
    top = num_classes or 1 + max(int(c.max()) for c in class_maps if c is not None and c.size)
    per_sample = np.zeros((count, top), dtype=np.float64)
    for i, classes in enumerate(class_maps):
        if classes is not None:
            per_sample[i] = np.bincount(classes.ravel(), minlength=top)[:top]
    per_class = per_sample[:, 1:].sum(0)
    present = np.flatnonzero(per_class > 0) + 1
    if present.size < 2:
        return weights
    rare = present[np.argsort(per_class[present - 1], kind="stable")][:n_rare]
    boost = np.sqrt(per_class.sum() / per_class[rare - 1])
    extra_draws = extra_fraction * count * boost / boost.sum()
    for cls, draws in zip(rare, extra_draws):
        squared = per_sample[:, cls] ** 2
        weights += draws * squared / squared.sum()
    return weights
