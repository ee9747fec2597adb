"""The trainer with a real narrow RepSNet on small crops of real MoNuSeg / CoNSeP data."""
import json

import numpy as np
import pytest
import torch

from cellzoo.data.sample import Sample
from cellzoo.models import build_model
from cellzoo.train import TrainConfig, train, train_iter
from cellzoo.types import CancelToken, Progress, TrainStep, Validation, run_to_end
from cellzoo.zoo.weights import load_weights, read_metadata

SMALL = {"filters": (8, 16, 32, 64), "align_corners": False}


@pytest.fixture(scope="module")
def monuseg_samples(shared_data):
    import imageio.v3 as iio

    folder = shared_data / "monuseg2018"
    names = [p.name for p in sorted((folder / "images" / "train").glob("*.png"))[:2]]
    out = []
    for name in names:
        image = iio.imread(folder / "images" / "train" / name)
        labels = iio.imread(folder / "labels" / "train" / name).astype(np.int32)
        out.append(Sample(name, image[:160, :160], labels[:160, :160]))
    return out[:1] + [Sample(s.name + "_b", s.image, s.labels) for s in out[1:]], \
        [Sample("val", out[1].image[:96, :96].copy(), out[1].labels[:96, :96].copy())]


def _config(tmp_path, **kw):
    values = dict(epochs=2, steps_per_epoch=2, batch_size=2, crop=64, lr=1e-3, augment="flip,brightness",
                  out_dir=str(tmp_path), seed=7, device="cpu", scheduler="plateau")
    values.update(kw)
    return TrainConfig(**values)


def _losses(history_events):
    return [e.losses["total"] for e in history_events if isinstance(e, TrainStep)]


def test_events_checkpoints_and_metadata(tmp_path, monuseg_samples):
    train_samples, val_samples = monuseg_samples
    events = []
    result = run_to_end(train_iter(build_model("repsnet", SMALL), train_samples, val_samples, _config(tmp_path)),
                        events.append)
    steps = [e for e in events if isinstance(e, TrainStep)]
    validations = [e for e in events if isinstance(e, Validation)]
    assert [(s.epoch, s.step) for s in steps] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(np.isfinite(s.losses["total"]) and s.lr == pytest.approx(1e-3) for s in steps)
    assert [v.epoch for v in validations] == [1, 2] and validations[0].best
    assert {"aji", "dice", "pq"} <= set(validations[0].metrics)
    assert any(isinstance(e, Progress) and e.stage == "validation" for e in events)
    assert result.best_path == tmp_path / "best.safetensors" and not result.cancelled
    meta = read_metadata(result.best_path)
    best_epoch = max((v for v in validations if v.best), key=lambda v: v.epoch).epoch
    assert meta["epoch"] == best_epoch and meta["family"] == "repsnet" and "pq" in meta["metrics"]
    assert meta["training"]["config"]["crop"] == 64 and meta["training"]["train_images"]
    model, _ = load_weights(result.best_path)
    assert model.config.filters == (8, 16, 32, 64)
    state = torch.load(tmp_path / "last_state.pt", weights_only=True)
    assert state["epoch"] == 2 and "optimizer" in state
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))


