"""The tiled engine with a real (briefly trained, narrow) RepSNet on real MoNuSeg / DSB images."""
import numpy as np
import pytest
import torch

from cellzoo.infer import DIHEDRAL_OPS, permute_directions, prepare_image, segment, segment_iter, \
    segment_stack_iter, select_device
from cellzoo.infer.device import cpu_supports_bf16
from cellzoo.metrics.instance import aji
from cellzoo.types import CancelToken, Cancelled, Progress, run_to_end


def test_tiled_matches_single_pass_on_monuseg(small_repsnet, monuseg_image):
    single = segment(small_repsnet, monuseg_image, tile=2048, device="cpu", amp=False, keep_maps=True)
    tiled = segment(small_repsnet, monuseg_image, tile=384, device="cpu", amp=False, keep_maps=True)
    assert single.meta["tiles"] == 1 and tiled.meta["tiles"] >= 9
    assert single.count > 300  # a decisive model: the comparison is not between two empty maps
    assert aji(single.labels, tiled.labels) >= 0.99
    for name in ("nucleus", "distance"):
        interior = (slice(None), slice(40, -40), slice(40, -40))
        np.testing.assert_allclose(tiled.meta["maps"][name][interior], single.meta["maps"][name][interior],
                                   atol=1e-3)


def test_embedded_default_tiles_without_seams(monuseg_image):
    # the shipped H&E model (half-resolution RepSNet) on a full MoNuSeg image: 1 pass vs >= 9 tiles
    from cellzoo.zoo import load_model

    loaded = load_model("cellzoo-he")
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    single = segment(model, monuseg_image, tile=2048, device="cpu", amp=False)
    tiled = segment(model, monuseg_image, tile=3 * model.halo + 96, device="cpu", amp=False)
    assert single.meta["tiles"] == 1 and tiled.meta["tiles"] >= 9
    assert single.count > 300
    assert aji(single.labels, tiled.labels) >= 0.99


def test_core_window_upsampling_equals_full_resolution_maps(monuseg_image):
    # the half-resolution default returns maps at 1/2 to the engine, which upsamples only the tile core:
    # the values must be those of upsampling the whole tile (the model's full-resolution output), also
    # through the dihedral TTA ops, and also for windows touching the tile border
    from cellzoo.infer.engine import _activate, predict_maps
    from cellzoo.zoo import load_model

    loaded = load_model("cellzoo-he")
    model = (loaded[0] if isinstance(loaded, tuple) else loaded).eval()
    assert model.output_stride == 2
    batch = model.preprocess(monuseg_image[:256, :192].astype(np.float32))[None]
    with torch.no_grad():
        full = {False: _activate(model, model(batch)), True: predict_maps(model, batch, tta=True)}
        # the whole-tile TTA maps above went through the same windowed path with the full window: check
        # that window against an independent full-resolution TTA average as well
        views = []
        for op in DIHEDRAL_OPS:
            maps = {k: op.invert(v) for k, v in _activate(model, model(op.apply(batch))).items()}
            views.append(model.tta_transform_maps(maps, op))
        for name in full[True]:
            torch.testing.assert_close(full[True][name], sum(v[name] for v in views) / 8, atol=1e-5, rtol=1e-5)
        for tta in (False, True):
            for window in [(64, 64, 128, 64), (0, 0, 256, 192), (0, 96, 32, 96), (224, 0, 32, 192)]:
                top, left, height, width = window
                part = predict_maps(model, batch, tta=tta, window=window)
                for name, value in part.items():
                    expected = full[tta][name][:, :, top:top + height, left:left + width]
                    assert value.shape == expected.shape
                    torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="output grid"):
            predict_maps(model, batch, window=(1, 0, 32, 32))


def test_auto_tile_keeps_a_1000px_image_in_one_pass():
    # a MoNuSeg-sized image must not be cut into tiles by rounding (it was: 4 tiles of 672 px)
    from cellzoo.infer.engine import auto_tile_size
    from cellzoo.infer.tiling import plan_tiles
    from cellzoo.zoo import load_model

    loaded = load_model("cellzoo-he")
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    tile = auto_tile_size(model, torch.device("cpu"), 4, (1000, 1000))
    assert len(plan_tiles(1000, 1000, tile, model.halo, model.size_divisor, model.min_tile)) == 1


