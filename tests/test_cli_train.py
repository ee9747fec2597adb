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
    # fine-tune the result: the base's held-out score first, then the verdict, and the tuned weights saved
    assert main(["train", "--base", str(best), "--data", str(small_dataset), "--out", str(tmp_path / "ft"),
                 "--epochs", "2", "--steps-per-epoch", "1", "--crop", "64", "--batch-size", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"base {best} on the held-out data: pq ")
    assert lines[1].startswith("step 1: pq ") and lines[2].startswith("step 2: pq ")
    assert lines[-1].startswith(("improved on the held-out data: PQ", "did not beat the base: PQ"))
    tuned = sorted((tmp_path / "ft").glob("finetuned*.safetensors"))
    assert len(tuned) == 1 and str(tuned[0]) in lines[-1]
    meta = read_metadata(tuned[0])["finetune"]
    assert meta["improved"] == lines[-1].startswith("improved") and meta["base"] == str(best)
    assert meta["holdout_region"] and len(meta["val_images"]) == 3  # 3 images: a stripe of each held out


def test_fine_tune_that_gets_worse_says_so_and_keeps_the_base(tmp_path, small_dataset, capsys):
    # an absurd learning rate: the tuned model is worse, the CLI says so plainly and names the kept-aside file
    assert main(["train", "--base", "cellzoo-he", "--data", str(small_dataset), "--out", str(tmp_path),
                 "--steps", "2", "--steps-per-epoch", "1", "--lr", "0.5", "--crop", "64", "--batch-size", "2",
                 "--config", '{"warmup_steps": 0, "grad_clip": null, "pull_to_base": 0}', "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("base cellzoo-he on the held-out data: pq ")
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("did not beat the base: PQ ") and "kept the base" in verdict
    assert f"tuned weights at {tmp_path / 'finetuned-not-better.safetensors'} if you want them" in verdict
    assert read_metadata(tmp_path / "finetuned-not-better.safetensors")["finetune"]["improved"] is False
    assert not (tmp_path / "finetuned.safetensors").exists()


def test_fine_tune_option_errors(tmp_path, small_dataset, capsys):
    base = ["train", "--base", "cellzoo-he", "--data", str(small_dataset), "--out", str(tmp_path)]
    assert main(base + ["--workers", "1"]) == 2
    assert "--workers is not used when fine-tuning" in capsys.readouterr().err
    assert main(base + ["--epochs", "2"]) == 2
    assert "--epochs needs --steps-per-epoch" in capsys.readouterr().err
    assert main(base + ["--config", '{"epochs": 2}']) == 2
    assert "unknown fine-tuning option" in capsys.readouterr().err


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
