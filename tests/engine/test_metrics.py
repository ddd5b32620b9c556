"""Instance matching and AP, against hand-counted cases and the reference generator's AP."""

import numpy as np
import pytest

from napari_sam.engine.metrics import (
    average_precision,
    average_precisions,
    instance_overlap,
    mask_iou,
)
from napari_sam.errors import InvalidInputError


def test_mask_iou_counts_pixels():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_ap_counts_tp_fp_fn():
    truth = np.zeros((10, 10), int)
    truth[0:4, 0:4] = 1  # found exactly
    truth[6:10, 6:10] = 2  # missed
    predicted = np.zeros((10, 10), int)
    predicted[0:4, 0:4] = 7
    predicted[0:2, 6:8] = 3  # false positive
    # TP 1, FP 1, FN 1
    assert average_precision(predicted, truth) == pytest.approx(1 / 3)


def test_ap_threshold_decides_a_half_overlap():
    truth = np.zeros((4, 8), int)
    truth[:, :4] = 1
    predicted = np.zeros((4, 8), int)
    predicted[:, 1:5] = 1  # IoU 12 / 20 = 0.6
    assert instance_overlap(predicted, truth).iou[0, 0] == pytest.approx(0.6)
    assert average_precisions(predicted, truth, (0.5, 0.75)) == {0.5: 1.0, 0.75: 0.0}


def test_matching_is_one_to_one_in_3d():
    truth = np.zeros((2, 4, 4), int)
    truth[:, :, :2] = 1
    truth[:, :, 2:] = 2
    predicted = np.ones((2, 4, 4), int)  # one object over both: IoU 0.5 with each
    overlap = instance_overlap(predicted, truth)
    assert len(overlap.matches(0.5)) == 1
    assert average_precision(predicted, truth) == pytest.approx(1 / 2)


def test_reference_generator_ap_matches_its_readme(reference_dir):
    amg = np.load(reference_dir / "dsb2018_vit_t_amg.npz")
    labels = np.load(reference_dir / "dsb2018_vit_t.npz")["labels"]
    ap = average_precisions(amg["labels"], labels, (0.5, 0.75))
    assert ap[0.5] == pytest.approx(0.613, abs=5e-4)
    assert ap[0.75] == pytest.approx(0.381, abs=5e-4)


def test_bad_inputs_are_explained():
    with pytest.raises(InvalidInputError, match="same shape"):
        instance_overlap(np.zeros((2, 2), int), np.zeros((3, 3), int))
    with pytest.raises(InvalidInputError, match="same shape"):
        mask_iou(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(InvalidInputError, match="IoU threshold"):
        average_precision(np.zeros((2, 2), int), np.zeros((2, 2), int), threshold=0.0)
