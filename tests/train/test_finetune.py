"""Fine-tuning on a few corrections: content de-duplication, region hold-out, the guard, a real tiny run."""
import io

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from cellzoo.data import load_shared_dataset
from cellzoo.data.sample import Sample
from cellzoo.infer.engine import resolve_model
from cellzoo.train.finetune import (NOT_BETTER_NAME, TUNED_NAME, FinetuneRecipe, finetune, holdout_stripe,
                                    image_fingerprint, prepare_finetune_data, same_content, selection_score)
from cellzoo.train.trainer import validation_metrics
from cellzoo.types import run_to_end
from cellzoo.zoo.weights import read_metadata


@pytest.fixture(scope="module")
def monuseg(shared_data):
    data = load_shared_dataset("monuseg2018", "train", root=shared_data)
    return [data[0], data[1], data[2]]


def _region(sample, y, x, h, w, name=None):
    window = (slice(y, y + h), slice(x, x + w))
    return Sample(name or sample.name, sample.image[window].copy(), sample.labels[window].copy())


def test_exact_and_near_duplicates_are_found_whatever_the_source(monuseg):
    a, b = monuseg[0], monuseg[1]
    # the same image as a "layer" (array, other name) and as a "folder" file read back through PNG
    buffer = io.BytesIO()
    iio.imwrite(buffer, a.image, extension=".png")
    from_file = Sample("folder/a.png", iio.imread(buffer.getvalue(), extension=".png"), a.labels.copy())
    assert same_content(image_fingerprint(a.image), image_fingerprint(from_file.image))
    # a near copy: JPEG re-encoded, which changes most pixel values
    jpeg = iio.imread(iio.imwrite("<bytes>", a.image, extension=".jpg", quality=80), extension=".jpg")
    assert not np.array_equal(jpeg, a.image)
    assert same_content(image_fingerprint(a.image), image_fingerprint(jpeg))
    # a different image of the same size is not a copy
    assert not same_content(image_fingerprint(a.image), image_fingerprint(b.image))

    layer = Sample("layer pair", a.image.copy(), a.labels.copy())
    data = prepare_finetune_data([layer, from_file, b, Sample("jpeg", jpeg, a.labels.copy())],
                                 [from_file, monuseg[2]])
    assert [s.name for s in data.train] == ["layer pair", b.name]
    assert [s.name for s in data.val] == [monuseg[2].name]  # the training image was removed from validation
    assert data.duplicates_removed == 3 and not data.holdout_region
    assert any("duplicate" in note for note in data.notes) and any("also training" in note for note in data.notes)


