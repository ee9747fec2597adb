"""CLI arguments through cellzoo.cli.main in-process: each bad value ends in one line and exit 2."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cellzoo.cli import main
from cellzoo.data import write_image, write_labels


def _one_line_error(capsys, pattern: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cellzoo ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "cells.png"
    image = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for cy, cx in [(16, 16), (40, 44), (20, 48)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 200
    write_image(path, image)
    return path


# --------------------------------------------------------------------------- segment: post-processing parameters
BAD_PARAMS = [
    ("boundary_threshold=NaN", "boundary_threshold must be a finite number"),
    ("boundary_threshold=nan", "boundary_threshold must be a finite number"),
    ("boundary_threshold=Infinity", "boundary_threshold must be a finite number"),
    ("boundary_threshold=-inf", "boundary_threshold must be a finite number"),
    ("max_size=abc", "max_size must be a number, got 'abc'"),
    ("max_size=", "max_size must be a number"),
    ("max_size=[1, 2]", "max_size must be a number"),
    ("max_size={}", "max_size must be a number"),
    ("min_size=-1", "min_size must be at least 0"),
    ("min_size=true", "min_size must be a number"),
    ("min_size=null", "min_size must be a number"),
    ("foreground_threshold=0.5.5", "foreground_threshold must be a number"),
    ("no_such_param=1", "unknown post-processing parameter 'no_such_param'"),
    ("boundary_threshold", "--param expects KEY=VALUE"),
    ("=5", "--param expects KEY=VALUE"),
]


@pytest.mark.parametrize("param,message", BAD_PARAMS, ids=[p for p, _ in BAD_PARAMS])
def test_segment_bad_param(tmp_path, capsys, small_image, param, message):
    code = main(["segment", str(small_image), "--model", "cellzoo-fluo", "--scale", "1", "--out", str(tmp_path),
                 "--param", param])
    assert code == 2
    _one_line_error(capsys, re.escape(message))
    assert not list(tmp_path.glob("*_instances.tif"))


def test_segment_good_param_still_works(tmp_path, capsys, small_image):
    assert main(["segment", str(small_image), "--model", "cellzoo-fluo", "--scale", "1", "--out", str(tmp_path),
                 "--param", "boundary_threshold=3.5", "--param", "min_size=4"]) == 0
    assert (tmp_path / "cells_instances.tif").is_file()


@pytest.mark.parametrize("scale,message", [("abc", "is not a number"), ("nan", "out of range"), ("inf", "out of range"),
                                           ("-1", "out of range"), ("0", "out of range"), ("1e9", "out of range")])
def test_segment_bad_scale(tmp_path, capsys, small_image, scale, message):
    assert main(["segment", str(small_image), "--model", "cellzoo-fluo", "--scale", scale, "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, message)


@pytest.mark.parametrize("argv,message", [
    (["--tile", "abc"], "invalid int value"), (["--batch-size", "x"], "invalid int value"),
    (["--device", "tpu"], "invalid choice"), (["--normalize", "zscore"], "invalid choice"),
    (["--channel", "1.5"], "invalid int value")])
def test_segment_parser_errors(tmp_path, capsys, small_image, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["segment", str(small_image), "--out", str(tmp_path), *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


# --------------------------------------------------------------------------- segment: layouts and channels
def test_two_channel_image_is_not_128_planes(tmp_path, capsys):
    path = tmp_path / "two.tif"
    write_image(path, np.random.default_rng(2).integers(0, 255, (128, 128, 2), dtype=np.uint8))
    assert main(["segment", str(path), "--model", "cellzoo-fluo", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "has 2 channels; choose one")


def test_channel_on_a_gray_stack_is_refused(tmp_path, capsys):
    path = tmp_path / "stack.tif"
    write_image(path, np.zeros((6, 64, 64), np.uint8))
    assert main(["segment", str(path), "--model", "cellzoo-fluo", "--channel", "1", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "stack of 6 gray planes")


def test_channel_on_a_channel_first_stack_picks_the_plane(tmp_path, capsys, small_image):
    from cellzoo.data import read_image
    cells = read_image(small_image)
    path = tmp_path / "cf.tif"
    write_image(path, np.stack([np.zeros_like(cells), cells]))
    assert main(["segment", str(path), "--model", "cellzoo-fluo", "--channel", "1", "--scale", "1",
                 "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "used channel 1" in captured.err
    from cellzoo.data import read_labels
    labels = read_labels(tmp_path / "o" / "cf_instances.tif")
    assert labels.shape == (64, 64) and labels.max() >= 1


def test_negative_object_area_says_so(tmp_path, capsys, small_image):
    from zoo_helpers import tiny_model

    from cellzoo.zoo import save_weights
    weights = save_weights(tiny_model(), tmp_path / "tiny.safetensors", {"object_area": -5, "default_scale": "auto"})
    assert main(["segment", str(small_image), "--model", str(weights), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "object_area .* must be greater than 0, got -5")


@pytest.mark.parametrize("inputs,message", [(["nope.png"], "does not exist"), ([], "give at least one INPUT")])
def test_segment_inputs(tmp_path, capsys, inputs, message):
    assert main(["segment", *[str(tmp_path / i) for i in inputs], "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, message)


# --------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for k in range(3):
        labels = np.zeros((64, 64), np.int32)
        for index in range(1, 6):
            y, x = rng.integers(6, 58, 2)
            labels[y - 4:y + 4, x - 4:x + 4] = index
        image = np.where(labels > 0, 200, 30).astype(np.uint8)
        write_image(root / "images" / f"im{k}.png", image)
        write_labels(root / "labels" / f"im{k}.tif", labels)
    return root


BAD_TRAIN = [
    (["--lr", "inf"], "lr must be a finite number > 0"), (["--lr", "nan"], "lr must be a finite number > 0"),
    (["--lr", "-1"], "lr must be a finite number > 0"), (["--lr", "0"], "lr must be a finite number > 0"),
    (["--lr=-inf"], "lr must be a finite number > 0"),
    (["--epochs", "0"], "epochs must be >= 1"), (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--val-fraction", "1.5"], r"val_fraction must be in \[0, 1\)"),
    (["--val-fraction", "nan"], r"val_fraction must be in \[0, 1\)"), (["--crop", "4"], "crop must be >= 16"),
    (["--steps-per-epoch", "0"], "steps_per_epoch must be >= 1"),
    (["--config", '{"weight_decay": Infinity}'], "weight_decay must be a finite number"),
]


@pytest.mark.parametrize("argv,message", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_train_bad_numbers(tmp_path, capsys, tiny_dataset, argv, message):
    assert main(["train", "--family", "repsnet", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"),
                 *argv]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "run" / "last.safetensors").exists()


@pytest.mark.parametrize("lr", ["inf", "nan"])
def test_finetune_bad_lr(tmp_path, capsys, tiny_dataset, lr):
    assert main(["train", "--base", "cellzoo-fluo", "--data", str(tiny_dataset), "--out", str(tmp_path / "ft"),
                 "--lr", lr]) == 2
    _one_line_error(capsys, "lr must be a finite number > 0")


def test_same_seed_same_weights(tmp_path, capsys, tiny_dataset):
    from safetensors.torch import load_file

    args = ["train", "--family", "repsnet", "--data", str(tiny_dataset), "--epochs", "1", "--steps-per-epoch", "1",
            "--crop", "32", "--batch-size", "1", "--device", "cpu", "--val-fraction", "0", "--seed", "7",
            "--model-config", json.dumps({"filters": [4, 8, 8, 8], "align_corners": False})]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    first, second = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("a", "b"))
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k].float().numpy(), second[k].float().numpy()) for k in first)


# --------------------------------------------------------------------------- evaluate and zoo
@pytest.mark.parametrize("argv,message", [
    (["--gt", "nope", "--pred", "nope"], "not found|does not exist"), (["--max-dets", "5"], "at least 100"),
    (["--gt-classes", "x"], "need both --gt-classes and --pred-classes")])
def test_evaluate_arguments(tmp_path, capsys, argv, message):
    labels = np.zeros((16, 16), np.int32)
    labels[2:6, 2:6] = 1
    write_labels(tmp_path / "gt" / "a.tif", labels)
    write_labels(tmp_path / "pred" / "a.tif", labels)
    base = {"--gt": str(tmp_path / "gt"), "--pred": str(tmp_path / "pred")}
    for key, value in zip(argv[::2], argv[1::2]):
        base[key] = str(tmp_path / value) if key in ("--gt", "--pred", "--gt-classes") else value
    assert main(["evaluate", "--quiet", *[x for kv in base.items() for x in kv]]) == 2
    _one_line_error(capsys, message)


@pytest.mark.parametrize("argv,message", [(["zoo", "fetch", "no-such-model"], "no-such-model"),
                                          (["zoo", "import", "missing.pth", "--name", "x"], "does not exist")])
def test_zoo_arguments(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("CELLZOO_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line_error(capsys, message)


def test_zoo_list_has_a_status_legend(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "STATUS: embedded = shipped inside the package" in out
    statuses = set(re.findall(r"\s(embedded|cached|downloadable|user|missing)\s", out.split("STATUS:")[0]))
    legend = out.split("STATUS:")[1]
    assert statuses and all(f"{status} = " in legend for status in statuses)


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("content", ["malicious zip", "malicious legacy", "text"])
def test_train_resume_from_a_bad_state_file(tmp_path, capsys, tiny_dataset, content):
    import torch

    from cellzoo.train.trainer import STATE_NAME
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "payload-ran"
    if content == "text":
        (run / STATE_NAME).write_text("epoch 3\n")
    else:
        torch.save({"epoch": 1, "evil": _RunsShell(marker)}, run / STATE_NAME,
                   _use_new_zipfile_serialization=content == "malicious zip")
    assert main(["train", "--family", "repsnet", "--data", str(tiny_dataset), "--out", str(run), "--resume",
                 "--epochs", "1", "--steps-per-epoch", "1", "--crop", "32", "--val-fraction", "0",
                 "--model-config", json.dumps({"filters": [4, 8, 8, 8]})]) == 2
    _one_line_error(capsys, "is not a PyTorch checkpoint" if content == "text" else "could run code")
    assert not marker.exists()