def test_scale_segments_the_resized_image_and_returns_labels_at_its_size(small_repsnet, dsb_gray):
    one = segment(small_repsnet, dsb_gray, device="cpu", amp=False)
    double = segment(small_repsnet, dsb_gray, device="cpu", amp=False, scale=2.0)
    assert one.meta["scale"] == 1.0 and double.meta["scale"] == 2.0
    assert double.meta["scaled_shape"] == [2 * s for s in dsb_gray.shape]
    assert double.labels.shape == dsb_gray.shape and double.labels.dtype == np.int32
    assert set(double.scores) == set(np.unique(double.labels).tolist()) - {0}
    # exactly: the engine on the image resized by 2 (what a user could do by hand), labels brought back by
    # nearest neighbour
    from skimage.transform import resize

    prepared = prepare_image(dsb_gray)
    by_hand = resize(prepared, (2 * dsb_gray.shape[0], 2 * dsb_gray.shape[1]) + prepared.shape[2:], order=1,
                     preserve_range=True, anti_aliasing=False).astype(np.float32)
    direct = segment(small_repsnet, by_hand, device="cpu", amp=False, normalize="none")
    expected = resize(direct.labels, dsb_gray.shape, order=0, preserve_range=True, anti_aliasing=False)
    assert double.count > 10
    np.testing.assert_array_equal(double.labels, expected)
    with pytest.raises(ValueError, match="'large' is not a number"):
        segment(small_repsnet, dsb_gray, scale="large")
    with pytest.raises(ValueError, match="between 0.05 and 20"):
        segment(small_repsnet, dsb_gray, scale=0)
    with pytest.raises(ValueError, match="object_area"):
        segment(small_repsnet, dsb_gray, scale="auto")


def test_auto_scale_shrinks_images_of_large_nuclei_and_scores_better(shared_data):
    # cellzoo-fluo declares the nucleus area it segments best (tuned on validation) and defaults to "auto".
    # DSB 2018 test images whose nuclei are large (ground-truth median area > 1500 px, 11 of 50) must run
    # a second pass at reduced scale, come back at their own size, and score better than at scale 1
    import tifffile

    from cellzoo.metrics.instance import dsb_ap
    from cellzoo.zoo import load_model

    loaded = load_model("cellzoo-fluo")
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    assert model.metadata["default_scale"] == "auto" and model.metadata["object_area"] > 0
    folder = shared_data / "dsb2018" / "test"
    at_one, auto_scores = [], []
    for path in sorted((folder / "images").glob("*.tif")):
        truth = tifffile.imread(folder / "masks" / path.name)
        areas = np.bincount(truth.ravel())[1:]
        if np.median(areas[areas > 0]) <= 1500:
            continue
        image = tifffile.imread(path)
        one = segment(model, image, device="cpu", amp=False, scale=1.0)
        auto = segment(model, image, device="cpu", amp=False)
        assert auto.meta["scale_mode"] == "auto" and 0.5 <= auto.meta["scale"] < 0.85
        assert auto.labels.shape == image.shape[:2]
        assert auto.meta["seconds"] > auto.meta["first_pass_seconds"]
        at_one.append(dsb_ap(truth, one.labels))
        auto_scores.append(dsb_ap(truth, auto.labels))
    assert len(at_one) >= 8
    assert np.mean(auto_scores) > np.mean(at_one) + 0.05  # measured: 0.77 -> 0.92


def test_meta_reports_device_time_and_tiles(small_repsnet, dsb_gray):
    events = []
    result = run_to_end(segment_iter(small_repsnet, dsb_gray, device="cpu", tile=128, batch_size=2), events.append)
    assert result.meta["device"] == "cpu"
    assert result.meta["seconds"] > 0 and result.meta["network_seconds"] <= result.meta["seconds"]
    tiles = [e for e in events if isinstance(e, Progress) and e.stage == "tiles"]
    assert tiles[-1].done == tiles[-1].total == result.meta["tiles"] > 1
    assert result.labels.dtype == np.int32 and result.labels.shape == dsb_gray.shape


def test_cancel_after_first_tile_raises_and_returns_nothing(small_repsnet, monuseg_image):
    token = CancelToken()
    gen = segment_iter(small_repsnet, monuseg_image[:400, :400], tile=128, batch_size=1, device="cpu", cancel=token)
    seen = []
    with pytest.raises(Cancelled):
        for event in gen:
            seen.append(event)
            if isinstance(event, Progress) and event.done == 1:
                token.cancel()
    assert seen[-1].done == 1 and seen[-1].total > 2


def test_input_types_give_consistent_results(small_repsnet, monuseg_image, dsb_gray):
    crop = monuseg_image[:256, :256]
    kw = dict(device="cpu", amp=False)
    rgb = segment(small_repsnet, crop, **kw)
    assert rgb.count > 5
    rgba = segment(small_repsnet, np.dstack([crop, np.full(crop.shape[:2], 255, np.uint8)]), **kw)
    unit_float = segment(small_repsnet, crop.astype(np.float32) / 255.0, **kw)
    np.testing.assert_array_equal(rgba.labels, rgb.labels)
    assert aji(rgb.labels, unit_float.labels) > 0.999
    gray = segment(small_repsnet, dsb_gray, **kw)
    gray3 = segment(small_repsnet, np.repeat(dsb_gray[..., None], 3, axis=2), **kw)
    np.testing.assert_array_equal(gray.labels, gray3.labels)
    # 16-bit fluorescence: percentile-normalised on the way in
    deep = dsb_gray.astype(np.uint16) * 64 + 100
    from_16bit = segment(small_repsnet, deep, **kw)
    from_prepared = segment(small_repsnet, prepare_image(deep), normalize="none", **kw)
    np.testing.assert_array_equal(from_16bit.labels, from_prepared.labels)
    # channel choice: the nuclear channel of a two-channel image
    two = np.dstack([np.zeros_like(dsb_gray), dsb_gray])
    np.testing.assert_array_equal(segment(small_repsnet, two, channel=1, **kw).labels, gray.labels)


