"""`cellzoo segment` with images that hold nothing to segment: said in words, the others still done."""
from __future__ import annotations

import numpy as np
import tifffile

from cellzoo.cli import main


def test_blank_and_tiny_images_are_skipped_with_a_reason(tmp_path, shared_data, capsys):
    image = sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "real.tif").write_bytes(image.read_bytes())
    tifffile.imwrite(folder / "black.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(folder / "dot.tif", np.ones((1, 1), np.uint8))
    tifffile.imwrite(folder / "nan.tif", np.full((32, 32), np.nan, np.float32))
    code = main(["segment", str(folder), "--model", "cellzoo-fluo", "--out", str(tmp_path / "out"),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    assert "black.tif: skipped: every pixel is 0" in captured.err
    assert "dot.tif: skipped: the image is only 1×1 px" in captured.err
    assert "nan.tif: skipped: every pixel is NaN" in captured.err
    assert "3 of 4 image(s) had nothing to segment" in captured.err
    assert "real.tif:" in captured.out  # the real image was segmented all the same
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["real_instances.tif"]
