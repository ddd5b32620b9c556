import numpy as np
import pytest

from napari_sam.engine.prediction.preprocess import (
    Normalization,
    compute_normalization,
    resize_longest_side,
    resized_shape,
    select_channels,
)
from napari_sam.errors import InvalidInputError


def test_uint8_is_kept_as_it_is():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    norm = compute_normalization(image)
    assert norm == Normalization(0.0, 255.0)
    rgb = norm.apply(image)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], image)


def test_uint8_rgb_passes_through():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(compute_normalization(image).apply(image), image)


def test_uint16_maps_percentiles_to_0_and_255_with_rounding():
    image = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    norm = compute_normalization(image)
    # numpy's linear percentiles of 0..9999: 0.5% -> 49.995, 99.5% -> 9949.005
    assert norm.low == pytest.approx(49.995)
    assert norm.high == pytest.approx(9949.005)
    rgb = norm.apply(image)
    flat = rgb[..., 0].reshape(-1)
    assert flat[:50].max() == 0 and flat[9950:].min() == 255
    span = norm.high - norm.low
    for value in (100, 2500, 4999, 7777):
        expected = int(np.rint((value - norm.low) / span * 255))
        assert flat[value] == expected
    assert (flat[100], flat[4999], flat[7777]) == (1, 127, 199)  # 1.29, 127.49, 199.05


def test_scaling_rounds_to_nearest_and_clips():
    image = np.array([[0, 1, 2, 500], [998, 999, 1000, 1000]], dtype=np.uint16)
    norm = compute_normalization(image, percentiles=(0, 100))
    assert (norm.low, norm.high) == (0.0, 1000.0)
    # x * 255 / 1000: 0.255 -> 0, 0.51 -> 1 (rounded, not truncated), 127.5 -> 128
    np.testing.assert_array_equal(norm.apply(image)[..., 0], [[0, 0, 1, 128], [254, 255, 255, 255]])
    below_and_above = np.array([[0, 2000]], dtype=np.uint16)
    clipped = Normalization(10.0, 1000.0).apply(np.vstack([below_and_above] * 2))
    np.testing.assert_array_equal(clipped[0, :, 0], [0, 255])


def test_a_normalization_applies_unchanged_to_other_images():
    first = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    norm = compute_normalization(first)
    second = (first // 2).astype(np.uint16)  # other percentiles: 25.0 and 4974.5
    expected = np.rint(np.clip((second - norm.low) / (norm.high - norm.low), 0, 1) * 255)
    np.testing.assert_array_equal(norm.apply(second)[..., 1], expected.astype(np.uint8))
    assert not np.array_equal(norm.apply(second), compute_normalization(second).apply(second))


def test_hot_pixels_fall_back_to_min_and_max():
    image = np.zeros((100, 100), dtype=np.float32)
    image[0, :10] = 1.0  # 0.1% of the pixels: both percentiles are 0
    norm = compute_normalization(image)
    assert (norm.low, norm.high) == (0.0, 1.0)


def test_single_channel_last_axis_is_grey():
    image = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    with_axis = image[..., None]
    assert compute_normalization(with_axis) == compute_normalization(image)
    np.testing.assert_array_equal(
        compute_normalization(with_axis).apply(with_axis), compute_normalization(image).apply(image)
    )


def test_channel_choice_on_a_multichannel_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (20, 30, 5)).astype(np.uint16)
    norm = compute_normalization(image, channel=2)
    reference = compute_normalization(image[..., 2])
    assert (norm.low, norm.high, norm.channel) == (reference.low, reference.high, 2)
    np.testing.assert_array_equal(norm.apply(image), reference.apply(image[..., 2]))
    negative = compute_normalization(image, channel=-3)
    np.testing.assert_array_equal(negative.apply(image), norm.apply(image))


