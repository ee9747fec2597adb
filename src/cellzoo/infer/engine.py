"""The tiled inference engine: one generator used by napari, the CLI, the trainer and the tests.

Dense families: tiles (core + halo) are run in batches, activated, cropped to their cores and
blended with overlap ramps into full-image maps; the model's post-processing then runs once on
the stitched maps, so tile borders leave no seams. Detection families: tiles go to
``cellzoo.infer.detection`` (pastes detections into image coordinates, de-duplicates across tiles).
"""
from __future__ import annotations

import importlib
import math
import os
import time
from pathlib import Path
from typing import Any, Generator, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..models.base import CellModel
from ..types import Instances, Message, Progress, check_cancel, run_to_end
from .device import amp_dtype, autocast, select_device
from .prepare import prepare_image
from .tiling import TilePlan, plan_tiles, reflect_pad, round_up
from .tta import DIHEDRAL_OPS, IDENTITY, DihedralOp

#: short names of the compute precision, shown with the device in every CLI line, the widget and Instances.meta
PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32", torch.float32: "fp32"}

#: rough activation memory (bytes per input pixel, fp32) when a model does not declare its own
DEFAULT_BYTES_PER_PIXEL = 6 * 1024

#: what a device allocation failure raises (torch.OutOfMemoryError from torch 2.5, torch.cuda's alias before);
#: the engine then halves the tile and retries, down to the model's min_tile (``Instances.meta["oom_fallback"]``)
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def resolve_model(model_or_name: CellModel | str | os.PathLike, device: str | torch.device = "cpu") -> CellModel:
    """A model instance, a ``.safetensors`` path, or a zoo name (via ``cellzoo.zoo.load_model``)."""
    if isinstance(model_or_name, CellModel):
        return model_or_name
    if isinstance(model_or_name, torch.nn.Module):
        raise ValueError(f"{type(model_or_name).__name__} is not a cellzoo model (CellModel subclass)")
    text = str(model_or_name)
    load_model = _zoo_loader()
    if load_model is not None:
        loaded = load_model(text, device="cpu") if "device" in _parameters(load_model) else load_model(text)
        return loaded[0] if isinstance(loaded, tuple) else loaded
    path = Path(text).expanduser()
    if path.suffix == ".safetensors" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        from ..zoo.weights import load_weights

        return load_weights(path, device="cpu")[0]
    raise ValueError(f"cannot resolve model name {text!r}: the model zoo is not available; "
                     "pass a .safetensors file instead")


def _zoo_loader():
    for module_name in ("cellzoo.zoo", "cellzoo.zoo.loading"):
        try:
            loader = getattr(importlib.import_module(module_name), "load_model", None)
        except ImportError:
            loader = None
        if loader is not None:
            return loader
    return None


def _parameters(fn) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set()


def merge_params(model: CellModel, params: dict[str, Any] | None) -> dict[str, Any]:
    """The model's default post-processing parameters updated by ``params`` (unknown names are errors)."""
    merged = dict(model.default_postprocess_params() or {})
    for key, value in (params or {}).items():
        if merged and key not in merged and key not in ("score_threshold", "mask_threshold"):
            raise ValueError(f"unknown post-processing parameter {key!r} for {model.family or type(model).__name__}; "
                             f"valid: {', '.join(sorted(merged))}")
        merged[key] = checked_param(key, value, merged.get(key))
    return merged


def checked_param(key: str, value: Any, default: Any) -> Any:
    """A post-processing value checked against its default's kind: where the default is a number the value
    must be a finite number (NaN would silently give 0 objects, text such as 'abc' a TypeError deep in
    the post-processing), ≥ 0 for sizes, areas and distances."""
    from ..data.validate import finite_number

    numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
    if not numeric_default and not (isinstance(value, float) and not math.isfinite(value)):
        return value
    minimum = 0 if key.endswith(("_size", "_distance", "_area")) else None
    number = finite_number(value, f"post-processing parameter {key}", minimum=minimum)
    return int(number) if isinstance(value, int) and not isinstance(value, bool) else number


#: pixels one forward pass may hold on a CPU (tiles × tile area): what 4 tiles of 1024² held before tiles
#: could grow; the activations' memory stays the same while a large image is cut into fewer, larger tiles
CPU_PASS_PIXELS = 4 * 1024 * 1024


