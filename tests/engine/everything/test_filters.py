"""Stability, boxes, NMS and cleaning of candidate masks, on hand-made arrays."""

import numpy as np
import pytest
import torch

from napari_sam.engine.everything.filters import (
    box_iou,
    clean_mask,
    mask_boxes,
    nms,
    stability_scores,
    touches_edges,
)


def test_stability_is_iou_of_the_two_thresholded_masks():
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, :2, :2] = 5.0  # above +1: 4 pixels
    logits[0, 2, :] = 0.5  # between -1 and +1: 4 more pixels above -1
    assert stability_scores(logits, 1.0)[0].item() == pytest.approx(4 / 8)
    assert stability_scores(torch.full((1, 2, 2), -9.0), 1.0)[0].item() == 1.0  # empty: stable


def test_mask_boxes_are_exclusive_and_empty_masks_get_zeros():
    masks = torch.zeros((2, 5, 6), dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert mask_boxes(masks).tolist() == [[1, 2, 3, 5], [0, 0, 0, 0]]


def test_box_iou_and_greedy_nms():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]])
    assert box_iou(boxes)[0, 1] == pytest.approx(0.9)
    # The second box duplicates the first but scores lower; the third is apart.
    assert nms(boxes, np.array([0.9, 0.8, 0.5]), 0.7).tolist() == [0, 2]
    assert nms(boxes, np.array([0.7, 0.8, 0.5]), 0.7).tolist() == [1, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.5]), 0.95).tolist() == [0, 1, 2]


def test_touches_only_the_chosen_edges():
    boxes = np.array([[0, 3, 4, 6], [2, 2, 4, 4], [5, 5, 10, 10]])
    assert touches_edges(boxes, (10, 10), (True, False, False, False)).tolist() == [
        True,
        False,
        False,
    ]
    assert touches_edges(boxes, (10, 10), (False, False, True, True)).tolist() == [
        False,
        False,
        True,
    ]


def test_clean_mask_fills_small_holes_and_drops_small_islands_only():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True  # 100 pixels
    mask[5, 5] = False  # a 1-pixel hole
    mask[15:17, 15:17] = True  # a 4-pixel island
    mask[2:12, 11] = False  # a notch open to the outside is not a hole
    cleaned = clean_mask(mask, min_region_area=10)
    assert cleaned[5, 5] and not cleaned[15:17, 15:17].any()
    assert not cleaned[2:12, 11].any()
    assert np.array_equal(clean_mask(mask, 0), mask)
