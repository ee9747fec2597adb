"""Images: missing, not regular, empty, corrupt, truncated, beyond the size limits, odd layouts."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellzoo.data import read_image, write_image
from cellzoo.infer.prepare import arrange_image, prepare_image

SUFFIXES = [".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"]
RNG = np.random.default_rng(18)


def _valid_bytes(suffix: str, tmp_path) -> bytes:
    path = tmp_path / f"valid{suffix}"
    write_image(path, RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return path.read_bytes()


# --------------------------------------------------------------------------- files that are not images
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_missing_file(tmp_path, suffix):
    with pytest.raises(FileNotFoundError, match="image file not found.*does not exist"):
        read_image(tmp_path / f"absent{suffix}")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_folder_named_like_an_image(tmp_path, suffix):
    (tmp_path / f"x{suffix}").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        read_image(tmp_path / f"x{suffix}")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_fifo_named_like_an_image_is_refused_without_blocking(fifo, suffix):
    with pytest.raises(ValueError, match="FIFO"):
        read_image(fifo(f"x{suffix}"))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("content", ["empty", "text", "random", "truncated", "other-format"])
def test_unreadable_content_names_the_file(tmp_path, suffix, content):
    other = ".png" if suffix != ".png" else ".tif"
    data = {"empty": b"", "text": b"hello, this is not an image\n" * 20,
            "random": RNG.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
            "truncated": _valid_bytes(suffix, tmp_path)[:-len(_valid_bytes(suffix, tmp_path)) // 2],
            "other-format": b""}[content]
    if content == "other-format":
        data = _valid_bytes(other, tmp_path)[:60]  # a cut header of another format
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"could not read image .*bad\.") as info:
        read_image(path)
    assert "Is the file complete" in str(info.value)


@pytest.mark.parametrize("suffix", [".txt", ".gif", "", ".tif.gz"])
def test_unsupported_suffix(tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_image(path)


# --------------------------------------------------------------------------- sizes bounded before decoding
@pytest.mark.parametrize("suffix", [".tif", ".png", ".bmp", ".jpg"])
def test_pixel_limit_from_the_declared_size(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"big{suffix}"
    write_image(path, np.zeros((40, 50, 3), np.uint8))
    monkeypatch.setenv("CELLZOO_MAX_PIXELS", "1000")
    with pytest.raises(ValueError, match=r"40×50 image \(2,000 pixels\) is beyond the limit of 1,000 pixels.*"
                                         r"CELLZOO_MAX_PIXELS=2000"):
        read_image(path)
    monkeypatch.setenv("CELLZOO_MAX_PIXELS", "2000")  # raised as the message says: it reads
    assert read_image(path).shape == (40, 50, 3)


def test_byte_limit_counts_every_page(tmp_path, monkeypatch):
    path = tmp_path / "stack.tif"
    write_image(path, np.zeros((10, 20, 20), np.uint16))
    monkeypatch.setenv("CELLZOO_MAX_BYTES", "5000")
    with pytest.raises(ValueError, match=r"10 plane\(s\).*8,000 bytes.*CELLZOO_MAX_BYTES"):
        read_image(path)


@pytest.mark.parametrize("env", ["abc", "-5", "0"])
def test_a_bad_limit_setting_is_named(tmp_path, env, monkeypatch):
    path = tmp_path / "a.png"
    write_image(path, np.zeros((4, 4), np.uint8))
    monkeypatch.setenv("CELLZOO_MAX_PIXELS", env)
    with pytest.raises(ValueError, match="CELLZOO_MAX_PIXELS"):
        read_image(path)


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) declares width × height but holds almost no data."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (2 ** 31 - 1, 2), (60_000, 60_000)])
def test_png_header_declaring_a_huge_image_is_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(width, height))
    with pytest.raises(ValueError, match=rf"{height}×{width} image .* beyond the limit"):
        read_image(path)


# --------------------------------------------------------------------------- layouts read right
def test_planar_rgb_tiff_is_read_as_rgb(tmp_path):
    rgb = RNG.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), rgb)


def test_contiguous_rgb_tiff_unchanged(tmp_path):
    rgb = RNG.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 12), (0, 255, 255, 0))  # pure red ink mix
    cmyk.save(tmp_path / "print.jpg", quality=100)
    image = read_image(tmp_path / "print.jpg")
    assert image.shape == (12, 16, 3)
    red, green, blue = image[..., 0].mean(), image[..., 1].mean(), image[..., 2].mean()
    assert red > 200 and green < 60 and blue < 60


def test_gray_alpha_png_is_two_channels_not_planes(tmp_path):
    Image.fromarray(np.zeros((30, 40, 2), np.uint8), mode="LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert image.shape == (30, 40, 2)
    array, is_stack, channel, note = arrange_image(image)
    assert not is_stack and array.shape == (30, 40, 2) and channel is None and note is None
    with pytest.raises(ValueError, match="has 2 channels; choose one with channel=K"):
        prepare_image(array)


# (shape, channel) -> (is_stack, shape passed on, channel left, words in the note or None)
LAYOUTS = [
    ((64, 64), None, (False, (64, 64), None, None)),
    ((64, 64, 1), None, (False, (64, 64, 1), None, None)),
    ((128, 128, 2), None, (False, (128, 128, 2), None, None)),
    ((128, 128, 2), 1, (False, (128, 128, 2), 1, None)),
    ((64, 64, 3), None, (False, (64, 64, 3), None, None)),
    ((64, 64, 4), 0, (False, (64, 64, 4), 0, None)),
    ((5, 64, 64), None, (True, (5, 64, 64), None, "5 gray planes")),
    ((2, 64, 64), None, (True, (2, 64, 64), None, "2 gray planes")),
    ((2, 64, 64), 1, (False, (64, 64), None, "used channel 1")),
    ((3, 64, 64), -1, (False, (64, 64), None, "used channel -1")),
    ((4, 32, 32, 3), None, (True, (4, 32, 32, 3), None, "4 planes")),
    ((4, 32, 32, 2), 1, (True, (4, 32, 32, 2), 1, "4 planes")),
]


@pytest.mark.parametrize("shape,channel,expected", LAYOUTS, ids=[f"{s}-ch{c}" for s, c, _ in LAYOUTS])
def test_planes_or_channels_by_a_stated_rule(shape, channel, expected):
    array, is_stack, left, note = arrange_image(np.zeros(shape, np.uint8), channel)
    assert (is_stack, array.shape, left) == expected[:3]
    assert (note is None) if expected[3] is None else (expected[3] in note)


BAD_LAYOUTS = [
    ((64, 64), 2, "single-channel"),
    ((6, 64, 64), 1, "stack of 6 gray planes"),
    ((2, 64, 64), 5, "channel 5 does not exist"),
    ((3, 64, 64, 7), None, "cannot tell planes from channels"),
    ((2, 3, 8, 8, 3), None, "5-D image"),
]


@pytest.mark.parametrize("shape,channel,message", BAD_LAYOUTS, ids=[str(s) for s, _, _ in BAD_LAYOUTS])
def test_layouts_that_cannot_work_are_refused(shape, channel, message):
    with pytest.raises(ValueError, match=message):
        arrange_image(np.zeros(shape, np.uint8), channel, "x.tif")


@pytest.mark.parametrize("dtype", [bool, np.complex64, object, "U3"])
def test_unsupported_pixel_types(dtype):
    with pytest.raises(ValueError, match="not supported"):
        prepare_image(np.zeros((8, 8), dtype=dtype))


@pytest.mark.parametrize("values", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_become_zero(values):
    image = np.full((8, 8), 0.5, np.float32)
    image[2, 3] = values
    out = prepare_image(image)
    assert np.isfinite(out).all() and out[2, 3, 0] == 0