def auto_tile_size(model: CellModel, device: torch.device, batch_size: int = 1,
                   image_shape: tuple[int, int] | None = None) -> int:
    """Tile edge (incl. halo) for ``device``: at most 2048 px (CPU, CUDA; 1024 on MPS), at most what fits one
    tile's activations into half the free memory (``model.inference_bytes_per_pixel`` or a 6 KiB/px
    default); an image up to 25 % larger than that runs in one pass rather than as mostly-overlapping tiles.
    On a CPU the batch then shrinks to keep :data:`CPU_PASS_PIXELS` per pass (:func:`tiles_per_pass`).

    Large tiles because every tile recomputes its halo: with the 64-px halo of cellzoo-he, 1024-px tiles
    made a 2048² image compute 1.6× its pixels and a 4096² one 1.5× (one 1152² pass of a 1024² image:
    1.27×), so throughput fell with the image size; 2048-px tiles: 2048² in one pass (1.13×), 4096² 1.27×.
    Measured (benchmarks/results/tiling.md, 2 cores): 2048² 1.35× (fp32) / 1.41× (bf16) as fast, 4096²
    1.07× / 1.00×, the same instances (AJI / PQ within 0.0001) and peak memory."""
    cap = 1024 if device.type == "mps" else 2048
    bytes_per_pixel = float(getattr(model, "inference_bytes_per_pixel", DEFAULT_BYTES_PER_PIXEL))
    budget = _free_memory(device) * 0.5 / bytes_per_pixel  # pixels of activations that fit
    if device.type == "cpu":
        budget = min(budget, CPU_PASS_PIXELS * 1.6)  # never a pass much above the CPU budget
        per_tile = budget
    else:
        per_tile = budget / max(1, batch_size)
    if image_shape is not None:
        # rounded up to the size divisor as the tile plan will round it (unrounded, a 1000² image with a
        # 64-px halo asked for 1128 px, the plan rounded that down to 1120 < 1136 and cut it into 4 tiles)
        whole = round_up(max(image_shape) + 2 * model.halo, max(1, int(model.size_divisor)))
        if whole <= 1.25 * cap and whole * whole <= budget:
            return whole
    side = int(math.sqrt(max(per_tile, 1.0)))
    return max(model.min_tile, min(cap, side))