def test_same_seed_gives_identical_losses(tmp_path, monuseg_samples):
    train_samples, _ = monuseg_samples
    runs = []
    for name in ("a", "b"):
        events = []
        torch.manual_seed(0)  # the initial weights are the caller's; the trainer seeds everything after
        train(build_model("repsnet", SMALL), train_samples, [],
              _config(tmp_path / name, epochs=1, steps_per_epoch=3, augment="default"), on_event=events.append)
        runs.append(_losses(events))
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def test_resume_continues_exactly(tmp_path, monuseg_samples):
    train_samples, val_samples = monuseg_samples
    straight = []
    torch.manual_seed(0)
    train(build_model("repsnet", SMALL), train_samples, val_samples, _config(tmp_path / "straight"),
          on_event=straight.append)
    first = []
    torch.manual_seed(0)
    train(build_model("repsnet", SMALL), train_samples, val_samples, _config(tmp_path / "split", epochs=1),
          on_event=first.append)
    second = []
    result = train(build_model("repsnet", SMALL), train_samples, val_samples,
                   _config(tmp_path / "split", resume=True), on_event=second.append)
    assert [s.epoch for s in second if isinstance(s, TrainStep)] == [2, 2]
    np.testing.assert_allclose(_losses(first) + _losses(second), _losses(straight), rtol=1e-5)
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_resume_after_a_kill_between_the_two_last_writes(tmp_path, monuseg_samples):
    """A kill after last.safetensors of epoch 2 but before last_state.pt of epoch 2: the state file (epoch 1,
    with its own weights) decides, so --resume redoes epoch 2 from epoch 1's weights exactly as the straight
    run did (not on top of epoch 2's weights)."""
    import shutil

    from cellzoo.train.trainer import LAST_NAME, STATE_NAME

    train_samples, val_samples = monuseg_samples
    straight = []
    torch.manual_seed(0)
    train(build_model("repsnet", SMALL), train_samples, val_samples, _config(tmp_path / "straight"),
          on_event=straight.append)
    killed = tmp_path / "killed"
    torch.manual_seed(0)
    train(build_model("repsnet", SMALL), train_samples, val_samples, _config(killed, epochs=1))
    state_after_epoch_1 = (killed / STATE_NAME).read_bytes()
    train(build_model("repsnet", SMALL), train_samples, val_samples, _config(killed, resume=True))
    (killed / STATE_NAME).write_bytes(state_after_epoch_1)  # as if killed before the state's write
    from cellzoo.zoo.weights import read_metadata

    assert read_metadata(killed / LAST_NAME)["epoch"] == 2
    second = []
    train(build_model("repsnet", SMALL), train_samples, val_samples, _config(killed, resume=True),
          on_event=second.append)
    assert [s.epoch for s in second if isinstance(s, TrainStep)] == [2, 2]
    np.testing.assert_allclose(_losses(second), _losses(straight)[2:], rtol=1e-5)
    shutil.rmtree(killed)


def test_worker_processes_make_the_same_batches_and_stop_with_a_cancel(tmp_path, monuseg_samples):
    """Batches made ahead by two worker processes are the batches made in-process (each is seeded by its
    epoch and step), so the losses agree; a cancel ends the run and its workers."""
    import multiprocessing

    train_samples, _ = monuseg_samples
    runs = []
    for name, workers in (("in_process", 0), ("workers", 2)):
        events = []
        torch.manual_seed(0)
        train(build_model("repsnet", SMALL), train_samples, [],
              _config(tmp_path / name, epochs=2, steps_per_epoch=2, augment="default", num_workers=workers),
              on_event=events.append)
        runs.append(_losses(events))
    assert len(runs[0]) == 4 and runs[0] == runs[1]

    token = CancelToken()
    before = set(multiprocessing.active_children())

    def cancel_at_second_step(event):
        if isinstance(event, TrainStep) and event.step == 2:
            token.cancel()
    result = train(build_model("repsnet", SMALL), train_samples, [],
                   _config(tmp_path / "cancelled", epochs=3, steps_per_epoch=4, num_workers=2), cancel=token,
                   on_event=cancel_at_second_step)
    assert result.cancelled
    assert set(multiprocessing.active_children()) <= before  # no worker left behind


def test_cancel_stops_at_the_next_step_and_keeps_best(tmp_path, monuseg_samples):
    train_samples, val_samples = monuseg_samples
    token = CancelToken()
    events = []
    gen = train_iter(build_model("repsnet", SMALL), train_samples, val_samples,
                     _config(tmp_path, epochs=3, steps_per_epoch=3), cancel=token)

    def on_event(event):
        events.append(event)
        if isinstance(event, TrainStep) and event.epoch == 2 and event.step == 1:
            token.cancel()
    result = run_to_end(gen, on_event)
    assert result.cancelled
    assert [(s.epoch, s.step) for s in events if isinstance(s, TrainStep)][-1] == (2, 1)
    assert result.best_path is not None and read_metadata(result.best_path)["epoch"] == 1
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))


def test_typed_training_reports_mpq_and_oversamples(tmp_path, shared_data):
    from cellzoo.data import load_shared_dataset

    consep = load_shared_dataset("consep", "train")
    samples = [consep[i] for i in range(3)]
    samples = [Sample(s.name, s.image[:128, :128], s.labels[:128, :128], s.classes[:128, :128]) for s in samples]
    model = build_model("repsnet", {**SMALL, "num_classes": 5})
    result = train(model, samples[:2], samples[2:], _config(tmp_path, epochs=1, oversample_rare=True))
    assert "mpq+" in result.history[0]["metrics"]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="crop"):
        TrainConfig(crop=4)
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 0.1})
