"""Constant images are refused for every dtype and at every entry point.

uint8 images used to skip the check (their default mapping is 0 -> 0, 255 -> 255, with no
percentiles computed), so a constant uint8 image gave a whole-image mask. Here each dtype
meets each way in: ``compute_normalization``, ``Predictor.set_image`` (normalisation
computed inside), ``stack_normalization`` (batch and sessions) and the annotator's session.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.annotation.session import AnnotationSession
from napari_sam.engine.prediction.planes import plane_layout, stack_normalization
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import Normalization, compute_normalization
from napari_sam.errors import InvalidInputError

# (image, the value the message shows, extra arguments of the channel choice)
CONSTANT = {
    "uint8": (np.full((40, 50), 200, np.uint8), "200", {}),
    "uint8 zeros": (np.zeros((40, 50), np.uint8), "0", {}),
    "uint16": (np.full((40, 50), 7, np.uint16), "7", {}),
    "int16": (np.full((40, 50), -3, np.int16), "-3", {}),
    "float32": (np.full((40, 50), 0.25, np.float32), "0.25", {}),
    "float64": (np.full((40, 50), 1e-9), "1e-09", {}),
    "bool": (np.ones((40, 50), bool), "1", {}),
    "rgb uint8": (np.broadcast_to(np.uint8([10, 20, 30]), (40, 50, 3)), r"\(10, 20, 30\)", {}),
    "rgb float": (np.broadcast_to(np.float32([0, 1, 2]), (40, 50, 3)), r"\(0, 1, 2\)", {}),
    "one channel": (np.full((40, 50, 1), 9, np.uint16), "9", {}),
    "chosen channel": (
        np.dstack([np.random.default_rng(0).integers(0, 9, (40, 50)), np.full((40, 50), 5)]),
        "5",
        {"channel": 1},
    ),
    "mixed channels": (np.full((40, 50, 2), 4, np.uint16), "4", {"channel_weights": (0.5, 0.5)}),
}
IMAGE_MESSAGE = r"The image is constant \(every pixel is {}\): there is nothing to segment"


@pytest.mark.parametrize("case", CONSTANT)
def test_compute_normalization_refuses_a_constant_image(case):
    image, shown, choice = CONSTANT[case]
    with pytest.raises(InvalidInputError, match=IMAGE_MESSAGE.format(shown)):
        compute_normalization(image, **choice)


# set_image takes a channel choice only through a Normalization: the cases without one
@pytest.mark.parametrize("case", [case for case, (_, _, choice) in CONSTANT.items() if not choice])
def test_set_image_refuses_a_constant_image(case, tiny_model):
    image, shown, _ = CONSTANT[case]
    predictor = Predictor(tiny_model)
    with pytest.raises(InvalidInputError, match=IMAGE_MESSAGE.format(shown)):
        predictor.set_image(image)
    assert predictor.current_embedding is None


@pytest.mark.parametrize("case", CONSTANT)
def test_stack_normalization_refuses_a_constant_stack(case):
    image, shown, choice = CONSTANT[case]
    stack = np.stack([image] * 12)
    layout = plane_layout(stack.shape, channel_axis=image.ndim == 3)
    with pytest.raises(
        InvalidInputError,
        match=rf"Every plane of the data \(shape \(12, 40, 50.*\) is constant \(every pixel is "
        rf"{shown}\): there is nothing to segment\. Check that the right file",
    ):
        stack_normalization(stack, layout, **choice)


@pytest.mark.parametrize("case", ["uint8", "float32", "rgb uint8"])
def test_the_annotators_session_refuses_a_constant_stack(case, tiny_model):
    image, shown, _ = CONSTANT[case]
    stack = np.stack([image] * 3)
    every = rf"Every plane of the data .* is constant \(every pixel is {shown}\)"
    with pytest.raises(InvalidInputError, match=every):
        AnnotationSession(tiny_model, stack, channel_axis=image.ndim == 3)
    with pytest.raises(
        InvalidInputError, match=rf"The image \(shape .*\) is constant \(every pixel is {shown}\)"
    ):
        AnnotationSession(tiny_model, image, channel_axis=image.ndim == 3)


def test_a_given_normalization_lets_a_constant_tile_through(tiny_model):
    # A blank tile or slice of varied data is normal: the check is on the data a mapping
    # is computed from, not on each window encoded with it.
    embedding = Predictor(tiny_model).encode(np.zeros((40, 50), np.uint8), Normalization(0, 255))
    assert np.isfinite(embedding.features.numpy()).all()


@pytest.mark.parametrize(
    "image",
    [
        np.pad(np.zeros((39, 50), np.uint8), ((0, 1), (0, 0)), constant_values=1),  # last row
        np.pad(np.ones((40, 49), bool), ((0, 0), (0, 1))),  # last column
        np.dstack([np.zeros((40, 50), np.uint8)] * 2 + [np.eye(40, 50, dtype=np.uint8)]),
    ],
    ids=["uint8 one row differs", "bool one column differs", "rgb one channel varies"],
)
def test_one_varying_pixel_row_or_channel_is_enough(image):
    normalization = compute_normalization(image)
    if image.dtype == np.uint8:
        assert normalization == Normalization(0.0, 255.0)  # uint8 kept as it is
    else:
        assert (normalization.low, normalization.high) == (0.0, 1.0)


def test_a_stack_whose_sampled_planes_are_blank_reads_on_until_one_differs():
    stack = np.zeros((20, 32, 32), np.uint16)
    stack[1, 8:24, 8:24] = np.arange(256, dtype=np.uint16).reshape(16, 16) + 100
    reads = []

    class Counting:
        shape, dtype = stack.shape, stack.dtype

        def __getitem__(self, key):
            reads.append(key)
            return stack[key]

    normalization = stack_normalization(Counting(), plane_layout(stack.shape), planes=8)
    # planes 0, 3, 5, 8, 11, 14, 16, 19 are sampled and blank; plane 1 is read next
    assert reads == [(0,), (3,), (5,), (8,), (11,), (14,), (16,), (19,), (1,)]
    low, high = np.percentile(np.concatenate(stack[[0, 3, 5, 8, 11, 14, 16, 19, 1]]), [0.5, 99.5])
    assert (normalization.low, normalization.high) == (low, high) and 300 < high < 356
