"""Reading and writing images, instance maps and class maps.

Images keep the file's native dtype and layout (H×W, H×W×C, or pages×H×W[×C] for multi-page TIFF).
Instance maps are returned as int32 and written as zlib-compressed uint16 TIFF (uint32 when ids do not
fit); class maps as uint8. Every write is atomic (temporary file + rename).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from cellzoo._atomic import atomic_path
from cellzoo.data.validate import check_image_size, regular_file

TIFF_SUFFIXES = (".tif", ".tiff")
#: Formats read through imageio (Pillow); TIFF goes through tifffile.
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PILLOW_SUFFIXES
#: Lossless formats that can hold a label map.
LABEL_SUFFIXES = TIFF_SUFFIXES + (".png",)


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    # a FIFO or device is refused here, before anything opens it (reading a FIFO would block forever)
    return regular_file(path, f"{what} file")


def _check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = _suffix(path)
    if suffix not in allowed:
        raise ValueError(f"cannot read {what} from {path.name!r}: unsupported file type {suffix or '(none)'!r}; "
                         f"use one of {', '.join(allowed)}.")
    return suffix


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image in its native dtype.

    TIFF (tifffile): H×W, H×W×C, or pages×H×W[×C] for multi-page files; a planar RGB TIFF (3×H×W stored
    with photometric RGB) comes back as H×W×3. PNG/JPEG/BMP (imageio): H×W (gray), H×W×3 (RGB) or
    H×W×4 (RGBA); a CMYK JPEG is converted to RGB; 16-bit gray PNG stays uint16 (16-bit colour PNGs are
    reduced to 8 bits by Pillow, with a warning). The size the file declares is checked
    (:mod:`cellzoo.data.validate`) before its pixels are decoded.
    """
    path = _existing_file(path, "image")
    suffix = _check_suffix(path, IMAGE_SUFFIXES, "an image")
    try:
        if suffix in TIFF_SUFFIXES:
            return _read_tiff(path)
        return _read_pillow(path, suffix)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise zlib.error, struct.error, SyntaxError, ...
        if isinstance(exc, ValueError) and str(exc).startswith(f"{path}:"):
            raise  # our own size check, already clear
        raise ValueError(f"could not read image {path}: {exc}. Is the file complete and really a "
                         f"{suffix} image?") from exc


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("the TIFF holds no image data")
        series = tif.series[0]
        axes, shape = series.axes, tuple(series.shape)
        height, width = (shape[axes.index("Y")], shape[axes.index("X")]) if "Y" in axes and "X" in axes \
            else shape[-2:]
        channels = shape[axes.index("S")] if "S" in axes else 1
        planes = max(1, int(np.prod(shape)) // max(1, height * width * channels))
        check_image_size(height, width, str(path), planes=planes, channels=channels,
                         itemsize=series.dtype.itemsize)
        image = np.asarray(series.asarray())
        # planar RGB (planarconfig separate): samples come first; the engine expects H×W×3
        if axes.endswith("SYX") and channels in (3, 4) and image.ndim >= 3:
            image = np.moveaxis(image, -3, -1)
    return image


def _read_pillow(path: Path, suffix: str) -> np.ndarray:
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit below is checked from the header instead
    try:
        with Image.open(path) as handle:  # reads the header only
            width, height = handle.size
            mode = handle.mode
            check_image_size(height, width, str(path), channels=len(handle.getbands()),
                             itemsize=2 if "16" in mode else 4 if mode in ("I", "F") else 1)
            if mode == "CMYK":  # JPEG from print workflows: imageio would hand over the 4 ink planes as RGBA
                return np.asarray(handle.convert("RGB"))
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    if suffix == ".png" and _is_16bit_colour_png(path):
        warnings.warn(f"{path.name} is a 16-bit colour PNG; Pillow reads it as 8-bit, so precision is "
                      f"lost. Save it as .tif to keep 16 bits.", stacklevel=3)
    return np.asarray(iio.imread(path))


def _is_16bit_colour_png(path: Path) -> bool:
    # IHDR sits at a fixed offset: bytes 24/25 are bit depth and colour type (2 RGB, 4 gray+alpha, 6 RGBA).
    with open(path, "rb") as fh:
        header = fh.read(26)
    return len(header) == 26 and header[12:16] == b"IHDR" and header[24] == 16 and header[25] in (2, 4, 6)


def write_image(path: str | os.PathLike, image: np.ndarray, *, jpeg_quality: int = 95) -> Path:
    """Write ``image`` atomically. TIFF keeps any dtype and shape (zlib-compressed); PNG takes uint8
    gray/RGB/RGBA or uint16 gray; JPEG takes uint8 gray/RGB (lossy)."""
    path = Path(path)
    suffix = _check_suffix(path, IMAGE_SUFFIXES, "an image")
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"cannot write a {image.ndim}-D array as an image; expected H×W or H×W×C.")
    rgb_like = image.ndim >= 3 and image.shape[-1] in (3, 4)
    if suffix in TIFF_SUFFIXES:
        photometric = "rgb" if rgb_like and image.dtype in (np.uint8, np.uint16) else "minisblack"
        extra = {"extrasamples": ["unassalpha"]} if photometric == "rgb" and image.shape[-1] == 4 else {}
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, image, photometric=photometric, compression="zlib", **extra)
        return path
    if image.ndim > 3 or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"{suffix} holds H×W, H×W×3 or H×W×4 images, not shape {image.shape}; "
                         f"write multi-page or multi-channel data as .tif.")
    allowed = (np.uint8,) if suffix in (".jpg", ".jpeg", ".bmp") else (np.uint8, np.uint16)
    if image.dtype not in allowed:
        raise ValueError(f"{suffix} cannot store {image.dtype} data; convert to "
                         f"{' or '.join(np.dtype(d).name for d in allowed)} or write a .tif.")
    if suffix == ".png" and image.dtype == np.uint16 and image.ndim == 3:
        raise ValueError("Pillow cannot write 16-bit colour PNGs; write 16-bit RGB/RGBA images as .tif.")
    # PNG: zlib level 3 writes ~4× faster than Pillow's default 6 for ~8 % larger files
    kwargs = ({"quality": int(jpeg_quality)} if suffix in (".jpg", ".jpeg")
              else {"compress_level": 3} if suffix == ".png" else {})
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=suffix, **kwargs)
    return path


