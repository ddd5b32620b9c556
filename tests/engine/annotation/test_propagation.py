"""Propagation logic on synthetic volumes with a stand-in decoder (no model).

The stand-in "decoder" answers each prompt with the connected blob of a known volume
under the prompt's box centre (or first point), so the stop rules, the sweeps, the
two-ended join and corrections can be checked exactly.
"""

import numpy as np
import pytest
from scipy import ndimage

from napari_sam.engine.annotation.projection import SlicePrompt, project
from napari_sam.engine.annotation.propagation import (
    Footprint,
    PropagationSettings,
    correct,
    propagate,
    stop_reason,
)
from napari_sam.errors import InvalidInputError, OperationCancelled

SHAPE = (40, 40)


def ball_volume(length: int, centre: tuple[int, int, int], radius: float) -> np.ndarray:
    z, r, c = np.mgrid[:length, : SHAPE[0], : SHAPE[1]]
    return (z - centre[0]) ** 2 + (r - centre[1]) ** 2 + (c - centre[2]) ** 2 <= radius**2


class BlobDecoder:
    """``decode(slice, prompts)``: the blob of ``volume[slice]`` under each prompt."""

    def __init__(self, volume: np.ndarray, grow_after: int | None = None) -> None:
        self.volume = volume
        self.grow_after = grow_after  # from this slice on, answer a blurred, larger blob
        self.calls: list[tuple[int, int]] = []  # (slice, prompts in the call)

    def __call__(self, index: int, prompts: list[SlicePrompt]):
        self.calls.append((index, len(prompts)))
        plane = self.volume[index]
        if self.grow_after is not None and index >= self.grow_after:
            plane = ndimage.binary_dilation(plane, iterations=3)
        blobs, _ = ndimage.label(plane)
        out = []
        for prompt in prompts:
            if prompt.box is not None:
                row = int((prompt.box[0] + prompt.box[2]) / 2)
                col = int((prompt.box[1] + prompt.box[3]) / 2)
            else:
                row, col = np.rint(prompt.points[0]).astype(int)
            mask = blobs == blobs[row, col] if blobs[row, col] else np.zeros(SHAPE, bool)
            out.append((mask, 0.9, np.zeros((256, 256), np.float32)))
        return out


def test_a_ball_is_followed_to_its_ends_and_no_further():
    volume = ball_volume(30, (15, 20, 20), 8)
    decoder = BlobDecoder(volume)
    settings = PropagationSettings(min_iou=0.0, min_area=1)  # the poles are one pixel
    (found,) = propagate(decoder, [{15: (volume[15], None)}], 30, settings)
    present = np.nonzero(volume.any(axis=(1, 2)))[0]
    assert found.extent == (present.min(), present.max())
    np.testing.assert_array_equal(found.volume(30, SHAPE), volume)
    assert found.ends == ("vanished", "vanished")


def test_growth_into_the_blur_stops_the_object():
    volume = ball_volume(30, (15, 20, 20), 8)
    decoder = BlobDecoder(volume, grow_after=19)
    settings = PropagationSettings(max_growth=1.3)
    (found,) = propagate(decoder, [{15: (volume[15], None)}], 30, settings)
    assert found.extent[1] == 18 and found.ends[1] == "grew"
    assert found.ends[0] == "vanished"