def test_a_few_images_each_keep_their_tissue_in_training_and_many_hold_out_whole_images(monuseg):
    """Four corrected patches: a stripe of each is held out (every tissue trains, all are judged); eight or
    more: whole images are held out, seeded."""
    four = [_region(monuseg[i % 3], 256 * (i // 3), 0, 256, 256, f"patch {i}") for i in range(4)]
    data = prepare_finetune_data(four)
    assert data.holdout_region and len(data.train) == len(data.val) == 4
    assert all(t.image.shape == (256, 256 - 64 - 16, 3) and v.image.shape == (256, 64, 3)
               for t, v in zip(data.train, data.val))
    eight = [_region(monuseg[i % 3], 256 * (i // 3), 0, 256, 256, f"patch {i}") for i in range(8)]
    data = prepare_finetune_data(eight, seed=3)
    assert not data.holdout_region and len(data.train) == 6 and len(data.val) == 2
    assert {s.name for s in data.train}.isdisjoint({s.name for s in data.val})
    assert data.notes == ["held out 2 of 8 images for validation"]


def test_one_image_holds_out_a_region_and_says_so(monuseg):
    sample = _region(monuseg[0], 0, 0, 400, 600)
    data = prepare_finetune_data([sample])
    assert data.holdout_region and len(data.train) == len(data.val) == 1
    train, val = data.train[0], data.val[0]
    assert val.image.shape == (400, 150, 3) and train.image.shape == (400, 600 - 150 - 16, 3)
    np.testing.assert_array_equal(val.image, sample.image[:, 450:])  # the right 25 %, untouched
    np.testing.assert_array_equal(train.labels, sample.labels[:, :434])
    assert "held out the last 25%" in data.notes[0] and "one image" in data.notes[0]
    # a tall image is cut across its height
    tall_train, tall_val = holdout_stripe(_region(monuseg[0], 0, 0, 600, 300))
    assert tall_val.image.shape[:2] == (150, 300) and tall_train.image.shape[:2] == (434, 300)
    with pytest.raises(ValueError, match="no corrected images"):
        prepare_finetune_data([])


def test_tiny_finetune_on_real_data_does_not_drop(monuseg, tmp_path):
    torch.set_num_threads(2)
    data = prepare_finetune_data([_region(monuseg[0], 0, 0, 320, 384), _region(monuseg[1], 0, 0, 320, 384)])
    model = resolve_model("cellzoo-he")
    recipe = FinetuneRecipe(steps=4, warmup_steps=1, eval_every=2, crop=128, batch_size=2, seed=0)
    result = finetune(model, data, recipe, device="cpu", out_dir=tmp_path)
    assert [h["step"] for h in result.history] == [0, 2, 4]
    assert any("learning rate 3e-05" in note for note in result.notes)  # a good base gets the gentle lr
    # "after" is the best evaluated state; the model kept scores at least the base on the held-out stripes
    assert selection_score(result.after) == max(h["score"] for h in result.history[1:])
    kept = run_to_end(validation_metrics(model, data.val, device=torch.device("cpu")))
    assert selection_score(kept) >= selection_score(result.before) - 1e-9
    assert abs(selection_score(result.after) - selection_score(result.before)) < 0.05  # a nudge, not a wreck
    meta = read_metadata(result.best_path)["finetune"]
    assert meta["improved"] is result.improved and meta["base"] == "cellzoo-he" and meta["before"] == result.before
    assert result.best_path == tmp_path / (TUNED_NAME if result.improved else NOT_BETTER_NAME)
    if result.improved:
        assert selection_score(kept) == pytest.approx(selection_score(result.after))


def test_guard_a_run_that_gets_worse_keeps_the_base(monuseg, tmp_path):
    torch.set_num_threads(2)
    data = prepare_finetune_data([_region(monuseg[0], 0, 0, 384, 512)])
    model = resolve_model("cellzoo-he")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    # an absurd learning rate wrecks the weights within two steps
    recipe = FinetuneRecipe(steps=2, lr=0.5, warmup_steps=0, eval_every=1, crop=128, batch_size=2,
                            grad_clip=None, pull_to_base=0.0)
    result = finetune(model, data, recipe, device="cpu", out_dir=tmp_path)
    assert not result.improved and result.best_path == tmp_path / NOT_BETTER_NAME
    assert selection_score(result.after) < selection_score(result.before)
    assert all(torch.equal(base[k], v) for k, v in model.state_dict().items())  # the base weights came back
    assert read_metadata(result.best_path)["finetune"]["improved"] is False
    assert not (tmp_path / TUNED_NAME).exists()
    assert result.summary().startswith("did not beat the base: PQ ") and "kept the base" in result.summary()


def test_recipe_steps_scale_with_the_data_and_bad_options_are_refused():
    small, large = FinetuneRecipe.for_data(256 * 256), FinetuneRecipe.for_data(8 * 1000 * 1000)
    assert small.steps < large.steps and small.steps >= 200 and large.steps <= 600
    assert FinetuneRecipe.for_data(10**6, lr=1e-5).lr == 1e-5
    with pytest.raises(ValueError, match="bn must be"):
        FinetuneRecipe(bn="whatever")
    with pytest.raises(ValueError, match="unknown fine-tuning option"):
        FinetuneRecipe.from_dict({"epochs": 3})


def test_synthesis_pastes_corrected_nuclei_into_the_training_crops(monuseg):
    """recipe.synthesis > 0: training crops carry extra nuclei cut from the corrected images (their count
    grows), the run says so, and it still trains (a finite loss, the guard decides as always)."""
    torch.set_num_threads(2)
    from cellzoo.data.spacefill import SpaceFill, build_cell_library

    sample = _region(monuseg[0], 0, 0, 256, 256)
    library = build_cell_library([sample], seed=0)
    assert len(library) > 20  # every corrected nucleus of a MoNuSeg crop of 256²
    fill = SpaceFill(library, n_cells=8)
    rng = np.random.default_rng(0)
    image, labels, _ = fill(sample.image.astype(np.float32), sample.labels, None, rng)
    added = len(np.unique(labels)) - len(np.unique(sample.labels))
    assert added >= 3 and np.all(labels[sample.labels > 0] == sample.labels[sample.labels > 0])
    assert not np.array_equal(image, sample.image.astype(np.float32))

    data = prepare_finetune_data([_region(monuseg[0], 0, 0, 320, 384), _region(monuseg[1], 0, 0, 320, 384)])
    recipe = FinetuneRecipe(steps=2, warmup_steps=1, eval_every=2, crop=128, batch_size=2, synthesis=1.0)
    result = finetune(resolve_model("cellzoo-he"), data, recipe, device="cpu")
    assert any(note.startswith("synthesis: 100% of the crops") for note in result.notes)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["loss"])
    with pytest.raises(ValueError, match="synthesis must be in"):
        FinetuneRecipe(synthesis=1.5)


def test_the_required_gain_grows_as_the_held_out_data_shrinks(monuseg):
    """A gain measured on a few held-out nuclei is mostly noise: the guard asks for 0.5/sqrt(n) (at least
    min_gain), and the run says how many held-out nuclei it has and what it needs."""
    from cellzoo.train.finetune import count_nuclei, required_gain

    recipe = FinetuneRecipe()
    assert required_gain(recipe, 25) == pytest.approx(0.1)
    assert required_gain(recipe, 400) == pytest.approx(0.025)
    assert required_gain(recipe, 10_000) == pytest.approx(recipe.min_gain)  # plenty of data: the floor
    assert required_gain(FinetuneRecipe(noise_margin=0.0), 4) == recipe.min_gain
    sample = _region(monuseg[0], 0, 0, 200, 200)
    assert count_nuclei([sample]) == len(np.unique(sample.labels[sample.labels > 0]))
    data = prepare_finetune_data([_region(monuseg[0], 0, 0, 320, 384)])
    result = finetune(resolve_model("cellzoo-he"), data, FinetuneRecipe(steps=1, eval_every=1, crop=128,
                                                                        batch_size=1), device="cpu")
    n = count_nuclei(data.val)
    assert any(note.startswith(f"held-out data: {n} annotated nuclei") and f"{required_gain(recipe, n):.3f}" in note
               for note in result.notes)


def test_the_tuned_model_runs_at_the_size_of_the_corrected_nuclei(monuseg, tmp_path):
    """cellzoo-fluo rescales images ("auto") towards nuclei of 150 px; tuned on MoNuSeg patches it runs at their
    scale (1) and an explicit "auto" aims at the corrected nuclei's size, in memory and in the saved file."""
    from cellzoo.train.finetune import tuned_metadata
    from cellzoo.zoo.weights import load_weights

    torch.set_num_threads(2)
    train = [_region(monuseg[0], 0, 0, 320, 384), _region(monuseg[1], 0, 0, 320, 384)]
    data = prepare_finetune_data(train)
    areas = np.concatenate([np.bincount(s.labels.ravel())[1:] for s in data.train])
    corrected_area = float(np.median(areas[areas > 0]))
    model = resolve_model("cellzoo-fluo")
    base_meta = dict(model.metadata)
    assert base_meta["default_scale"] == "auto" and base_meta["object_area"] == 150
    assert tuned_metadata(base_meta, data.train)["object_area"] == corrected_area != 150
    assert tuned_metadata(base_meta, data.train)["default_scale"] == 1.0
    assert "object_area" not in tuned_metadata(dict(resolve_model("cellzoo-he").metadata), data.train)

    recipe = FinetuneRecipe(steps=2, warmup_steps=0, eval_every=1, crop=128, batch_size=2, seed=0)
    result = finetune(model, data, recipe, device="cpu", out_dir=tmp_path)
    assert any("runs at scale 1" in note and f"median area {corrected_area:.0f} px (base: 150 px)" in note
               for note in result.notes)
    saved = read_metadata(result.best_path)
    assert saved["default_scale"] == 1.0 and saved["object_area"] == corrected_area
    assert saved["scale_range"] == base_meta["scale_range"]
    _tuned, loaded_meta = load_weights(result.best_path)
    assert loaded_meta["object_area"] == corrected_area
    # in memory: the tuned metadata when the tuned weights were kept, the base's own when the base was
    assert model.metadata["object_area"] == (corrected_area if result.improved else 150)
    assert model.metadata["default_scale"] == (1.0 if result.improved else "auto")


def test_a_base_that_fails_on_the_held_out_data_gets_the_new_domain_learning_rate():
    """Held-out scores of a failing base (0–0.2) are noise, not a measure of how close the domain is: all get
    the new-domain lr; a working base (≥ 0.4) the near-domain nudge; in between log-linear, falling."""
    from cellzoo.train.finetune import auto_lr

    recipe = FinetuneRecipe()
    assert auto_lr(0.0, recipe) == auto_lr(0.107, recipe) == auto_lr(0.2, recipe) == recipe.lr_new_domain
    assert auto_lr(0.4, recipe) == pytest.approx(recipe.lr_near_domain) == auto_lr(0.9, recipe)
    between = [auto_lr(s, recipe) for s in (0.25, 0.3, 0.35)]
    assert recipe.lr_new_domain > between[0] > between[1] > between[2] > recipe.lr_near_domain
    assert auto_lr(0.0, FinetuneRecipe(lr=5e-4)) == 5e-4  # an explicit lr wins
