"""`cellzoo segment` end to end: real files in, instance/class TIFFs and GeoJSON out."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellzoo.cli import main
from cellzoo.models import build_model
from cellzoo.zoo.weights import save_weights

sys.path.insert(0, str(Path(__file__).parent / "infer"))
from tiny_models import SMALL_REPSNET, trained_repsnet  # noqa: E402


@pytest.fixture(scope="module")
def model_file(shared_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "small.safetensors"
    save_weights(trained_repsnet(shared_data), path)
    return path


def _printed_counts(text):
    rows = {}
    for line in text.strip().splitlines():
        name, rest = line.split(": ", 1)
        parts = rest.split(", ")
        rows[name] = (int(parts[0].split()[0]), parts[2], parts[3])
    return rows


def test_segment_files_writes_instances_and_geojson(tmp_path, model_file, shared_data, capsys):
    images = sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[:2]
    code = main(["segment", *map(str, images), "--model", str(model_file), "--out", str(tmp_path),
                 "--device", "cpu", "--geojson", "--no-amp"])
    assert code == 0
    printed = _printed_counts(capsys.readouterr().out)
    for image in images:
        labels = tifffile.imread(tmp_path / f"{image.stem}_instances.tif")
        assert labels.dtype == np.uint16 and labels.shape == tifffile.imread(image).shape[:2]
        count, device, precision = printed[image.name]
        assert count == len(np.unique(labels)) - 1 and device == "cpu"
        assert precision == "fp32"  # --no-amp: the line says what ran
        features = json.loads((tmp_path / f"{image.stem}.geojson").read_text())["features"]
        assert len(features) == count
        assert not (tmp_path / f"{image.stem}_classes.tif").exists()  # class-agnostic model


def test_typed_model_writes_a_class_map(tmp_path, shared_data, capsys):
    path = tmp_path / "typed.safetensors"
    save_weights(build_model("repsnet", {**SMALL_REPSNET, "num_classes": 5}), path)
    image = sorted((shared_data / "consep" / "test" / "images").glob("*.jpg"))[0]
    assert main(["segment", str(image), "--model", str(path), "--out", str(tmp_path / "out"), "--tile", "128"]) == 0
    classes = tifffile.imread(tmp_path / "out" / f"{image.stem}_classes.tif")
    assert classes.dtype == np.uint8 and classes.max() <= 4


def test_sample_and_folder_inputs(tmp_path, model_file, shared_data, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    assert main(["segment", "--sample", "--model", str(model_file)]) == 0
    assert (tmp_path / "dsb2018_nuclei_instances.tif").is_file()  # --sample writes to the current folder
    assert capsys.readouterr().out.startswith("dsb2018_nuclei.tif: ")
    folder = tmp_path / "folder"
    folder.mkdir()
    for image in sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[:2]:
        shutil.copy(image, folder)
    assert main(["segment", str(folder), "--model", str(model_file)]) == 0
    assert capsys.readouterr().out.count(" objects, ") == 2
    first = {p.name: p.read_bytes() for p in folder.glob("*_instances.tif")}
    # a second run never replaces the first run's results silently ...
    assert main(["segment", str(folder), "--model", str(model_file)]) == 2
    err = capsys.readouterr().err
    assert "results of an earlier run exist" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in folder.glob("*_instances.tif")} == first
    # ... and with --overwrite it skips the *_instances.tif written by the first run and replaces the results
    assert main(["segment", str(folder), "--model", str(model_file), "--overwrite"]) == 0
    assert capsys.readouterr().out.count(" objects, ") == 2
    assert len(list(folder.glob("*_instances.tif"))) == 2


def test_output_names_never_collide(tmp_path, model_file, shared_data, capsys):
    import shutil

    image = sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(image, inputs / "slide.x.tif")
    shutil.copy(image, inputs / "slide.y.tif")
    tifffile.imwrite(inputs / "slide.tif", tifffile.imread(image))
    import imageio.v3 as iio

    iio.imwrite(inputs / "slide.png", tifffile.imread(image))  # gray, as read (was sliced to 256×3 px)
    out = tmp_path / "out"
    assert main(["segment", str(inputs), "--model", str(model_file), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["slide.x_instances.tif", "slide.y_instances.tif",
                                                    "slide_png_instances.tif", "slide_tif_instances.tif"]
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    assert main(["segment", str(image), "--model", str(model_file), "--out", str(a_file)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_scale_option_resizes_and_keeps_the_image_size(tmp_path, model_file, shared_data, capsys):
    image = sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0]
    assert main(["segment", str(image), "--model", str(model_file), "--out", str(tmp_path), "--scale", "2",
                 "--device", "cpu"]) == 0
    assert "scale 2.00" in capsys.readouterr().out
    labels = tifffile.imread(tmp_path / f"{image.stem}_instances.tif")
    assert labels.shape == tifffile.imread(image).shape[:2] and labels.max() > 0
    assert main(["segment", str(image), "--model", str(model_file), "--scale", "twice"]) == 2
    assert "is not a number: give a resize factor" in capsys.readouterr().err
    assert main(["segment", str(image), "--model", str(model_file), "--scale", "auto"]) == 2
    assert "object_area" in capsys.readouterr().err  # this model declares no object size


def test_user_errors_are_reported_without_traceback(tmp_path, model_file, capsys):
    assert main(["segment", str(tmp_path / "missing.tif"), "--model", str(model_file)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["segment", "--model", str(model_file)]) == 2
    assert "give at least one INPUT" in capsys.readouterr().err
    image = tmp_path / "x.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    assert main(["segment", str(image), "--model", str(model_file), "--param", "nonsense"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