def _as_2d(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    array = np.squeeze(array) if array.ndim > 2 else array
    if array.ndim != 2:
        raise ValueError(f"{what} {path.name} has shape {array.shape}; expected a single 2-D H×W map "
                         f"(an RGB or multi-page file is not a label map).")
    return array


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an instance map (0 = background, 1..N = objects) as int32."""
    path = _existing_file(path, "label")
    _check_suffix(path, LABEL_SUFFIXES, "a label map")
    labels = _as_2d(read_image(path), path, "label map")
    return labels_as_int32(labels, source=path.name)


def labels_as_int32(labels: np.ndarray, source: str = "label map") -> np.ndarray:
    """Validate an instance map (integers ≥ 0 that fit int32) and return it as int32."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        raise ValueError(f"{source} is a binary mask, not an instance map; label its objects first "
                         f"(e.g. scipy.ndimage.label).")
    if labels.dtype.kind == "f":
        if labels.size and not np.array_equal(labels, np.round(labels)):
            raise ValueError(f"{source} holds non-integer values; an instance map needs integer ids.")
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"{source} has dtype {labels.dtype}; an instance map needs integer ids.")
    if labels.size:
        lo, hi = labels.min(), labels.max()
        if lo < 0:
            raise ValueError(f"{source} holds negative ids (min {lo}); instance ids must be ≥ 0.")
        if hi > np.iinfo(np.int32).max:
            raise ValueError(f"{source} holds ids up to {hi}, beyond int32; relabel it "
                             f"(skimage.segmentation.relabel_sequential).")
    return labels.astype(np.int32, copy=False)


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an instance map atomically: zlib TIFF as uint16 (uint32 when ids reach 65536), or 16-bit PNG."""
    path = Path(path)
    suffix = _check_suffix(path, LABEL_SUFFIXES, "a label map")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be 2-D (H×W), got shape {labels.shape}.")
    labels = labels_as_int32(labels, source="label map to write")
    fits_16 = labels.size == 0 or int(labels.max()) < 2 ** 16
    if suffix == ".png" and not fits_16:
        raise ValueError(f"{path.name}: ids up to {labels.max()} do not fit a 16-bit PNG; write a .tif.")
    return _write_integer_map(path, suffix, labels.astype(np.uint16 if fits_16 else np.uint32))


def read_class_map(path: str | os.PathLike) -> np.ndarray:
    """Read a per-pixel class map (0 = background, 1..K = classes) as uint8."""
    path = _existing_file(path, "class map")
    _check_suffix(path, LABEL_SUFFIXES, "a class map")
    classes = _as_2d(read_image(path), path, "class map")
    if classes.dtype.kind not in "iu" and not (classes.dtype.kind == "f" and np.array_equal(classes, np.round(classes))):
        raise ValueError(f"class map {path.name} has dtype {classes.dtype}; class ids must be integers.")
    if classes.size and (classes.min() < 0 or classes.max() > 255):
        raise ValueError(f"class map {path.name} holds values {classes.min()}..{classes.max()}; "
                         f"class ids must be 0..255.")
    return classes.astype(np.uint8, copy=False)


def write_class_map(path: str | os.PathLike, classes: np.ndarray) -> Path:
    """Write a class map atomically as uint8 (zlib TIFF or PNG)."""
    path = Path(path)
    suffix = _check_suffix(path, LABEL_SUFFIXES, "a class map")
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"a class map must be 2-D (H×W), got shape {classes.shape}.")
    if classes.size and (classes.min() < 0 or classes.max() > 255):
        raise ValueError(f"class ids must be 0..255, got {classes.min()}..{classes.max()}.")
    return _write_integer_map(path, suffix, classes.astype(np.uint8))


def _write_integer_map(path: Path, suffix: str, data: np.ndarray) -> Path:
    """Atomic write of a 2-D integer map as PNG or zlib TIFF (label and class maps alike)."""
    with atomic_path(path) as tmp:
        if suffix == ".png":
            iio.imwrite(tmp, data, extension=".png")
        else:
            tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack")
    return path