def test_objects_are_decoded_together_one_call_per_slice_and_direction():
    left, right = ball_volume(20, (8, 12, 12), 5), ball_volume(20, (10, 28, 28), 6)
    volume = left | right
    anchors = [{8: (left[8], None)}, {10: (right[10], None)}]
    decoder = BlobDecoder(volume)
    together = propagate(decoder, anchors, 20)
    upward = [i for i, _ in decoder.calls[: len(decoder.calls) // 2 + 1]]
    assert len(decoder.calls) <= 2 * len({i for i, _ in decoder.calls})
    assert max(count for _, count in decoder.calls) == 2
    assert upward == sorted(upward)  # one sweep: each slice once per direction
    for batched, anchor in zip(together, anchors):
        (single,) = propagate(BlobDecoder(volume), [anchor], 20)
        np.testing.assert_array_equal(batched.volume(20, SHAPE), single.volume(20, SHAPE))


def test_two_anchors_join_in_the_middle_and_only_vanishing_stops_between_them():
    volume = ball_volume(30, (15, 20, 20), 10)
    decoder = BlobDecoder(volume)
    # a strict rule that would stop at once outside the anchors
    settings = PropagationSettings(min_iou=0.99)
    (found,) = propagate(decoder, [{10: (volume[10], None), 20: (volume[20], None)}], 30, settings)
    assert found.anchors == (10, 20)
    assert all(index in found.slices for index in range(10, 21))
    assert {found.steps[i].source for i in range(11, 16)} == {10}
    assert {found.steps[i].source for i in range(16, 20)} == {20}
    assert found.ends == ("changed", "changed")


def test_a_correction_changes_only_the_slices_beyond_it():
    volume = ball_volume(30, (15, 20, 20), 8)
    (found,) = propagate(BlobDecoder(volume), [{15: (volume[15], None)}], 30)
    corrected_mask = volume[19] & (np.arange(40) < 22)[None, :]
    decoder = BlobDecoder(volume & (np.arange(40) < 22)[None, None, :])
    fixed = correct(decoder, found, 19, corrected_mask, None, 30)
    assert fixed.anchors == (15, 19)
    for index in range(found.extent[0], 19):
        np.testing.assert_array_equal(fixed.slices[index].crop, found.slices[index].crop)
    for index in range(19, fixed.extent[1] + 1):
        assert fixed.slices[index].area < found.slices[index].area
    assert all(index > 19 for index, _ in decoder.calls)


def test_limits_are_respected():
    volume = ball_volume(30, (15, 20, 20), 8)
    (found,) = propagate(BlobDecoder(volume), [{15: (volume[15], None)}], 30, limits=[(12, 17)])
    assert found.extent == (12, 17) and found.ends == ("limit", "limit")


def test_cancel_raises_and_progress_reaches_the_total():
    volume = ball_volume(30, (15, 20, 20), 8)
    with pytest.raises(OperationCancelled, match="cancelled"):
        propagate(BlobDecoder(volume), [{15: (volume[15], None)}], 30, should_stop=lambda: True)
    seen = []
    propagate(
        BlobDecoder(volume),
        [{15: (volume[15], None)}],
        30,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1][0] == seen[-1][1]


@pytest.mark.parametrize(
    ("anchors", "limits", "message"),
    [
        ([{}], None, "no anchor"),
        ([{3: (np.zeros(SHAPE, bool), None)}], None, "empty"),
        ([{3: (np.ones(SHAPE, bool), None)}], [(5, 9)], "outside its limits"),
        ([{3: (np.ones(SHAPE, bool), None)}], [(5, 40)], "limits"),
    ],
)
def test_bad_anchors_say_what_to_do(anchors, limits, message):
    with pytest.raises(InvalidInputError, match=message):
        propagate(BlobDecoder(np.zeros((30, *SHAPE), bool)), anchors, 30, limits=limits)


def test_settings_are_checked():
    with pytest.raises(InvalidInputError, match="projection"):
        PropagationSettings(projection="lasso")
    with pytest.raises(InvalidInputError, match="max_growth"):
        PropagationSettings(max_growth=0.5)
    with pytest.raises(InvalidInputError, match="min_iou"):
        PropagationSettings(min_iou=1.5)


def test_stop_reasons_in_order():
    rule = PropagationSettings(min_iou=0.5, min_score=0.7, max_growth=1.2, min_area=10)
    assert stop_reason(5, 0.9, 0.9, 100, rule) == "vanished"
    assert stop_reason(100, 0.4, 0.9, 100, rule) == "changed"
    assert stop_reason(100, 0.9, 0.6, 100, rule) == "unsure"
    assert stop_reason(130, 0.9, 0.9, 100, rule) == "grew"
    assert stop_reason(110, 0.9, 0.9, 100, rule) is None


def test_projections_carry_the_mask():
    mask = np.zeros(SHAPE, bool)
    mask[10:20, 5:25] = True
    logits = np.ones((256, 256), np.float32)
    box = project(mask, logits, "box", 0.1)
    np.testing.assert_allclose(box.box, [9, 3, 20, 26])
    assert box.logits is None and len(box.points) == 0
    both = project(mask, logits, "box_point_mask", 0.0)
    assert both.logits is logits and both.labels.tolist() == [1]
    assert mask[tuple(np.rint(both.points[0]).astype(int))]
    points = project(mask, None, "points", 0.05)
    assert points.box is None and points.labels.tolist() == [1, 0, 0, 0, 0]
    assert not mask[tuple(np.rint(points.points[1]).astype(int))]


def test_footprint_round_trip():
    mask = ball_volume(1, (0, 20, 20), 6)[0]
    footprint = Footprint.of(mask)
    assert footprint.area == mask.sum() and footprint.crop.shape == (13, 13)
    np.testing.assert_array_equal(footprint.paste(SHAPE), mask)
    assert Footprint.of(np.zeros(SHAPE, bool)).area == 0


def test_a_correction_on_the_anchor_propagates_again_both_ways():
    volume = ball_volume(30, (15, 20, 20), 8)
    (found,) = propagate(BlobDecoder(volume), [{15: (volume[15], None)}], 30)
    narrow = volume & (np.arange(40) < 22)[None, None, :]
    fixed = correct(BlobDecoder(narrow), found, 15, narrow[15], None, 30)
    assert fixed.anchors == (15,)
    assert fixed.extent == found.extent
    for index in range(fixed.extent[0], fixed.extent[1] + 1):
        np.testing.assert_array_equal(fixed.slices[index].paste(SHAPE), narrow[index])


def test_a_score_rule_of_zero_is_off():
    rule = PropagationSettings(min_score=0.0)
    assert stop_reason(100, 0.9, -0.2, 100, rule) is None
