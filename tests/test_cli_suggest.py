"""`cellzoo suggest`: real MoNuSeg test images in, a ranked table printed, CSV and QuPath GeoJSON out."""
import csv
import json
import subprocess
import sys

import numpy as np

from cellzoo.cli import main
from cellzoo.data.io import read_image, write_image


def test_suggest_folder_writes_ranked_csv_and_geojson(tmp_path, shared_data, capsys):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for path in sorted((shared_data / "monuseg2018/images/test").glob("*.png"))[:2]:
        write_image(folder / path.name, read_image(path))
    out = tmp_path / "suggestions.csv"
    code = main(["suggest", str(folder), "--model", "none", "--n", "4", "--out", str(out),
                 "--geojson", str(tmp_path / "boxes.geojson")])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].split()[:3] == ["rank", "y", "x"] and len(printed) == 5
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["rank", "image", "y", "x", "size", "score", "representativeness", "inconsistency",
                             "nuclear_content", "cluster"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4] and {r["size"] for r in rows} == {"256"}
    assert all(r["image"].startswith(str(folder)) for r in rows)
    # one GeoJSON per image holding suggestions, rectangles named by rank
    written = sorted(tmp_path.glob("boxes_*.geojson"))
    assert written and sum(len(json.loads(p.read_text())["features"]) for p in written) == 4
    feature = json.loads(written[0].read_text())["features"][0]
    ring = np.array(feature["geometry"]["coordinates"][0])
    assert ring.shape == (5, 2) and np.ptp(ring[:, 0]) == 256 and feature["properties"]["objectType"] == "annotation"


def test_suggest_with_the_default_model(tmp_path, shared_data, capsys):
    path = sorted((shared_data / "monuseg2018/images/test").glob("*.png"))[0]
    crop = tmp_path / "crop.png"
    write_image(crop, read_image(path)[:512, :512])
    out = tmp_path / "s.geojson"
    assert main(["suggest", str(crop), "--n", "2", "--out", str(out)]) == 0
    features = json.loads(out.read_text())["features"]
    assert [f["properties"]["name"] for f in features] == ["1", "2"]
    measured = features[0]["properties"]["measurements"]
    assert 0 <= measured["inconsistency"] <= 1 and measured["score"] > 0
    assert "cellzoo-he" in capsys.readouterr().err


def test_suggest_errors_and_no_torch_at_start_up(tmp_path, capsys):
    assert main(["suggest", str(tmp_path / "missing.png"), "--model", "none"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["suggest", str(tmp_path), "--n", "0", "--model", "none"]) == 2
    assert "--n must be" in capsys.readouterr().err
    code = ("import sys, cellzoo.cli as c; c.build_parser().parse_args(['suggest', 'x']); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
