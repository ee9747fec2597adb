import numpy as np
import pytest

from cellzoo.infer.tiling import plan_tiles, reflect_pad


@pytest.mark.parametrize("length,tile,halo,divisor", [(1000, 256, 32, 8), (517, 128, 16, 16), (64, 512, 32, 8),
                                                      (300, 96, 8, 1), (5, 64, 32, 8), (1000, 288, 64, 16)])
def test_plan_covers_every_pixel_with_positive_weight(length, tile, halo, divisor):
    plan = plan_tiles(length, length + 13, tile, halo, divisor)
    assert plan.tile_shape[0] % divisor == 0 and plan.tile_shape[1] % divisor == 0
    weight = np.zeros((plan.height, plan.width))
    coverage = np.zeros((plan.height, plan.width), int)
    padded = reflect_pad(np.zeros((plan.height, plan.width)), plan.pad_width())
    for row, col, y, x in plan.positions:
        assert padded[y:y + plan.tile_shape[0], x:x + plan.tile_shape[1]].shape == plan.tile_shape
        h, w = plan.core_extent(y, x)
        weight[y:y + h, x:x + w] += plan.weights(row, col)[:h, :w]
        coverage[y:y + h, x:x + w] += 1
        # starts on the network's coarsest grid, so tiles and a single pass see the same pixel groups
        assert y % divisor == 0 and x % divisor == 0
    assert (coverage >= 1).all() and (weight > 0).all()


def test_owned_intervals_partition_the_axis():
    plan = plan_tiles(1000, 1000, 256, 32, 8)
    assert len(plan.rows.starts) > 3
    intervals = [plan.rows.owned(i, 1000) for i in range(len(plan.rows.starts))]
    assert intervals[0][0] == 0 and intervals[-1][1] == 1000
    for (a0, a1), (b0, b1) in zip(intervals, intervals[1:]):
        assert a1 == b0 and a0 < a1
    # each owned interval lies inside its tile's core
    for i, (start, end) in enumerate(intervals):
        assert plan.rows.starts[i] <= start and end <= plan.rows.starts[i] + plan.rows.core


def test_blending_ramps_sum_to_one_in_the_overlap():
    plan = plan_tiles(600, 600, 256, 32, 8)
    first, second = plan.rows.window(0), plan.rows.window(1)
    ramp = plan.rows.ramp
    # tiles 0 and 1 overlap by exactly one ramp: falling and rising weights sum to 1 pixel by pixel
    assert plan.rows.starts[1] == plan.rows.core - ramp
    np.testing.assert_allclose(first[-ramp:] + second[:ramp], 1.0, atol=1e-6)
    assert np.all(np.diff(second[:ramp]) > 0) and second[0] > 0
    assert first[0] == 1.0  # no ramp at the image border


def test_reflect_pad_larger_than_image():
    image = np.arange(12, dtype=float).reshape(3, 4)
    padded = reflect_pad(image, ((10, 10), (10, 10)))
    assert padded.shape == (23, 24)
    np.testing.assert_array_equal(padded[10:13, 10:14], image)
