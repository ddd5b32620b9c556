import numpy as np
import pytest

from napari_sam.engine.prediction.prompts import (
    check_box,
    check_mask_input,
    check_points,
    to_encoder_xy,
)
from napari_sam.errors import InvalidInputError

SHAPE = (300, 500)


@pytest.mark.parametrize(
    ("original", "resized", "expected_xy"),
    [
        # (row, col) = (100, 200): x = col * cols'/cols, y = row * rows'/rows
        ((300, 500), (614, 1024), (200 * 1024 / 500, 100 * 614 / 300)),  # (409.6, 204.67)
        ((500, 300), (1024, 614), (200 * 614 / 300, 100 * 1024 / 500)),  # (409.33, 204.8)
    ],
)
def test_to_encoder_xy_swaps_and_scales(original, resized, expected_xy):
    xy = to_encoder_xy(np.array([[100.0, 200.0]]), original, resized)
    np.testing.assert_allclose(xy, [expected_xy], rtol=1e-12)


def test_to_encoder_xy_keeps_leading_axes():
    corners = np.array([[[0.0, 0.0], [299.0, 499.0]], [[10.0, 20.0], [30.0, 40.0]]])
    xy = to_encoder_xy(corners, (300, 500), (614, 1024))
    assert xy.shape == (2, 2, 2)
    np.testing.assert_allclose(xy[0, 1], [499 * 2.048, 299 * 614 / 300])
    np.testing.assert_allclose(xy[1, 0], [20 * 2.048, 10 * 614 / 300])


def test_check_points_defaults_and_single_point():
    coords, labels = check_points((299, 499), None, SHAPE)  # the last pixel is inside
    np.testing.assert_array_equal(coords, [[299.0, 499.0]])
    assert coords.dtype == np.float64
    np.testing.assert_array_equal(labels, [1])
    coords, labels = check_points([[1, 2], [3, 4]], [True, False], SHAPE)
    assert coords.shape == (2, 2)
    np.testing.assert_array_equal(labels, [1, 0])
    assert labels.dtype == np.int64
    assert check_points(None, None, SHAPE) is None


def test_check_box_returns_float_corners():
    corners = check_box([[10, 20], [30, 40]], SHAPE)
    np.testing.assert_array_equal(corners, [10.0, 20.0, 30.0, 40.0])
    np.testing.assert_array_equal(check_box((5, 5, 5, 5), SHAPE), [5, 5, 5, 5])  # one pixel
    assert check_box(None, SHAPE) is None


def test_check_mask_input_accepts_256_square_with_or_without_leading_axis():
    logits = np.arange(256 * 256, dtype=np.float64).reshape(1, 256, 256)
    out = check_mask_input(logits)
    assert out.shape == (256, 256) and out.dtype == np.float32
    assert check_mask_input(None) is None


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("point", [(300, 10), (10, 500), (-0.5, 10), (10, -1)])
def test_point_outside_the_image(point):
    with pytest.raises(InvalidInputError, match=r"point \(row, col\) = .* lies outside the image"):
        check_points([point], None, SHAPE)


def test_point_outside_is_reported_in_row_col_order():
    with pytest.raises(InvalidInputError, match=r"\[10.0, 600.0\] lies outside .* cols 0\.\.499"):
        check_points([(10, 600)], None, SHAPE)


def test_point_with_nan():
    with pytest.raises(InvalidInputError, match="NaN or infinite coordinate"):
        check_points([(np.nan, 3)], None, SHAPE)


@pytest.mark.parametrize("points", [np.zeros((0, 2)), np.zeros((2, 3)), np.zeros((2, 2, 2)), [1]])
def test_points_of_wrong_shape(points):
    with pytest.raises(InvalidInputError, match=r"points must have shape \(K, 2\)"):
        check_points(points, None, SHAPE)


@pytest.mark.parametrize("labels", [[1], [1, 1, 1], [1, 2], [-1, 1]])
def test_point_labels_of_wrong_length_or_values(labels):
    with pytest.raises(InvalidInputError, match=r"point_labels must be 2 values of 1 .* or 0"):
        check_points([(1, 1), (2, 2)], labels, SHAPE)


def test_point_labels_without_points():
    with pytest.raises(InvalidInputError, match="point_labels were given without points"):
        check_points(None, [1], SHAPE)


@pytest.mark.parametrize("box", [(50, 10, 40, 20), (10, 50, 20, 40)])
def test_box_with_inverted_corners(box):
    with pytest.raises(InvalidInputError, match="inverted corners"):
        check_box(box, SHAPE)


def test_box_of_wrong_size():
    with pytest.raises(InvalidInputError, match=r"A box is 4 numbers .* got shape \(3,\)"):
        check_box((1, 2, 3), SHAPE)


def test_box_outside_the_image():
    with pytest.raises(InvalidInputError, match=r"box corner \(row, col\) = \[300.0, 40.0\]"):
        check_box((10, 20, 300, 40), SHAPE)


@pytest.mark.parametrize("shape", [(64, 64), (2, 256, 256), (256, 255), (256 * 256,)])
def test_mask_input_of_wrong_shape(shape):
    with pytest.raises(InvalidInputError, match=r"mask_input must be \(256, 256\) .* got shape"):
        check_mask_input(np.zeros(shape))
