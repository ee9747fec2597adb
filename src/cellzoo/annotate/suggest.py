"""Suggest what to annotate next: rank square patches of unlabelled images for correction.

After the seed "Which Pixel to Annotate" (Lou et al., IEEE TMI 2022, two-stage consistency-based patch
selection), adapted to the correct → fine-tune loop:

*Candidates.* Each image is cut into a non-overlapping grid of ``patch``×``patch`` boxes (as in the seed),
centred, so the leftover strips (less than a box) are split between the borders: a 1000² image gives
3×3 boxes of 256², a 2000² image 7×7. Picked boxes therefore never overlap. Each box is also cut into its four
``patch/2`` quadrants (the seed's sub-patches).

*Features* (the seed used ImageNet ResNet-50 features, which cannot be downloaded here):

* with a model: the model's own encoder features, the deepest level of the RepSNet encoder (FullNet:
  the output of its last dense block), captured with a forward hook (the rest of the network is
  skipped) on blocks of ~1024² with the model's halo as context, then averaged over each box and
  quadrant (global average pooling of the patch's part of the feature map);
* without a model: cheap colour/texture statistics (mean and standard deviation of R, G, B and of the
  gradient magnitude, on a 2× downsampled copy), standardised per dimension.

*Representativeness* (the seed's two-stage clustering): k-means with K1 = ``n`` clusters (at most the
number of candidates) over the patch features; then per cluster k-means with K2 = 4 over the quadrant
features of its patches, keeping the largest sub-cluster; a patch's distance is
``‖f − c1‖ + mean‖f_q − c2‖ + max‖f_q − f_q'‖`` (distance to its cluster centre, mean distance of its
four quadrants to the sub-cluster centre, largest distance between two of its quadrants); lowest is most
representative. ``representativeness = 1 / (1 + distance / median distance)`` (1 = the cluster's centre).
k-means is scipy's ``kmeans2`` (k-means++ start) with 10 seeded restarts, the lowest inertia kept.

*Inconsistency* (needs a model): the model segments the whole image once as it is and once per dihedral
variant (default: mirrored left-right, and turned 90°; the image goes through the engine's tiling, the
labels are mapped back) and, for dense models
with a foreground threshold, once more at the threshold ±0.1 (post-processing only, from the identity
pass's maps). Per box, ``inconsistency = 1 − mean PQ`` between the identity segmentation and each variant
(PQ at IoU > 0.5, so both missed/extra nuclei and moved boundaries count); 0 = all agree; empty in all = 0.

*Nuclear content* (no model needed): the estimated share of each box that is nuclei
(:func:`nuclear_content_map`). Where there is no inconsistency (no model, or a model of the other modality),
it takes the inconsistency's place below: with few corrections, a patch with more nuclei teaches more (on
MoNuSeg, the single most representative patch by colour/texture alone held 16 % nuclei and taught less than
random patches with 35–40 %: benchmarks/results/finetune.md).

*Ranking.* One patch per cluster first (diversity): within a cluster, the more uncertain half (inconsistency
≥ the cluster's median; without inconsistency, nuclear content ≥ its median) is kept and its most
representative patch is the cluster's pick; picks are ordered by ``score = representativeness ×
inconsistency`` (without inconsistency ``representativeness × nuclear content``). If fewer than
``n`` picks result, the remaining non-overlapping candidates follow by score. Picked boxes never overlap
(same image). Same input + seed → same ranked boxes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Generator, Sequence

import numpy as np

from ..types import Progress, check_cancel, run_to_end

#: dihedral variants (flip left-right, quarter turns) segmented besides the identity by default
DEFAULT_VARIANTS: tuple[tuple[bool, int], ...] = ((True, 0), (False, 1))
#: foreground-threshold offsets re-post-processed from the identity pass's maps (dense models)
THRESHOLD_OFFSETS: tuple[float, ...] = (-0.1, 0.1)
#: k-means restarts (the seed: 10)
KMEANS_RESTARTS = 10
#: sub-clusters per cluster (the seed's K2)
SUB_CLUSTERS = 4


@dataclass
class SuggestedPatch:
    """A square box to annotate: rows ``y:y+size``, columns ``x:x+size`` of image ``image_index``."""

    rank: int
    image_index: int
    y: int
    x: int
    size: int
    score: float
    representativeness: float
    inconsistency: float
    cluster: int
    #: estimated share of the box that is nuclei (:func:`nuclear_content_map`)
    nuclear_content: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- candidates
def grid_positions(length: int, size: int) -> list[int]:
    """Starts of the ``length // size`` windows of a non-overlapping grid, centred (the leftover split
    between both ends)."""
    if length <= size:
        return [0]
    count = length // size
    offset = (length - count * size) // 2
    return [offset + i * size for i in range(count)]


def candidate_boxes(shape: tuple[int, int], patch: int) -> list[tuple[int, int, int]]:
    """(y, x, size) of the candidate boxes of an image of ``shape`` (a centred non-overlapping grid);
    an image smaller than ``patch`` gives one box of its shorter side."""
    height, width = int(shape[0]), int(shape[1])
    size = min(patch, height, width)
    return [(y, x, size) for y in grid_positions(height, size) for x in grid_positions(width, size)]


def _quadrants(y: int, x: int, size: int) -> list[tuple[int, int, int, int]]:
    half = size // 2
    return [(y, x, half, half), (y, x + half, half, size - half),
            (y + half, x, size - half, half), (y + half, x + half, size - half, size - half)]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Boxes (image, y, x, size) share pixels."""
    return a[0] == b[0] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[3] and b[2] < a[2] + a[3]


