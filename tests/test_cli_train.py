"""`cellzoo train` end to end on a small folder dataset made from real MoNuSeg crops."""
import json

import numpy as np
import pytest

from cellzoo.cli import main
from cellzoo.data import write_image, write_labels
from cellzoo.zoo.weights import read_metadata


@pytest.fixture(scope="module")
def small_dataset(shared_data, tmp_path_factory):
    import imageio.v3 as iio

    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    source = shared_data / "monuseg2018"
    for path in sorted((source / "images" / "train").glob("*.png"))[:3]:
        image = iio.imread(path)[:128, :128]
        labels = iio.imread(source / "labels" / "train" / path.name)[:128, :128].astype(np.int32)
        write_image(root / "images" / path.name, image)
        write_labels(root / "labels" / (path.stem + ".tif"), labels)
    return root


def test_train_from_scratch_and_fine_tune(tmp_path, small_dataset, capsys):
    model_config = json.dumps({"filters": [8, 16, 32, 64], "align_corners": False})
    args = ["train", "--family", "repsnet", "--data", str(small_dataset), "--out", str(tmp_path / "run"),
            "--epochs", "2", "--steps-per-epoch", "2", "--crop", "64", "--batch-size", "2", "--device", "cpu",
            "--model-config", model_config, "--augment", "flip,blur", "--val-fraction", "0.34"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch 1: aji" in out and "epoch 2: aji" in out and "best checkpoint:" in out
    best = tmp_path / "run" / "best.safetensors"
    meta = read_metadata(best)
    assert meta["training"]["data"] == str(small_dataset) and len(meta["training"]["val_images"]) == 1
    assert meta["config"]["filters"] == [8, 16, 32, 64]
    # fine-tune the result
    assert main(["train", "--base", str(best), "--data", str(small_dataset), "--out", str(tmp_path / "ft"),
                 "--epochs", "1", "--steps-per-epoch", "1", "--crop", "64", "--batch-size", "1", "--workers", "1"]) == 0
    assert (tmp_path / "ft" / "best.safetensors").is_file()
    assert read_metadata(tmp_path / "ft" / "best.safetensors")["training"]["config"]["num_workers"] == 1


def test_train_errors(tmp_path, small_dataset, capsys):
    assert main(["train", "--data", str(small_dataset), "--out", str(tmp_path)]) == 2
    assert "--family" in capsys.readouterr().err
    assert main(["train", "--family", "repsnet", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "neither a folder nor a shared dataset" in capsys.readouterr().err
    assert main(["train", "--family", "repsnet", "--data", str(small_dataset), "--out", str(tmp_path),
                 "--config", "{not json"]) == 2
    assert "JSON" in capsys.readouterr().err
    assert main(["train", "--family", "repsnet", "--data", str(small_dataset), "--out", str(tmp_path),
                 "--workers", "-1"]) == 2
    assert "num_workers must be >= 0" in capsys.readouterr().err