def tiles_per_pass(device: torch.device, tile: int, batch_size: int, auto_tile: bool) -> int:
    """Tiles per forward pass: ``batch_size``, except on a CPU with automatic tiles, where big tiles go fewer
    at a time so a pass holds about :data:`CPU_PASS_PIXELS` (at least one tile)."""
    if device.type != "cpu" or not auto_tile:
        return batch_size
    return max(1, min(batch_size, int(CPU_PASS_PIXELS * 1.3) // max(1, tile * tile)))


def _free_memory(device: torch.device) -> float:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4e9


def _activate(model: CellModel, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    maps = {}
    for name, how in model.dense_maps.items():
        raw = outputs[name].float()
        if how == "softmax":
            maps[name] = torch.softmax(raw, dim=1)
        elif how == "sigmoid":
            maps[name] = torch.sigmoid(raw)
        elif how == "identity":
            maps[name] = raw
        else:
            raise RuntimeError(f"unknown activation {how!r} for map {name!r} in {type(model).__name__}.dense_maps")
    return maps


def predict_maps(model: CellModel, batch: torch.Tensor, tta: bool = False,
                 window: tuple[int, int, int, int] | None = None) -> dict[str, torch.Tensor]:
    """Activated dense maps for an N×C×H×W batch, averaged over the 8 dihedral ops with ``tta``.

    ``window``: (top, left, height, width) in input pixels, the part of each tile to return (the engine
    passes the tile core). A model with ``output_stride`` > 1 then upsamples only that part, with the
    same values as upsampling the whole tile; activations always come after the upsampling, as in training.
    """
    ops: Iterable[DihedralOp] = DIHEDRAL_OPS if tta else (IDENTITY,)
    hook = getattr(model, "tta_transform_maps", None)
    stride = int(getattr(model, "output_stride", 1))
    total: dict[str, torch.Tensor] = {}
    count = 0
    for op in ops:
        outputs = model(op.apply(batch), full_resolution=False) if stride > 1 else model(op.apply(batch))
        missing = set(model.dense_maps) - set(outputs)
        if missing:
            raise RuntimeError(f"{type(model).__name__}.forward did not return the dense map(s) {sorted(missing)}")
        raw = {name: outputs[name] for name in model.dense_maps}
        if not op.is_identity:
            # spatial inversion and channel re-ordering commute with the upsampling and the activations
            raw = {name: op.invert(value) for name, value in raw.items()}
            if hook is not None:
                raw = hook(raw, op)
        maps = _activate(model, _upsample_window(raw, stride, window, tuple(batch.shape[-2:])))
        for name, value in maps.items():
            total[name] = value if name not in total else total[name] + value
        count += 1
    return {name: value / count for name, value in total.items()} if count > 1 else total


def _upsample_window(raw: dict[str, torch.Tensor], stride: int, window: tuple[int, int, int, int] | None,
                     shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """``window`` of maps given at 1/``stride`` of ``shape``, upsampled ×stride (bilinear,
    align_corners=False) in fp32. That interpolation reads only the two nearest low-resolution pixels
    per axis, so upsampling the window widened by one low-resolution pixel per side (less at the tile
    border, where the whole-tile interpolation clamps too) and cropping gives exactly the values of the
    whole-tile upsampling, at a fraction of the cost when the halo is wide."""
    top, left, height, width = window if window is not None else (0, 0, *shape)
    if stride == 1:
        return {name: value[:, :, top:top + height, left:left + width] for name, value in raw.items()}
    if top % stride or left % stride or height % stride or width % stride:
        raise ValueError(f"window {window} is not on the model's output grid (stride {stride})")
    out = {}
    for name, value in raw.items():
        low_h, low_w = value.shape[-2:]
        y0, x0 = max(top // stride - 1, 0), max(left // stride - 1, 0)
        y1, x1 = min((top + height) // stride + 1, low_h), min((left + width) // stride + 1, low_w)
        # contiguous NCHW fp32 before upsampling: cheap at low resolution, and the full-resolution maps
        # then go to numpy without another copy
        part = value[:, :, y0:y1, x0:x1].float().contiguous()
        up = F.interpolate(part, scale_factor=stride, mode="bilinear", align_corners=False)
        dy, dx = top - y0 * stride, left - x0 * stride
        out[name] = up[:, :, dy:dy + height, dx:dx + width]
    return out


def segment_iter(model: CellModel | str, image, *, tile: int | None = None, batch_size: int = 4,
                 device: str | torch.device = "auto", tta: bool = False, amp: bool | str = True,
                 params: dict[str, Any] | None = None, channel: int | None = None, normalize: str = "auto",
                 cancel=None, channels_last: bool | None = None, keep_maps: bool = False,
                 scale: float | str | None = None) -> Generator[Any, None, Instances]:
    """Segment one 2-D image; yields ``Progress("tiles", done, total)`` and returns :class:`Instances`.

    ``tile``: tile edge in pixels including the halo (``None``: chosen from free memory); images
    smaller than a tile run in one pass. ``amp``: bf16 autocast on CPUs with native bf16, bf16/fp16 on
    CUDA; a model with ``cpu_bf16_ok = False`` stays fp32 on CPU unless ``amp="bf16"``. ``meta`` of the
    result holds device, seconds (total, network, post-processing), tiles, amp, scale; with ``keep_maps``
    (dense models) also ``maps``, the stitched activated maps (C×H×W float32 each, at the scale used).
    When the device runs out of memory the tile is halved and the pass retried (down to the model's
    ``min_tile``; a ``Message`` says so) and ``meta["oom_fallback"]`` records the tile sizes that failed.

    ``scale``: segment the image resized by this factor (> 1 when the objects are smaller than those the
    model was trained on) and return labels at the image's own size. ``"auto"``: a first pass at scale 1
    measures the median object area and, for a model that declares the area it segments best
    (``metadata["object_area"]``), a second pass runs at sqrt(object_area / median area), clipped to the
    model's ``scale_range``, unless that is within 15 % of 1. ``None``: the model's own default
    (``metadata["default_scale"]``, else 1).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be a positive number of pixels; got {tile}")
    started = time.perf_counter()
    model = resolve_model(model)
    scale = resolve_scale(model, scale)
    prepared = prepare_image(image, channel=channel, normalize=normalize)
    run = dict(tile=tile, batch_size=batch_size, device=device, tta=tta, amp=amp, params=params, cancel=cancel,
               channels_last=channels_last, keep_maps=keep_maps)
    factor = 1.0 if scale == "auto" else scale
    result = yield from (_segment_scaled(model, prepared, factor, run) if factor != 1.0
                         else _segment_prepared(model, prepared, **run))
    if scale == "auto":
        result.meta["scale_mode"] = "auto"
        chosen = auto_scale_factor(model, result.labels)
        if chosen is not None:
            first_pass = result.meta["seconds"]
            result = yield from _segment_scaled(model, prepared, chosen, run)
            result.meta.update(scale_mode="auto", first_pass_seconds=first_pass)
    result.meta.setdefault("scale", 1.0)
    result.meta["seconds"] = time.perf_counter() - started  # everything: preparation, resizing, both passes
    return result


#: "auto" scaling needs this many objects in the first pass to trust their median area
AUTO_SCALE_MIN_OBJECTS = 5


#: the resize factors ``scale`` accepts (beyond them an image becomes a few pixels or a huge one)
SCALE_LIMITS = (0.05, 20.0)


def scale_factor_problem(scale: float | str) -> str | None:
    """What is wrong with a numeric ``scale`` (a number or its text), said for the user; None when it is a
    usable factor. "auto" is checked against the model by :func:`resolve_scale`."""
    low, high = SCALE_LIMITS
    try:
        value = float(scale.strip() if isinstance(scale, str) else scale)
    except (TypeError, ValueError):
        return f"scale {scale!r} is not a number: give a resize factor such as 0.5 or 2, or auto"
    if not math.isfinite(value) or not low <= value <= high:
        return f"scale {value:g} is out of range: give a resize factor between {low:g} and {high:g}, or auto"
    return None


def resolve_scale(model: CellModel, scale: float | str | None) -> float | str:
    """A positive factor or "auto" (checked against what the model declares)."""
    metadata = getattr(model, "metadata", None) or {}
    if scale is None:
        scale = metadata.get("default_scale", 1.0)
    if isinstance(scale, str):
        scale = scale.strip().lower()
    if scale == "auto":
        if not metadata.get("object_area"):
            raise ValueError(f"scale 'auto' needs the model to declare the object size it segments best "
                             f"(metadata 'object_area'), and {metadata.get('name') or model.family} does "
                             "not; give the factor as a number instead (e.g. 0.5 when the nuclei are "
                             "twice as large as in the model's training images)")
        return "auto"
    # a number or its text; scale_factor_problem says what is wrong with anything else
    problem = scale_factor_problem(scale)
    if problem:
        raise ValueError(problem)
    return float(scale)


def auto_scale_factor(model: CellModel, labels: np.ndarray) -> float | None:
    """The model's scale "auto" factor for an image whose first pass gave ``labels`` (see
    :func:`scale_for_object_area`, with the model's ``object_area`` and ``scale_range``)."""
    metadata = getattr(model, "metadata", None) or {}
    return scale_for_object_area(labels, float(metadata["object_area"]), metadata.get("scale_range", (0.5, 2.0)))


def scale_for_object_area(labels: np.ndarray, object_area: float, scale_range=(0.5, 2.0),
                          min_objects: int = AUTO_SCALE_MIN_OBJECTS) -> float | None:
    """The resize factor that brings the median object area of ``labels`` to ``object_area``, clipped to
    ``scale_range``; None when there are fewer than ``min_objects`` objects or the factor is within 15 % of
    1. Shared by inference (scale "auto"), its tuning and training at that size, so all three agree."""
    from ..data.validate import finite_number

    object_area = finite_number(object_area, "the model's object_area (median nucleus area in pixels)", minimum=0,
                                exclusive_minimum=True)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if areas.size < max(1, min_objects):
        return None
    low, high = scale_range
    factor = float(np.clip(math.sqrt(float(object_area) / float(np.median(areas))), low, high))
    return None if abs(factor - 1.0) < 0.15 else factor


def _segment_scaled(model: CellModel, prepared: np.ndarray, factor: float, run: dict) -> Generator[Any, None, Instances]:
    """Segment ``prepared`` resized by ``factor`` and bring labels (and classes) back to its size."""
    from skimage.transform import resize

    height, width = prepared.shape[:2]
    shape = (max(1, round(height * factor)), max(1, round(width * factor)))
    resized = resize(prepared, shape + prepared.shape[2:], order=1, preserve_range=True,
                     anti_aliasing=factor < 1).astype(np.float32)
    result = yield from _segment_prepared(model, resized, **run)
    # nearest-neighbour back to the image grid; an object smaller than one output pixel can vanish
    labels = resize(result.labels, (height, width), order=0, preserve_range=True, anti_aliasing=False)
    result.labels = np.ascontiguousarray(labels, dtype=np.int32)
    if result.classes is not None:
        result.classes = np.ascontiguousarray(resize(result.classes, (height, width), order=0, preserve_range=True,
                                                     anti_aliasing=False), dtype=result.classes.dtype)
    present = set(np.unique(result.labels).tolist()) - {0}
    result.class_of = {k: v for k, v in result.class_of.items() if k in present}
    result.scores = {k: v for k, v in result.scores.items() if k in present}
    result.meta.update(scale=factor, scaled_shape=list(shape), shape=[int(height), int(width)])
    return result


def _segment_prepared(model: CellModel, prepared: np.ndarray, *, tile, batch_size, device, tta, amp, params, cancel,
                      channels_last, keep_maps) -> Generator[Any, None, Instances]:
    """One pass of the engine over an image already through ``prepare_image``."""
    started = time.perf_counter()
    torch_device, device_name = select_device(device)
    params = merge_params(model, params)
    dtype = amp_dtype(torch_device, amp)
    if amp is True and torch_device.type == "cpu" and not getattr(model, "cpu_bf16_ok", True):
        dtype = None  # the model says its outputs are too sensitive to CPU bf16 (explicit amp="bf16" still runs)
    if channels_last is None:
        channels_last = torch_device.type == "cpu"
    model.eval()
    model.to(torch_device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    height, width = prepared.shape[:2]
    tile_size = tile or auto_tile_size(model, torch_device, batch_size, (height, width))
    requested_batch = batch_size
    failed_tiles: list[int] = []  # tile edges that ran out of device memory, in order
    while True:
        plan = plan_tiles(height, width, tile_size, model.halo, model.size_divisor, model.min_tile)
        batch_size = tiles_per_pass(torch_device, max(plan.tile_shape), requested_batch, auto_tile=tile is None)
        padded = reflect_pad(prepared, plan.pad_width())
        tensor = model.preprocess(padded)
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(np.asarray(tensor))
        meta = {"device": device_name, "tiles": len(plan), "tile": list(plan.tile_shape), "tta": bool(tta),
                "amp": str(dtype).replace("torch.", "") if dtype is not None else "fp32",
                "precision": PRECISION_NAMES.get(dtype, "fp32"), "tiles_per_pass": batch_size,
                "shape": [int(height), int(width)]}
        yield Progress("tiles", 0, len(plan))
        try:
            if model.kind == "detection":
                from .detection import segment_detection_iter  # owned by the detection families

                instances = yield from segment_detection_iter(model, tensor, plan, batch_size=batch_size,
                                                              device=torch_device, dtype=dtype,
                                                              channels_last=channels_last, params=params,
                                                              cancel=cancel, tta=tta)
            else:
                maps = yield from _dense_maps(model, tensor, plan, batch_size, torch_device, dtype, channels_last,
                                              tta, cancel)
            break
        except OUT_OF_MEMORY:
            used = max(plan.tile_shape)
            if used <= model.min_tile:
                raise
            failed_tiles.append(used)
        # outside the except block, so the traceback's frames (and their tensors) are already released
        del tensor, padded
        release_device_memory(torch_device)
        tile_size = max(model.min_tile, used // 2)
        yield Message(f"out of {torch_device.type} memory with {used}-px tiles; retrying with {tile_size}-px tiles",
                      "warning")
    if failed_tiles:
        meta["oom_fallback"] = {"failed_tiles": failed_tiles, "tile": max(plan.tile_shape),
                                "note": f"ran out of {torch_device.type} memory with tiles of "
                                        f"{', '.join(map(str, failed_tiles))} px; finished with "
                                        f"{max(plan.tile_shape)} px"}
    network_seconds = time.perf_counter() - started
    if model.kind == "detection":
        post_seconds = 0.0
    else:
        check_cancel(cancel)
        post_started = time.perf_counter()
        instances = model.postprocess(maps, **params)
        post_seconds = time.perf_counter() - post_started
        check_cancel(cancel)  # post-processing can take seconds: stop before any further stage
        if keep_maps:
            meta["maps"] = maps
    instances.labels = np.ascontiguousarray(instances.labels, dtype=np.int32)
    if not instances.class_names or instances.class_names == ["background", "nucleus"]:
        instances.class_names = model.class_names
    meta.update(seconds=time.perf_counter() - started, network_seconds=network_seconds,
                postprocess_seconds=post_seconds)
    instances.meta.update(meta)
    return instances


def release_device_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so that smaller tiles can be allocated."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _batches(plan: TilePlan, batch_size: int):
    positions = plan.positions
    for start in range(0, len(positions), batch_size):
        yield positions[start:start + batch_size]


def _dense_maps(model, tensor, plan: TilePlan, batch_size, device, dtype, channels_last, tta, cancel):
    height, width, halo = plan.height, plan.width, plan.halo
    tile_h, tile_w = plan.tile_shape
    sums: dict[str, np.ndarray] = {}
    weight_sum = np.zeros((height, width), dtype=np.float32)
    done = 0
    with torch.inference_mode():
        for group in _batches(plan, batch_size):
            check_cancel(cancel)
            batch = torch.stack([tensor[:, y:y + tile_h, x:x + tile_w] for _i, _j, y, x in group])
            batch = batch.to(device, dtype=torch.float32, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                maps = predict_maps(model, batch, tta, window=(halo, halo, plan.rows.core, plan.cols.core))
            cores = {name: value.float().cpu().numpy() for name, value in maps.items()}
            if len(plan) == 1:  # one pass: nothing to blend (all weights are 1), so skip the extra copies
                yield Progress("tiles", 1, 1)
                return {name: np.ascontiguousarray(value[0, :, :height, :width]) for name, value in cores.items()}
            for index, (row, col, y, x) in enumerate(group):
                core_h, core_w = plan.core_extent(y, x)
                weights = plan.weights(row, col)[:core_h, :core_w]
                weight_sum[y:y + core_h, x:x + core_w] += weights
                for name, value in cores.items():
                    if name not in sums:
                        sums[name] = np.zeros((value.shape[1], height, width), dtype=np.float32)
                    sums[name][:, y:y + core_h, x:x + core_w] += value[index, :, :core_h, :core_w] * weights
            done += len(group)
            yield Progress("tiles", done, len(plan))
    for value in sums.values():
        value /= weight_sum
    return sums


def segment(model_or_name: CellModel | str, image, on_event=None, **kwargs) -> Instances:
    """Run :func:`segment_iter` to the end and return its :class:`Instances`."""
    return run_to_end(segment_iter(model_or_name, image, **kwargs), on_event)


def segment_stack_iter(model: CellModel | str, stack, **kwargs) -> Generator[Any, None, list[Instances]]:
    """Segment each plane of a Z/T×H×W or Z/T×H×W×C stack (numpy, dask or zarr) on its own.

    Yields ``Progress("planes", done, total)``; returns a list of :class:`Instances`.
    """
    shape = getattr(stack, "shape", None)
    if shape is None:
        stack = np.asarray(stack)
        shape = stack.shape
    if len(shape) not in (3, 4):
        raise ValueError(f"expected a stack of planes (Z×H×W or Z×H×W×C); got shape {tuple(shape)}")
    model = resolve_model(model)
    cancel = kwargs.get("cancel")
    results: list[Instances] = []
    total = int(shape[0])
    yield Progress("planes", 0, total)
    for index in range(total):
        check_cancel(cancel)
        plane = np.asarray(stack[index])
        results.append(run_to_end(segment_iter(model, plane, **kwargs)))
        yield Progress("planes", index + 1, total)
    return results
