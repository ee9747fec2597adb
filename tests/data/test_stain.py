"""Colour tools on real H&E patches from CoNSeP / MoNuSeg."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import color, io

from cellzoo.data.stain import LabStats, he_stain_jitter, lab_stats, reinhard_normalize


@pytest.fixture(scope="module")
def patches(shared_data):
    source = io.imread(shared_data / "consep/train/images/train_10_000.jpg").astype(np.float32)
    target = io.imread(sorted((shared_data / "monuseg2018/images/train").glob("*.png"))[0])[:256, :256, :3]
    return source, target


def test_reinhard_matches_target_lab_statistics(patches):
    source, target = patches
    out = reinhard_normalize(source, target)
    assert out.dtype == np.float32 and out.shape == source.shape
    got, want = lab_stats(out), lab_stats(target)
    np.testing.assert_allclose(got.mean, want.mean, atol=0.5)
    np.testing.assert_allclose(got.std, want.std, rtol=0.05)
    # the source really was different, so the test is not trivially satisfied
    assert np.abs(np.subtract(lab_stats(source).mean, want.mean)).max() > 2.0


def test_reinhard_accepts_stats_in_several_forms(patches):
    source, target = patches
    stats = lab_stats(target)
    a = reinhard_normalize(source, stats)
    b = reinhard_normalize(source, {"mean": stats.mean, "std": stats.std})
    c = reinhard_normalize(source, (stats.mean, stats.std))
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, c)


@pytest.mark.parametrize("bad, match", [({"mean": [1, 2, 3]}, "std"), (([1, 2], [1, 2]), "3 values"),
                                        (([50, 0, 0], [1, 0, 1]), "positive"), ("x", "RGB image")])
def test_reinhard_rejects_bad_targets(patches, bad, match):
    with pytest.raises(ValueError, match=match):
        reinhard_normalize(patches[0], bad)


def test_rejects_non_rgb_and_out_of_range():
    with pytest.raises(ValueError, match="H×W×3"):
        he_stain_jitter(np.zeros((8, 8), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="0–255"):
        reinhard_normalize(np.full((8, 8, 3), 4000.0, np.float32), LabStats((50, 0, 0), (1, 1, 1)))


def test_stain_jitter_zero_amount_is_identity(patches):
    source = patches[0]
    out = he_stain_jitter(source, np.random.default_rng(1), amount_matrix=0.0, amount_stains=0.0)
    np.testing.assert_allclose(out, source, atol=1e-3)


def test_stain_jitter_scales_concentrations_by_the_drawn_factors(patches):
    source = patches[0]
    out = he_stain_jitter(source, np.random.default_rng(7), amount_matrix=0.0, amount_stains=0.3)
    factors = 1.0 + np.random.default_rng(7).uniform(-0.3, 0.3, size=3)

    def concentrations(img):
        od = np.log(np.maximum(img / 255.0, 1e-6)) / np.log(1e-6)
        return od @ color.hed_from_rgb

    # only pixels that were not clipped at 0/255 keep the exact relation
    ok = ((out > 0.5) & (out < 254.5)).all(-1) & (source > 0.5).all(-1)
    ratio = concentrations(out)[ok] / factors
    np.testing.assert_allclose(ratio, concentrations(source)[ok], rtol=1e-3, atol=1e-4)


def test_stain_jitter_is_seeded_and_bounded(patches):
    source = patches[0]
    a = he_stain_jitter(source, np.random.default_rng(3))
    b = he_stain_jitter(source, np.random.default_rng(3))
    c = he_stain_jitter(source, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.5
    assert a.min() >= 0 and a.max() <= 255 and a.dtype == np.float32
    # colours change but structure stays: strong correlation of grey levels with the input
    grey_in, grey_out = source.mean(-1).ravel(), a.mean(-1).ravel()
    assert np.corrcoef(grey_in, grey_out)[0, 1] > 0.9
    with pytest.raises(ValueError, match=">= 0"):
        he_stain_jitter(source, np.random.default_rng(0), amount_stains=-1)