# ----------------------------------------------------------------------------- features
class _Captured(Exception):
    """Raised by the feature hook to stop the forward pass once the features are in hand."""

    def __init__(self, value) -> None:
        super().__init__("features captured")
        self.value = value


def feature_module(model):
    """The module whose output are the model's deepest features, and a description; None if unknown."""
    from torch import nn

    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        return encoder, f"{type(model).__name__} encoder, deepest level"
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Module):
        return blocks, f"{type(model).__name__} last dense block"
    return None


def _box_means(summed: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], stride: int) -> np.ndarray:
    """Mean of a feature map (summed-area table ``summed``, (h+1)×(w+1)×D) over boxes given in image pixels."""
    h, w = summed.shape[0] - 1, summed.shape[1] - 1
    out = np.empty((len(boxes), summed.shape[2]), dtype=np.float64)
    for i, (y, x, bh, bw) in enumerate(boxes):
        y0, x0 = min(y // stride, h - 1), min(x // stride, w - 1)
        y1, x1 = max(min(-(-(y + bh) // stride), h), y0 + 1), max(min(-(-(x + bw) // stride), w), x0 + 1)
        total = summed[y1, x1] - summed[y0, x1] - summed[y1, x0] + summed[y0, x0]
        out[i] = total / ((y1 - y0) * (x1 - x0))
    return out


def _summed_area(feature_map: np.ndarray) -> np.ndarray:
    """H×W×D → (H+1)×(W+1)×D cumulative sums (float64)."""
    table = np.zeros((feature_map.shape[0] + 1, feature_map.shape[1] + 1, feature_map.shape[2]), np.float64)
    np.cumsum(np.cumsum(feature_map, axis=0, dtype=np.float64), axis=1, out=table[1:, 1:])
    return table


def colour_texture_map(prepared: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel statistics (R, G, B, gradient magnitude and their squares) on a 2× downsampled copy."""
    small = prepared[::2, ::2].astype(np.float32) / 255.0
    gray = small.mean(axis=2)
    gy, gx = np.gradient(gray)
    grad = np.hypot(gy, gx)
    channels = [small[..., 0], small[..., 1], small[..., 2], grad]
    stack = np.stack(channels + [c * c for c in channels], axis=2)
    return stack, 2


def nuclear_content_map(prepared: np.ndarray) -> tuple[np.ndarray, int]:
    """Where the nuclei probably are, without a model, on a 2× downsampled copy (h×w×1 of 0/1, stride 2):
    the nuclear stain above its Otsu threshold in this image — the haematoxylin optical density of a
    bright-field image (scikit-image's colour deconvolution), the brightness of a fluorescence image.
    Correlation of its box means with the true nuclear share of 256² MoNuSeg / DSB boxes: 0.63 / 0.81
    (a darkness threshold on MoNuSeg: 0.36)."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    from ..infer.checks import image_modality

    small = np.asarray(prepared[::2, ::2], np.float32)
    if image_modality(prepared) == "fluorescence":
        signal = small.mean(axis=2)
    else:
        signal = rgb2hed(np.clip(small / 255.0, 0.0, 1.0))[..., 0]
    if not np.isfinite(signal).all() or float(signal.max()) <= float(signal.min()):
        return np.zeros(signal.shape + (1,), np.float32), 2
    return (signal > threshold_otsu(signal)).astype(np.float32)[..., None], 2


def _moments_to_features(means: np.ndarray) -> np.ndarray:
    """[mean x…, mean x²…] → [mean…, std…]."""
    half = means.shape[1] // 2
    mean, square = means[:, :half], means[:, half:]
    return np.concatenate([mean, np.sqrt(np.maximum(square - mean * mean, 0.0))], axis=1)


def model_feature_map(model, prepared: np.ndarray, device, block: int = 1024, cancel=None) -> tuple[np.ndarray, int]:
    """The deepest feature map of ``model`` over the whole image (h×w×C float32) and its stride.

    Runs the model on blocks of ``block``² (rounded to the model's size divisor) with its halo as reflected
    context, stopping each forward pass at the hooked module (so the decoders never run)."""
    import torch

    found = feature_module(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no known encoder for features")
    module, _what = found
    divisor = max(1, int(model.size_divisor))
    margin = -(-int(model.halo) // divisor) * divisor
    height, width = prepared.shape[:2]
    core = max(divisor, min(-(-block // divisor) * divisor, -(-max(height, width) // divisor) * divisor))
    rows, cols = -(-height // core), -(-width // core)
    pad = ((margin, rows * core - height + margin), (margin, cols * core - width + margin), (0, 0))
    padded = np.pad(prepared, pad, mode="reflect" if min(height, width) > 1 else "edge")

    def hook(_module, _inputs, output):
        raise _Captured(output[-1] if isinstance(output, (list, tuple)) else output)

    handle = module.register_forward_hook(hook)
    model.eval()
    model.to(device)
    out = None
    stride = 1
    try:
        with torch.inference_mode():
            for r in range(rows):
                for c in range(cols):
                    check_cancel(cancel)
                    window = padded[r * core:(r + 1) * core + 2 * margin, c * core:(c + 1) * core + 2 * margin]
                    tensor = model.preprocess(window)
                    if not isinstance(tensor, torch.Tensor):
                        tensor = torch.as_tensor(np.asarray(tensor))
                    try:
                        model(tensor[None].to(device, dtype=torch.float32))
                        raise RuntimeError(f"the feature hook on {type(module).__name__} did not fire")
                    except _Captured as captured:
                        feats = captured.value[0].float().cpu().numpy()
                    stride = max(1, round(window.shape[0] / feats.shape[1]))
                    m, k = margin // stride, core // stride
                    part = feats[:, m:m + k, m:m + k]
                    if out is None:
                        out = np.zeros((rows * k, cols * k, feats.shape[0]), np.float32)
                    out[r * k:r * k + part.shape[1], c * k:c * k + part.shape[2]] = part.transpose(1, 2, 0)
    finally:
        handle.remove()
    return out[:-(-height // stride), :-(-width // stride)], stride


# ----------------------------------------------------------------------------- clustering
def kmeans(data: np.ndarray, k: int, seed: int, restarts: int = KMEANS_RESTARTS) -> tuple[np.ndarray, np.ndarray]:
    """(centres k×D, labels) of the best of ``restarts`` seeded k-means++ runs (lowest inertia)."""
    from scipy.cluster.vq import kmeans2

    data = np.asarray(data, np.float64)
    k = int(min(k, len(data)))
    if k <= 1:
        return data.mean(axis=0, keepdims=True), np.zeros(len(data), dtype=np.int64)
    if len(np.unique(data, axis=0)) <= k:  # as many distinct points as clusters: each its own
        _, labels = np.unique(data, axis=0, return_inverse=True)
        labels = labels.ravel()
        centres = np.stack([data[labels == j].mean(axis=0) for j in range(labels.max() + 1)])
        return centres, labels.astype(np.int64)
    best = None
    for restart in range(restarts):
        rng = np.random.default_rng([seed, restart])
        with np.errstate(all="ignore"):
            centres, labels = kmeans2(data, k, iter=30, minit="++", seed=rng, missing="raise")
        inertia = float(((data - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, centres, labels)
    _, centres, labels = best
    # renumber clusters by first appearance so equal partitions give equal numbers
    order = {}
    for label in labels:
        order.setdefault(int(label), len(order))
    relabelled = np.array([order[int(label)] for label in labels], dtype=np.int64)
    centres = np.stack([centres[old] for old, _new in sorted(order.items(), key=lambda item: item[1])])
    return centres, relabelled


def two_stage_distance(patch_features: np.ndarray, quadrant_features: np.ndarray, n_clusters: int,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The seed's representativeness distance per patch (lower = more representative) and its cluster.

    ``quadrant_features``: N×4×D (the four sub-patches of each of the N patches)."""
    n = len(patch_features)
    if n <= n_clusters:
        return np.zeros(n), np.arange(n)
    centres, clusters = kmeans(patch_features, n_clusters, seed)
    distance = np.zeros(n)
    for cluster in range(len(centres)):
        members = np.flatnonzero(clusters == cluster)
        if members.size == 0:
            continue
        subs = quadrant_features[members].reshape(-1, quadrant_features.shape[2])
        sub_centres, sub_labels = kmeans(subs, SUB_CLUSTERS, seed + 1 + cluster)
        counts = np.bincount(sub_labels, minlength=len(sub_centres))
        largest = sub_centres[int(np.argmax(counts))]
        for member in members:
            quads = quadrant_features[member]
            to_centre = float(np.linalg.norm(patch_features[member] - centres[cluster]))
            to_sub = float(np.linalg.norm(quads - largest, axis=1).mean())
            spread = max(float(np.linalg.norm(quads[i] - quads[j])) for i in range(4) for j in range(i + 1, 4))
            distance[member] = to_centre + to_sub + spread
    return distance, clusters


# ----------------------------------------------------------------------------- inconsistency
def _apply_numpy(array: np.ndarray, flip: bool, k: int) -> np.ndarray:
    """The dihedral op of ``cellzoo.infer.tta`` on an H×W(×C) array: mirror left-right, then k quarter turns."""
    if flip:
        array = array[:, ::-1]
    return np.ascontiguousarray(np.rot90(array, k, axes=(0, 1)) if k % 4 else array)


def _invert_numpy(array: np.ndarray, flip: bool, k: int) -> np.ndarray:
    if k % 4:
        array = np.rot90(array, -k, axes=(0, 1))
    return np.ascontiguousarray(array[:, ::-1] if flip else array)


def _threshold_name(model) -> str | None:
    params = model.default_postprocess_params() or {}
    for name in ("foreground_threshold", "mask_threshold", "score_threshold"):
        if isinstance(params.get(name), (int, float)):
            return name
    return None


def segmentation_variants(model, image, *, variants=DEFAULT_VARIANTS, thresholds=THRESHOLD_OFFSETS,
                          device="cpu", cancel=None) -> Generator[Progress, None, list[np.ndarray]]:
    """Label maps of ``image``: first the plain segmentation, then one per dihedral variant (mapped back)
    and per threshold offset (dense models: post-processing of the plain pass's maps)."""
    from ..infer.engine import merge_params, resolve_model, segment_iter

    model = resolve_model(model)
    dense = getattr(model, "kind", "dense") == "dense"
    threshold = _threshold_name(model) if dense and thresholds else None
    total = 1 + len(variants) + (len(thresholds) if threshold else 0)
    plain = yield from segment_iter(model, image, device=device, cancel=cancel, keep_maps=threshold is not None)
    labels = [plain.labels]
    yield Progress("variants", 1, total, "segmented as is")
    for index, (flip, k) in enumerate(variants):
        check_cancel(cancel)
        result = yield from segment_iter(model, _apply_numpy(np.asarray(image), flip, k), device=device,
                                         cancel=cancel)
        labels.append(_invert_numpy(result.labels, flip, k))
        yield Progress("variants", 2 + index, total, f"segmented flipped={flip} rotated={90 * k}°")
    if threshold is not None:
        maps = plain.meta.pop("maps")
        base = merge_params(model, None)[threshold]
        for index, offset in enumerate(thresholds):
            check_cancel(cancel)
            value = float(min(max(base + offset, 0.05), 0.95))
            params = merge_params(model, {threshold: value})
            shifted = np.asarray(model.postprocess(maps, **params).labels)
            if shifted.shape != plain.labels.shape:  # the maps are at the scale the engine used (e.g. "auto")
                from skimage.transform import resize

                shifted = resize(shifted, plain.labels.shape, order=0, preserve_range=True,
                                 anti_aliasing=False).astype(np.int32)
            labels.append(shifted)
            yield Progress("variants", 2 + len(variants) + index, total, f"{threshold} {value:.2f}")
    return labels


def box_inconsistency(labels: Sequence[np.ndarray], boxes: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Per box, 1 − mean PQ (IoU > 0.5) between ``labels[0]`` and each other label map inside the box."""
    from ..metrics.instance import panoptic_quality

    out = np.zeros(len(boxes))
    if len(labels) < 2:
        return out
    for i, (y, x, size) in enumerate(boxes):
        reference = labels[0][y:y + size, x:x + size]
        scores = [panoptic_quality(reference, other[y:y + size, x:x + size])["pq"] for other in labels[1:]]
        out[i] = 1.0 - float(np.mean(scores))
    return out


# ----------------------------------------------------------------------------- ranking
def rank_patches(boxes: Sequence[tuple[int, int, int, int]], distance: np.ndarray, clusters: np.ndarray,
                 inconsistency: np.ndarray | None, n: int, content: np.ndarray | None = None) -> list[SuggestedPatch]:
    """Pick up to ``n`` non-overlapping boxes (image, y, x, size), one per cluster first (see module doc).
    ``content``: estimated nuclear share per box; it takes the inconsistency's place where there is none."""
    distance = np.asarray(distance, float)
    reference = float(np.median(distance)) if distance.size else 0.0
    representativeness = 1.0 / (1.0 + distance / reference) if reference > 0 else np.ones_like(distance)
    content = np.zeros_like(distance) if content is None else np.asarray(content, float)
    if inconsistency is not None:
        inconsistency = np.asarray(inconsistency, float)
        weight = inconsistency
    else:
        inconsistency = np.zeros_like(distance)
        weight = content if content.any() else None
    uncertain = weight is not None
    score = representativeness * weight if uncertain else representativeness.copy()
    picked: list[int] = []

    def free(index: int) -> bool:
        return all(not _overlaps(boxes[index], boxes[other]) for other in picked)

    # each cluster's pick: most representative among its more uncertain half
    proposals = []
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        if uncertain:
            members = members[weight[members] >= np.median(weight[members])]
        order = members[np.lexsort((members, distance[members]))]
        proposals.append((cluster, order))
    proposals.sort(key=lambda item: (-score[item[1][0]], int(item[1][0])))
    for _cluster, order in proposals:
        if len(picked) >= n:
            break
        for index in order:
            if free(int(index)):
                picked.append(int(index))
                break
    # then the best remaining by score, still without overlaps
    for index in np.lexsort((np.arange(len(score)), distance, -score)):
        if len(picked) >= n:
            break
        if int(index) not in picked and free(int(index)):
            picked.append(int(index))
    first = picked[:len(proposals)]
    rest = picked[len(proposals):]
    first.sort(key=lambda i: (-score[i], i))
    return [SuggestedPatch(rank=rank + 1, image_index=int(boxes[i][0]), y=int(boxes[i][1]), x=int(boxes[i][2]),
                           size=int(boxes[i][3]), score=float(score[i]),
                           representativeness=float(representativeness[i]), inconsistency=float(inconsistency[i]),
                           cluster=int(clusters[i]), nuclear_content=float(content[i]))
            for rank, i in enumerate(first + rest)]


def _as_image_list(images) -> list:
    """One image (any array-like that is not a list/tuple) or a list of them → a list."""
    if isinstance(images, np.ndarray) or (hasattr(images, "__array__") and not isinstance(images, (list, tuple))):
        return [images]
    images = list(images)
    if not images:
        raise ValueError("no images given to suggest patches from; pass an image array or a list of them")
    return images


def foreign_images(model, images) -> str | None:
    """Why ``model`` cannot judge ``images`` (it was trained on the other modality: fluorescence vs a
    brightfield stain, :func:`cellzoo.infer.checks.modality_warning` on the first image), else None."""
    from ..infer.checks import modality_warning

    metadata = getattr(model, "metadata", None) or {}
    return modality_warning(np.asarray(images[0]), metadata) if len(images) else None


def suggest_iter(images, model=None, *, n: int = 6, patch: int = 256, device: str = "cpu", seed: int = 0,
                 cancel=None, variants=DEFAULT_VARIANTS, thresholds=THRESHOLD_OFFSETS,
                 features: str = "auto", nuclear_share: bool = True) -> Generator[Any, None, list[SuggestedPatch]]:
    """Rank ``patch``² boxes of ``images`` (one array or a list) to annotate next; returns up to ``n``.

    ``model``: a CellModel, zoo name or .safetensors path (features and inconsistency), or None
    (colour/texture features, representativeness only). ``features``: ``"model"``, ``"image"`` (colour /
    texture, and no inconsistency) or ``"auto"``: the model's own where it was trained on this kind of image,
    the image's where it was not (a fluorescence model on H&E, or the reverse) — a model that cannot see the
    nuclei clusters and disagrees about the wrong things, as the seed's generic ImageNet features did not;
    measured in benchmarks/results/finetune.md. ``nuclear_share``: without inconsistency, rank by
    representativeness × the estimated nuclear share (default) or by representativeness alone. Yields ``Progress("suggest", done, total)`` and a
    :class:`~cellzoo.types.Message` saying which features were used. See the module docstring for the method."""
    from ..infer.prepare import prepare_image
    from ..types import Message

    if int(n) < 1:
        raise ValueError(f"n must be at least 1 (the number of patches to suggest); got {n}")
    if int(patch) < 16:
        raise ValueError(f"patch must be at least 16 pixels; got {patch}")
    if features not in ("auto", "model", "image"):
        raise ValueError(f"features must be 'auto', 'model' or 'image'; got {features!r}")
    image_list = _as_image_list(images)
    use_model_features = False
    if model is not None:
        from ..infer.device import select_device
        from ..infer.engine import resolve_model

        model = resolve_model(model)
        torch_device, _ = select_device(device)
        foreign = foreign_images(model, image_list) if features == "auto" else None
        if features == "image" or foreign:
            yield Message("ranking by colour and texture only (representativeness, no inconsistency)"
                          + (f": {foreign}" if foreign else ""))
            model = None
        else:
            use_model_features = feature_module(model) is not None
    steps_per_image = 1 + (1 + len(variants) + len(thresholds) if model is not None else 0)
    total = len(image_list) * steps_per_image + 1
    done = 0
    yield Progress("suggest", 0, total, "features")
    boxes: list[tuple[int, int, int, int]] = []
    patch_features, quadrant_features, inconsistency, content = [], [], [], []
    for index, image in enumerate(image_list):
        check_cancel(cancel)
        array = np.asarray(image)
        prepared = prepare_image(array)
        image_boxes = candidate_boxes(prepared.shape[:2], int(patch))
        if use_model_features:
            feature_map, stride = model_feature_map(model, prepared, torch_device, cancel=cancel)
        else:
            feature_map, stride = colour_texture_map(prepared)
        summed = _summed_area(feature_map)
        patch_features.append(_box_means(summed, [(y, x, s, s) for y, x, s in image_boxes], stride))
        quads = [q for y, x, s in image_boxes for q in _quadrants(y, x, s)]
        quadrant_features.append(_box_means(summed, quads, stride).reshape(len(image_boxes), 4, -1))
        content_map, content_stride = nuclear_content_map(prepared)
        content.append(_box_means(_summed_area(content_map), [(y, x, s, s) for y, x, s in image_boxes],
                                  content_stride)[:, 0])
        done += 1
        yield Progress("suggest", done, total, f"image {index + 1}: features")
        if model is not None:
            labels = yield from _forward_progress(
                segmentation_variants(model, array, variants=variants, thresholds=thresholds, device=device,
                                      cancel=cancel), done, total, index)
            done += steps_per_image - 1
            inconsistency.append(box_inconsistency(labels, image_boxes))
        boxes.extend((index, y, x, s) for y, x, s in image_boxes)
    check_cancel(cancel)
    features = np.concatenate(patch_features)
    quadrants = np.concatenate(quadrant_features)
    if not use_model_features:
        # the hand-made statistics have different units: standardised (same scaling for the quadrants)
        features = _moments_to_features(features)
        quadrants = _moments_to_features(quadrants.reshape(-1, quadrants.shape[2])).reshape(len(features), 4, -1)
        mean, std = features.mean(axis=0), features.std(axis=0)
        std[std == 0] = 1.0
        features = (features - mean) / std
        quadrants = (quadrants - mean) / std
    distance, clusters = two_stage_distance(features, quadrants, min(int(n), len(features)), seed)
    result = rank_patches(boxes, distance, clusters,
                          np.concatenate(inconsistency) if model is not None else None, int(n),
                          content=np.concatenate(content) if nuclear_share else None)
    yield Progress("suggest", total, total, f"{len(result)} patches suggested")
    return result


def _forward_progress(gen, done: int, total: int, index: int):
    """Re-yield the variant passes as overall ``suggest`` progress."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Progress) and event.stage == "variants":
            yield Progress("suggest", done + event.done, total, f"image {index + 1}: {event.message}")


def suggest_patches(images, model=None, **kwargs) -> list[SuggestedPatch]:
    """:func:`suggest_iter` run to the end."""
    return run_to_end(suggest_iter(images, model, **kwargs))


# ----------------------------------------------------------------------------- output
CSV_COLUMNS = ("rank", "image", "y", "x", "size", "score", "representativeness", "inconsistency", "nuclear_content",
               "cluster")


def suggestion_rows(patches: Sequence[SuggestedPatch], image_names: Sequence[str] | None = None) -> list[dict]:
    """One dict per patch with :data:`CSV_COLUMNS` (``image``: its name, else its index)."""
    rows = []
    for p in patches:
        name = image_names[p.image_index] if image_names is not None else str(p.image_index)
        rows.append({"rank": p.rank, "image": name, "y": p.y, "x": p.x, "size": p.size,
                     "score": round(p.score, 6), "representativeness": round(p.representativeness, 6),
                     "inconsistency": round(p.inconsistency, 6), "nuclear_content": round(p.nuclear_content, 6),
                     "cluster": p.cluster})
    return rows


def write_suggestions_csv(path, patches: Sequence[SuggestedPatch], image_names: Sequence[str] | None = None):
    """Write the ranked table as CSV (atomically); returns the path."""
    import csv
    import io
    from pathlib import Path

    from .._atomic import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(suggestion_rows(patches, image_names))
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def suggestions_geojson(patches: Sequence[SuggestedPatch]) -> dict:
    """A QuPath-style FeatureCollection of the boxes as rectangle annotations named by rank (pixel-corner
    (x, y) coordinates, as QuPath's File › Import objects expects), scores as measurements."""
    features = []
    for p in patches:
        x0, y0, x1, y1 = p.x, p.y, p.x + p.size, p.y + p.size
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        features.append({"type": "Feature", "id": f"suggestion-{p.rank}",
                         "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation", "name": str(p.rank),
                                        "classification": {"name": "Suggested", "color": [255, 200, 0]},
                                        "measurements": {"rank": p.rank, "score": p.score,
                                                         "representativeness": p.representativeness,
                                                         "inconsistency": p.inconsistency,
                                                         "nuclear_content": p.nuclear_content,
                                                         "cluster": p.cluster}}})
    return {"type": "FeatureCollection", "features": features}
