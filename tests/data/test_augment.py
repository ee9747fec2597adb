import numpy as np
import pytest

from cellzoo.data.augment import (BrightnessContrast, Elastic, FlipRot90, GaussianBlur, RandomScale, StainJitter,
                                  build_augment, class_aware_oversampling_weights, random_crop)
from cellzoo.data.sample import Sample


@pytest.fixture(scope="module")
def monuseg_crop(shared_data):
    import imageio.v3 as iio

    name = sorted((shared_data / "monuseg2018" / "images" / "train").glob("*.png"))[0].name
    image = iio.imread(shared_data / "monuseg2018" / "images" / "train" / name)[:160, :200].astype(np.float32)
    labels = iio.imread(shared_data / "monuseg2018" / "labels" / "train" / name)[:160, :200].astype(np.int32)
    assert len(np.unique(labels)) > 10
    return image, labels


def _label_image(labels):
    """An image whose intensity is the label id: lets a test check image and labels moved together."""
    return np.repeat(labels[..., None].astype(np.float32), 3, axis=2)


def test_flips_and_rotations_move_each_objects_pixels_with_the_image(monuseg_crop):
    image, labels = monuseg_crop
    classes = (labels % 3 + 1).astype(np.uint8) * (labels > 0)
    for seed in range(6):
        out_image, out_labels, out_classes = FlipRot90(p=1.0)(image, labels, classes, np.random.default_rng(seed))
        assert sorted(out_labels.shape) == sorted(labels.shape)
        for obj in np.unique(labels)[1:6]:
            before = np.sort(image[labels == obj], axis=0)
            after = np.sort(out_image[out_labels == obj], axis=0)
            np.testing.assert_array_equal(before, after)
            assert np.all(out_classes[out_labels == obj] == classes[labels == obj][0])


@pytest.mark.parametrize("transform", [Elastic(amount=10, p=1.0), RandomScale(scale=(0.7, 1.4), p=1.0)])
def test_geometric_warps_keep_labels_and_image_aligned(monuseg_crop, transform):
    _image, labels = monuseg_crop
    rng = np.random.default_rng(3)
    out_image, out_labels, out_classes = transform(_label_image(labels), labels, (labels > 0).astype(np.uint8), rng)
    assert out_labels.dtype == np.int32 and set(np.unique(out_labels)) <= set(np.unique(labels))
    np.testing.assert_array_equal(out_classes > 0, out_labels > 0)
    # away from object borders the (bilinear) image equals the (nearest) label map
    from scipy import ndimage

    flat = ndimage.maximum_filter(out_labels, 5) == ndimage.minimum_filter(out_labels, 5)
    assert flat.mean() > 0.5
    np.testing.assert_allclose(out_image[..., 0][flat], out_labels[flat], atol=1e-3)
    assert abs((out_labels > 0).mean() - (labels > 0).mean()) < 0.1


def test_fast_warps_equal_the_direct_scipy_versions(monuseg_crop):
    """The elastic field as rows @ lattice @ columns.T and the scale as per-channel 2-D zooms give what a
    2-D cubic zoom of the lattice and a 3-D zoom of the image give (the direct, slower forms)."""
    from scipy import ndimage

    from cellzoo.data.augment import _cubic_zoom_weights

    rng = np.random.default_rng(5)
    for grid, (height, width) in [(5, (160, 200)), (5, (416, 416)), (3, (97, 64))]:
        lattice = rng.uniform(-10, 10, (grid, grid))
        direct = ndimage.zoom(lattice, (height / grid, width / grid), order=3)[:height, :width]
        fast = _cubic_zoom_weights(grid, height) @ lattice @ _cubic_zoom_weights(grid, width).T
        np.testing.assert_allclose(fast, direct, atol=1e-10)
    image, labels = monuseg_crop
    out_image, _labels, _ = RandomScale(scale=(1.3, 1.3), p=1.0)(image, labels, None, np.random.default_rng(0))
    zoom = (out_image.shape[0] / image.shape[0], out_image.shape[1] / image.shape[1], 1)
    direct = np.clip(ndimage.zoom(image, zoom, order=1, grid_mode=True, mode="grid-mirror"), 0, 255)
    np.testing.assert_array_equal(out_image, direct.astype(np.float32))


