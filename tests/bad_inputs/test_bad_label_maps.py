"""Label and class maps, .npy arrays, and evaluation inputs (incl. every pixel its own object)."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cellzoo.cli import main
from cellzoo.data import (auto_read_annotation, labels_as_int32, read_class_map, read_labels, read_npy, write_labels)
from cellzoo.metrics import evaluate
from cellzoo.metrics.evaluate import COCO_AP_MAX_OBJECTS, pair_files

BAD_ARRAYS = {
    "binary mask": (np.ones((4, 4), bool), "binary mask"),
    "fractional ids": (np.full((4, 4), 1.5, np.float32), "non-integer"),
    "negative ids": (np.full((4, 4), -3, np.int16), "negative ids"),
    "ids beyond int32": (np.full((4, 4), 2 ** 40, np.int64), "beyond int32"),
    "uint64 beyond int32": (np.full((4, 4), 2 ** 33, np.uint64), "beyond int32"),
    "complex": (np.ones((4, 4), np.complex64), "dtype complex64"),
    "text": (np.full((4, 4), "a"), "dtype <U1"),
    "NaN ids": (np.full((4, 4), np.nan, np.float32), "non-integer"),
}


@pytest.mark.parametrize("name", list(BAD_ARRAYS))
def test_instance_map_arrays(name):
    array, message = BAD_ARRAYS[name]
    with pytest.raises(ValueError, match=message):
        labels_as_int32(array, "test map")


@pytest.mark.parametrize("suffix,shape", [(".tif", (8, 8, 3)), (".tif", (3, 8, 8)), (".tif", (2, 8, 8, 3)),
                                          (".png", (8, 8, 3)), (".png", (8, 8, 4))])
def test_multichannel_or_multipage_files_are_not_label_maps(tmp_path, suffix, shape):
    path = tmp_path / f"labels{suffix}"
    if suffix == ".png":
        import imageio.v3 as iio
        iio.imwrite(path, np.ones(shape, np.uint8))
    else:
        tifffile.imwrite(path, np.ones(shape, np.uint8))
    with pytest.raises(ValueError, match="expected a single 2-D H×W map"):
        read_labels(path)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".xml"])
def test_lossy_or_foreign_label_files(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_labels(path)


def test_label_fifo_and_folder(tmp_path, fifo):
    with pytest.raises(ValueError, match="FIFO"):
        read_labels(fifo("labels.tif"))
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        read_labels(tmp_path / "dir.tif")


@pytest.mark.parametrize("values,message", [((-1, 3), "class ids must be 0..255"), ((0, 300), "class ids must be 0..255"),
                                            ((0.5, 1), "class ids must be integers")])
def test_class_maps(tmp_path, values, message):
    path = tmp_path / "classes.tif"
    dtype = np.float32 if isinstance(values[0], float) else np.int16
    tifffile.imwrite(path, np.array([values, values], dtype))
    with pytest.raises(ValueError, match=message):
        read_class_map(path)


# --------------------------------------------------------------------------- .npy
def _npy_bytes(array: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _header_declaring(shape, dtype="<u2") -> bytes:
    """A .npy header that declares ``shape`` followed by a few bytes of data."""
    import io
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 64


NPY_CASES = {
    "not npy at all": (b"hello world, a text file" * 4, "not a readable .npy file"),
    "empty": (b"", "not a readable .npy file"),
    "magic only": (b"\x93NUMPY\x01\x00", "not a readable .npy file"),
    "header not a dict": (b"\x93NUMPY\x01\x00\x10\x00" + b"[1, 2, 3]      \n", "not a readable .npy file"),
    "header garbage": (b"\x93NUMPY\x01\x00\x10\x00" + b"{'descr': <<<<<\n", "not a readable .npy file"),
    "unknown version": (b"\x93NUMPY\x07\x00" + b"\0" * 40, "not a readable .npy file"),
    "huge declared shape": (_header_declaring((100000, 100000, 100000)), "is truncated: its header declares"),
    "truncated data": (_npy_bytes(np.zeros((2, 16, 16), np.uint16))[:-100], "is truncated"),
    "object dtype": (None, "holds Python objects"),
}


@pytest.mark.parametrize("name", list(NPY_CASES))
@pytest.mark.parametrize("reader", ["auto_read_annotation", "read_npy"])
def test_npy_files(tmp_path, name, reader):
    data, message = NPY_CASES[name]
    path = tmp_path / "labels.npy"
    if data is None:
        np.save(path, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    else:
        path.write_bytes(data)
    np.save(tmp_path / "images.npy", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=message):
        if reader == "read_npy":
            read_npy(tmp_path)
        else:
            auto_read_annotation(path)


def test_npy_bounded_before_loading(tmp_path, monkeypatch):
    np.save(tmp_path / "map.npy", np.zeros((64, 64), np.int32))
    monkeypatch.setenv("CELLZOO_MAX_BYTES", "1000")
    with pytest.raises(ValueError, match=r"16,384 bytes, beyond the limit of 1,000 bytes.*CELLZOO_MAX_BYTES"):
        auto_read_annotation(tmp_path / "map.npy")


# --------------------------------------------------------------------------- evaluation
def test_every_pixel_its_own_object_is_bounded(tmp_path):
    side = 150  # 22,500 objects: more than COCO_AP_MAX_OBJECTS
    assert side * side > COCO_AP_MAX_OBJECTS
    gt = np.arange(1, side * side + 1, dtype=np.int32).reshape(side, side)
    result = evaluate(gt, gt.copy())
    row = result.per_image[0]
    assert row["aji"] == 1.0 and row["pq"] == 1.0 and row["dsb_ap50"] == 1.0
    assert np.isnan(row["ap"]) and np.isnan(result.summary["ap"])
    assert any("COCO AP left out" in note for note in result.notes)


def _write_pair_folders(tmp_path, n_gt: int, n_pred: int):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    labels = np.zeros((16, 16), np.int32)
    labels[2:8, 2:8] = 1
    for k in range(n_gt):
        write_labels(gt_dir / f"img{k}.tif", labels)
    for k in range(n_pred):
        write_labels(pred_dir / f"img{k}_instances.tif", labels)
    return gt_dir, pred_dir


@pytest.mark.parametrize("n_gt,n_pred", [(3, 1), (4, 2), (2, 1)])
def test_only_paired_scores_the_pairs_present(tmp_path, capsys, n_gt, n_pred):
    gt_dir, pred_dir = _write_pair_folders(tmp_path, n_gt, n_pred)
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--quiet"]) == 2
    assert "pass --only-paired" in capsys.readouterr().err
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--quiet", "--only-paired"]) == 0
    captured = capsys.readouterr()
    assert f"{n_pred} image(s)" in captured.out and "pq" in captured.out
    missing = ", ".join(f"img{k}" for k in range(n_pred, n_gt))
    assert f"{n_gt - n_pred} ground-truth image(s) have none: {missing}" in captured.err


def test_only_paired_with_no_pair_at_all(tmp_path):
    gt_dir, pred_dir = _write_pair_folders(tmp_path, 2, 0)
    write_labels(pred_dir / "other.tif", np.zeros((16, 16), np.int32))
    with pytest.raises(ValueError, match="no ground-truth image has a prediction"):
        pair_files(gt_dir, pred_dir, only_paired=True)


def test_class_ids_beyond_the_class_names():
    labels = np.zeros((16, 16), np.int32)
    labels[2:8, 2:8] = 1
    classes = (labels > 0).astype(np.uint8) * 5
    with pytest.raises(ValueError, match="class id 5 but the class names name only ids 1..2"):
        evaluate(labels, labels, classes, classes, class_names=["background", "a", "b"])


@pytest.mark.parametrize("case", ["out is a folder", "out exists", "out exists --overwrite"])
def test_evaluate_out(tmp_path, capsys, case):
    gt_dir, pred_dir = _write_pair_folders(tmp_path, 1, 1)
    out = tmp_path / "metrics.csv"
    args = ["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--quiet", "--out", str(out)]
    if case == "out is a folder":
        out.mkdir()
        assert main(args) == 2 and "is a folder" in capsys.readouterr().err
        return
    out.write_text("earlier results\n")
    if case == "out exists":
        assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
        assert out.read_text() == "earlier results\n"
    else:
        assert main(args + ["--overwrite"]) == 0 and out.read_text().startswith("image,")


@pytest.mark.parametrize("gt_shape,pred_shape", [((16, 16), (16, 17)), ((16, 16), (8, 8))])
def test_evaluate_shape_mismatch(gt_shape, pred_shape):
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.zeros(gt_shape, np.int32), np.zeros(pred_shape, np.int32))