def test_bad_arguments_have_clear_errors(small_repsnet, dsb_gray):
    with pytest.raises(ValueError, match="batch_size"):
        segment(small_repsnet, dsb_gray, batch_size=0)
    with pytest.raises(ValueError, match="unknown post-processing parameter"):
        segment(small_repsnet, dsb_gray, params={"thresh": 3})
    with pytest.raises(ValueError, match="single 2-D image"):
        segment(small_repsnet, np.zeros((2, 3, 32, 32)))
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device("cuda")
    assert select_device("cpu") == (torch.device("cpu"), "cpu")


def test_repsnet_distance_channels_follow_every_dihedral_op(shared_data):
    import imageio.v3 as iio

    from cellzoo.models.repsnet import distance_targets

    path = sorted((shared_data / "monuseg2018" / "labels" / "test").glob("*.png"))[0]
    labels = iio.imread(path)[:96, :128].astype(np.int32)
    original = torch.from_numpy(distance_targets(labels))[None]
    for op in DIHEDRAL_OPS:
        moved = op.apply(torch.from_numpy(labels)[None, None])[0, 0].numpy()
        back = op.invert(torch.from_numpy(distance_targets(moved))[None])
        torch.testing.assert_close(permute_directions(back, op), original)


def test_tta_makes_repsnet_maps_equivariant(small_repsnet, monuseg_image):
    # square 256² crop, halo 32: the padding is symmetric, so with 8-fold TTA (and the model's
    # direction hook) the maps of a rotated / mirrored image are the rotated / mirrored maps
    crop = monuseg_image[300:556, 300:556]
    base = segment(small_repsnet, crop, tta=True, device="cpu", amp=False, keep_maps=True)
    plain = segment(small_repsnet, crop, tta=False, device="cpu", amp=False, keep_maps=True)
    assert base.count > 5 and base.meta["tta"]
    assert np.abs(base.meta["maps"]["nucleus"] - plain.meta["maps"]["nucleus"]).max() > 1e-3  # TTA did something
    for op in (DIHEDRAL_OPS[1], DIHEDRAL_OPS[4], DIHEDRAL_OPS[7]):
        moved = op.apply(torch.from_numpy(crop).permute(2, 0, 1)).permute(1, 2, 0).contiguous().numpy()
        result = segment(small_repsnet, moved, tta=True, device="cpu", amp=False, keep_maps=True)
        nucleus = op.invert(torch.from_numpy(result.meta["maps"]["nucleus"]))
        distance = permute_directions(op.invert(torch.from_numpy(result.meta["maps"]["distance"]))[None], op)[0]
        np.testing.assert_allclose(nucleus.numpy(), base.meta["maps"]["nucleus"], atol=1e-4)
        np.testing.assert_allclose(distance.numpy(), base.meta["maps"]["distance"], atol=1e-4)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_is_used_and_maps_stay_close(small_repsnet, monuseg_image):
    crop = monuseg_image[:512, :512]
    fp32 = segment(small_repsnet, crop, device="cpu", amp=False, keep_maps=True)
    bf16 = segment(small_repsnet, crop, device="cpu", amp=True, keep_maps=True)
    assert fp32.meta["amp"] == "fp32" and bf16.meta["amp"] == "bfloat16"
    difference = np.abs(fp32.meta["maps"]["nucleus"] - bf16.meta["maps"]["nucleus"])
    assert 0 < difference.mean() < 0.01
    small_repsnet.cpu_bf16_ok = False  # a model can opt out of CPU bf16 for amp=True
    assert segment(small_repsnet, crop[:128, :128], device="cpu", amp=True).meta["amp"] == "fp32"
    assert segment(small_repsnet, crop[:128, :128], device="cpu", amp="bf16").meta["amp"] == "bfloat16"
    # (instances are not compared: RepSNet's vote post-processing is sensitive to bf16 rounding of the
    # distance maps on this briefly trained model; benchmarks/inference.py reports fp32 vs bf16 accuracy)


def test_stack_is_segmented_plane_by_plane(small_repsnet, dsb_gray):
    stack = np.stack([dsb_gray, dsb_gray[::-1], dsb_gray])
    events = []
    results = run_to_end(segment_stack_iter(small_repsnet, stack, device="cpu", amp=False), events.append)
    assert len(results) == 3 and [e.done for e in events] == [0, 1, 2, 3]
    np.testing.assert_array_equal(results[0].labels, results[2].labels)
    np.testing.assert_array_equal(results[1].labels, segment(small_repsnet, dsb_gray[::-1], amp=False).labels)