def test_random_scale_changes_the_shape(monuseg_crop):
    image, labels = monuseg_crop
    out_image, out_labels, _ = RandomScale(scale=(1.5, 1.5), p=1.0)(image, labels, None, np.random.default_rng(0))
    assert out_labels.shape == (240, 300) and out_image.shape == (240, 300, 3)


def test_colour_transforms_leave_labels_alone(monuseg_crop):
    image, labels = monuseg_crop
    rng = np.random.default_rng(0)
    for transform in (StainJitter(p=1.0), GaussianBlur(sigma=(1.0, 2.0), p=1.0), BrightnessContrast(p=1.0)):
        out_image, out_labels, _ = transform(image, labels, None, rng)
        assert out_labels is labels
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert 0.0 <= out_image.min() and out_image.max() <= 255.0
        assert np.abs(out_image - image).mean() > 0.5
    blurred = GaussianBlur(sigma=(2.0, 2.0), p=1.0)(image, labels, None, rng)[0]
    assert blurred.std() < image.std()


def test_probability_zero_is_identity(monuseg_crop):
    image, labels = monuseg_crop
    pipeline = build_augment({name: {"p": 0.0} for name in ("flip", "scale", "elastic", "stain", "blur",
                                                             "brightness")})
    out = pipeline(image, labels, None, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0], image)
    np.testing.assert_array_equal(out[1], labels)


def test_random_crop_pads_small_inputs():
    image = np.full((20, 30, 3), 9.0, np.float32)
    labels = np.ones((20, 30), np.int32)
    out_image, out_labels, _ = random_crop(image, labels, None, 64, np.random.default_rng(0))
    assert out_image.shape == (64, 64, 3) and out_labels.shape == (64, 64)
    assert (out_labels == 1).sum() == 600 and (out_labels == 0).sum() == 64 * 64 - 600


def test_build_augment_names_and_errors():
    assert [type(t).__name__ for t in build_augment("flip,blur").transforms] == ["FlipRot90", "GaussianBlur"]
    assert len(build_augment("default")) == 6 and len(build_augment("none")) == 0
    assert "StainJitter" not in [type(t).__name__ for t in build_augment("fluorescence").transforms]
    assert build_augment({"elastic": {"amount": 3, "grid": 4}}).transforms[0].amount == 3
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augment(["flip", "mixup"])
    with pytest.raises(ValueError, match="bad options for augmentation 'blur'"):
        build_augment({"blur": {"radius": 2}})


def test_oversampling_weights_hand_computed():
    def sample(counts):
        classes = np.zeros(400, np.uint8)
        start = 0
        for cls, n in counts.items():
            classes[start:start + n] = cls
            start += n
        classes = classes.reshape(20, 20)
        return Sample("s", np.zeros((20, 20, 3)), (classes > 0).astype(np.int32), classes)

    samples = [sample({1: 100}), sample({1: 50, 2: 10}), sample({2: 20, 3: 5})]
    weights = class_aware_oversampling_weights(samples, n_rare=2, extra_fraction=0.5)
    # class pixels 150 / 30 / 5 (total 185); rare: 3 and 2 with boosts sqrt(185/5), sqrt(185/30);
    # 1.5 extra draws shared ∝ boost; within a class ∝ pixels²: class 2 → B 100/500, C 400/500
    b3, b2 = np.sqrt(185 / 5), np.sqrt(185 / 30)
    d3, d2 = 1.5 * b3 / (b3 + b2), 1.5 * b2 / (b3 + b2)
    np.testing.assert_allclose(weights, [1.0, 1.0 + d2 * 0.2, 1.0 + d3 + d2 * 0.8])
    untyped = [Sample("u", np.zeros((4, 4, 3)), np.ones((4, 4), np.int32))]
    np.testing.assert_array_equal(class_aware_oversampling_weights(untyped), [1.0])
