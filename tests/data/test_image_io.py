"""read_image / write_image / read_labels / write_labels / class maps on real files and every format."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cellzoo.data import (read_class_map, read_image, read_labels, write_class_map, write_image,
                          write_labels)


def _no_temp_files(folder):
    return not any(p.name.endswith(".part") for p in folder.iterdir())


# ----------------------------------------------------------------------------- real files
def test_reads_real_png_jpeg_and_tiff_in_native_dtype(shared_data):
    monuseg = read_image(shared_data / "monuseg2018/images/test/TCGA-2Z-A9J9-01A-01-TS1.png")
    assert monuseg.shape == (1000, 1000, 3) and monuseg.dtype == np.uint8
    consep = read_image(shared_data / "consep/test/images/test_1_000.jpg")
    assert consep.shape == (256, 256, 3) and consep.dtype == np.uint8
    dsb = sorted((shared_data / "dsb2018/test/images").glob("*.tif"))[0]
    gray = read_image(dsb)
    assert gray.ndim == 2 and gray.dtype == np.uint8
    assert np.array_equal(gray, tifffile.imread(dsb))


def test_read_labels_gives_int32_from_16bit_png_and_zlib_tiff(shared_data):
    from_png = read_labels(shared_data / "monuseg2018/labels/test/TCGA-2Z-A9J9-01A-01-TS1.png")
    assert from_png.dtype == np.int32 and from_png.shape == (1000, 1000)
    assert from_png.max() == 575  # checked against the 16-bit file with imageio
    mask_path = sorted((shared_data / "dsb2018/test/masks").glob("*.tif"))[0]
    from_tif = read_labels(mask_path)
    assert from_tif.dtype == np.int32
    assert np.array_equal(from_tif, tifffile.imread(mask_path).astype(np.int32))


def test_read_class_map_is_uint8(shared_data):
    classes = read_class_map(shared_data / "consep/test/class/test_11_003.png")
    assert classes.dtype == np.uint8 and set(np.unique(classes)) == {0, 1, 2, 3, 4}


# ----------------------------------------------------------------------------- round trips
# every kind in TIFF and PNG, except 16-bit colour PNG (no Pillow writer; tested below)
@pytest.mark.parametrize("suffix,kind", [(s, k) for s in (".tif", ".png")
                                         for k in ("gray", "rgb", "rgba", "gray16", "rgb16")
                                         if (s, k) != (".png", "rgb16")])
def test_lossless_round_trip(tmp_path, monuseg_pair, suffix, kind):
    rgb = monuseg_pair[0][:64, :80]
    image = {"gray": rgb[..., 0], "rgb": rgb, "rgba": np.dstack([rgb, rgb[..., :1]]),
             "gray16": rgb[..., 0].astype(np.uint16) * 257, "rgb16": rgb.astype(np.uint16) * 131}[kind]
    path = write_image(tmp_path / f"img{suffix}", image)
    back = read_image(path)
    assert back.dtype == image.dtype and back.shape == image.shape
    assert np.array_equal(back, image)
    assert _no_temp_files(tmp_path)


def test_16bit_colour_png_is_refused_on_write_and_warned_on_read(tmp_path):
    import struct
    import zlib

    with pytest.raises(ValueError, match="16-bit colour PNG"):
        write_image(tmp_path / "rgb16.png", np.zeros((4, 4, 3), np.uint16))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = (np.arange(18).reshape(2, 3, 3) * 1000).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter byte 0 per row
    (tmp_path / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 16, 2, 0, 0, 0))
                                         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.warns(UserWarning, match="16-bit colour PNG"):
        image = read_image(tmp_path / "rgb16.png")
    assert image.shape == (2, 3, 3)


def test_tiff_keeps_float_and_multipage_stacks(tmp_path, monuseg_pair):
    rgb = monuseg_pair[0][:32, :48]
    floats = rgb[..., 1].astype(np.float32) / 255
    assert np.array_equal(read_image(write_image(tmp_path / "f.tif", floats)), floats)
    pages_gray = np.stack([rgb[..., k] for k in range(3)])  # 3 pages of H×W
    back = read_image(write_image(tmp_path / "pages.tif", pages_gray))
    assert back.shape == (3, 32, 48) and np.array_equal(back, pages_gray)
    assert len(tifffile.TiffFile(tmp_path / "pages.tif").pages) == 3
    pages_rgb = np.stack([rgb, rgb[::-1], rgb[:, ::-1]])  # 3 pages of H×W×3
    back = read_image(write_image(tmp_path / "pages_rgb.tif", pages_rgb))
    assert back.shape == (3, 32, 48, 3) and np.array_equal(back, pages_rgb)


def test_jpeg_round_trip_is_close(tmp_path, monuseg_pair):
    rgb = monuseg_pair[0][:128, :128]
    back = read_image(write_image(tmp_path / "img.jpg", rgb))
    assert back.shape == rgb.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - rgb).mean() < 6  # lossy, quality 95


def test_write_labels_uint16_zlib_tiff_and_uint32_when_needed(tmp_path, monuseg_pair):
    labels = monuseg_pair[1]
    path = write_labels(tmp_path / "labels.tif", labels)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert np.array_equal(read_labels(path), labels)
    big = labels.copy()
    big[big > 0] += 70000
    path = write_labels(tmp_path / "big.tif", big)
    assert tifffile.TiffFile(path).pages[0].dtype == np.uint32
    back = read_labels(path)
    assert back.dtype == np.int32 and np.array_equal(back, big)
    assert np.array_equal(read_labels(write_labels(tmp_path / "labels.png", labels)), labels)


def test_class_map_round_trip(tmp_path, consep_patch):
    classes = consep_patch[2]
    for suffix in (".tif", ".png"):
        assert np.array_equal(read_class_map(write_class_map(tmp_path / f"c{suffix}", classes)), classes)


def test_write_replaces_existing_file_atomically(tmp_path, monuseg_pair):
    path = tmp_path / "labels.tif"
    write_labels(path, monuseg_pair[1][:50, :50])
    with pytest.raises(Exception):
        write_image(path, np.array([[object()]]))  # tifffile fails inside the atomic write
    assert np.array_equal(read_labels(path), monuseg_pair[1][:50, :50])  # old file intact
    assert _no_temp_files(tmp_path)


# ----------------------------------------------------------------------------- errors
def test_missing_and_unsupported_files_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="could not read image"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="is a folder"):
        read_image(tmp_path)
    (tmp_path / "x.jpg").touch()
    with pytest.raises(ValueError, match="unsupported file type '.jpg'"):
        read_labels(tmp_path / "x.jpg")  # lossy JPEG cannot hold a label map


def test_bad_label_maps_are_rejected(tmp_path, monuseg_pair):
    with pytest.raises(ValueError, match="expected a single 2-D"):
        read_labels(write_image(tmp_path / "rgb.png", monuseg_pair[0][:20, :20]))
    with pytest.raises(ValueError, match="negative"):
        write_labels(tmp_path / "neg.tif", np.array([[0, -1], [2, 3]]))
    with pytest.raises(ValueError, match="binary mask"):
        write_labels(tmp_path / "bool.tif", np.array([[True, False]]))
    with pytest.raises(ValueError, match="non-integer"):
        write_labels(tmp_path / "f.tif", np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="16-bit PNG"):
        write_labels(tmp_path / "big.png", np.array([[0, 70000]]))
    with pytest.raises(ValueError, match="cannot store float32"):
        write_image(tmp_path / "f.png", np.zeros((4, 4), np.float32))
    assert not (tmp_path / "neg.tif").exists() and not (tmp_path / "big.png").exists()
