import numpy as np
import pytest

from cellzoo.infer import prepare_image, percentile_normalize


def test_rgb_uint8_is_unchanged(monuseg_image):
    out = prepare_image(monuseg_image)
    assert out.dtype == np.float32 and out.shape == monuseg_image.shape
    np.testing.assert_array_equal(out, monuseg_image.astype(np.float32))


def test_gray_becomes_three_identical_channels(dsb_gray):
    out = prepare_image(dsb_gray)
    assert out.shape == dsb_gray.shape + (3,)
    np.testing.assert_array_equal(out[..., 0], dsb_gray.astype(np.float32))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgba_drops_alpha(monuseg_image):
    alpha = np.full(monuseg_image.shape[:2] + (1,), 7, np.uint8)
    rgba = np.concatenate([monuseg_image, alpha], axis=2)
    np.testing.assert_array_equal(prepare_image(rgba), prepare_image(monuseg_image))


def test_16bit_is_percentile_normalised(dsb_gray):
    # a 12-bit camera image: the values use 0..4095 of the uint16 range
    image16 = (dsb_gray.astype(np.uint16) * 16)
    out = prepare_image(image16)
    low, high = np.percentile(image16, [1, 99.8])
    expected = np.clip((image16 - low) * 255.0 / (high - low), 0, 255)
    np.testing.assert_allclose(out[..., 0], expected, rtol=1e-5, atol=1e-3)
    assert out.max() == pytest.approx(255.0) and out.min() == 0.0


def test_float_unit_range_is_scaled(monuseg_image):
    out = prepare_image(monuseg_image.astype(np.float64) / 255.0)
    np.testing.assert_allclose(out, monuseg_image.astype(np.float32), atol=1e-3)


def test_float_with_nan_and_negative_values_is_percentile_normalised(dsb_gray):
    image = dsb_gray.astype(np.float32) - 100.0
    image[0, 0] = np.nan
    out = prepare_image(image)
    assert np.isfinite(out).all() and 0.0 <= out.min() and out.max() <= 255.0


def test_channel_choice_picks_one_channel(monuseg_image):
    two_channel = np.stack([monuseg_image[..., 0], monuseg_image[..., 2]], axis=-1)
    out = prepare_image(two_channel, channel=1)
    np.testing.assert_array_equal(out[..., 1], monuseg_image[..., 2].astype(np.float32))


def test_explicit_percentile_on_rgb_keeps_colour_balance(monuseg_image):
    out = percentile_normalize(monuseg_image)
    # one joint stretch: the channel order of mean intensities is preserved
    assert list(np.argsort(out.mean((0, 1)))) == list(np.argsort(monuseg_image.mean((0, 1))))


@pytest.mark.parametrize("bad,message", [
    (np.zeros(10), "1-D"),
    (np.zeros((2, 3, 8, 8)), "single 2-D image"),
    (np.zeros((8, 8), dtype=complex), "complex"),
    (np.zeros((8, 8), dtype=bool), "bool"),
    (np.zeros((0, 8)), "empty"),
    (np.zeros((8, 8, 5)), "channel=K"),
])
def test_bad_inputs_have_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        prepare_image(bad)


def test_bad_channel_and_normalize_choice(monuseg_image):
    with pytest.raises(ValueError, match="channel 3 does not exist"):
        prepare_image(monuseg_image, channel=3)
    with pytest.raises(ValueError, match="normalize must be"):
        prepare_image(monuseg_image, normalize="zscore")