def test_channel_weights_mix_channels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (20, 30, 2)).astype(np.uint16)
    weights = (0.25, 0.75)
    mixed = select_channels(image, channel_weights=weights)
    np.testing.assert_allclose(mixed, 0.25 * image[..., 0] + 0.75 * image[..., 1])
    norm = compute_normalization(image, channel_weights=weights)
    low, high = np.percentile(mixed, [0.5, 99.5])
    assert (norm.low, norm.high) == pytest.approx((low, high))
    expected = np.rint(np.clip((mixed - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(norm.apply(image)[..., 0], expected)


@pytest.mark.parametrize(
    ("shape", "longest", "expected"),
    [
        ((300, 500), 1024, (614, 1024)),
        ((500, 300), 1024, (1024, 614)),
        ((1000, 37), 1024, (1024, 38)),
        ((2000, 1500), 1024, (1024, 768)),
        ((512, 512), 256, (256, 256)),
    ],
)
def test_resized_shape_scales_the_longest_side(shape, longest, expected):
    assert resized_shape(shape, longest) == expected
    rgb = np.zeros((*shape, 3), dtype=np.uint8)
    assert resize_longest_side(rgb, longest).shape == (*expected, 3)


def test_resize_keeps_orientation():
    rgb = np.zeros((100, 200, 3), dtype=np.uint8)
    rgb[:50, :100] = 255  # top-left quadrant
    resized = resize_longest_side(rgb, 400)
    assert resized.shape == (200, 400, 3)
    assert resized[:95, :195].min() == 255 and resized[105:].max() == 0
    assert resized[:, 205:].max() == 0


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10,), (2, 10, 10, 3)])
def test_wrong_number_of_dimensions(shape):
    with pytest.raises(InvalidInputError, match=r"Expected a 2D image .* got shape"):
        compute_normalization(np.ones(shape))


@pytest.mark.parametrize("shape", [(0, 10), (1, 100), (10, 0, 3)])
def test_empty_or_degenerate_image(shape):
    with pytest.raises(InvalidInputError, match="empty or degenerate"):
        compute_normalization(np.ones(shape))


def test_constant_image():
    with pytest.raises(InvalidInputError, match=r"constant \(every pixel is 7\)"):
        compute_normalization(np.full((10, 10), 7, dtype=np.uint16))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite_values(bad):
    image = np.ones((10, 10), dtype=np.float32)
    image[3, 4] = bad
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        compute_normalization(image)


def test_non_numeric_pixels():
    with pytest.raises(InvalidInputError, match="real-valued pixels"):
        compute_normalization(np.full((4, 4), "a"))


@pytest.mark.parametrize("channels", [2, 5])
def test_multichannel_without_a_channel_choice(channels):
    with pytest.raises(InvalidInputError, match=f"has {channels} channels .* channel=INDEX"):
        compute_normalization(np.ones((8, 8, channels)))


@pytest.mark.parametrize("channel", [5, -6])
def test_channel_index_out_of_range(channel):
    with pytest.raises(
        InvalidInputError, match=f"channel {channel} does not exist: the image has 5"
    ):
        compute_normalization(np.ones((8, 8, 5)), channel=channel)


def test_channel_weights_of_wrong_length():
    with pytest.raises(InvalidInputError, match="3 weights for 5 channels"):
        compute_normalization(np.ones((8, 8, 5)), channel_weights=(1, 1, 1))


@pytest.mark.parametrize("percentiles", [(50, 50), (-1, 99), (1, 101), (90, 10)])
def test_invalid_percentiles(percentiles):
    image = np.arange(100, dtype=np.uint16).reshape(10, 10)
    with pytest.raises(InvalidInputError, match="percentiles must satisfy"):
        compute_normalization(image, percentiles=percentiles)


@pytest.mark.parametrize("low, high", [(5.0, 5.0), (10.0, 1.0), (float("nan"), 1.0)])
def test_normalization_needs_low_below_high(low, high):
    with pytest.raises(InvalidInputError, match="finite low < high"):
        Normalization(low, high)


def test_complex_images_are_refused():
    with pytest.raises(InvalidInputError, match="real-valued"):
        compute_normalization(np.ones((8, 8), np.complex64))
