import numpy as np
import pytest
import torch

from napari_sam.errors import InvalidInputError
from napari_sam.training.prompting import error_points, first_prompts, iteration_plan


def test_error_points_fall_only_in_error_regions_with_the_right_label():
    rng = np.random.default_rng(0)
    truth = torch.zeros(6, 256, 256, dtype=torch.bool)
    truth[:, 50:120, 50:120] = True
    predicted = truth.clone()
    predicted[:, 50:80, 50:120] = False  # missed band: positive clicks expected
    predicted[:, 150:170, 150:170] = True  # false positive square: negative clicks expected
    predicted[5] = truth[5]  # object 5 is perfect: a placeholder
    valid = torch.ones(256, 256, dtype=torch.bool)
    for _ in range(30):
        points, labels = error_points(predicted, truth, valid, rng)
        for b in range(5):
            row, col = int(points[b, 1]) // 4, int(points[b, 0]) // 4
            assert predicted[b, row, col] != truth[b, row, col]
            assert labels[b].item() == int(truth[b, row, col])
        assert labels[5].item() == -1
    assert set(labels[:5].tolist()) <= {0, 1}


def test_error_points_skip_the_padding():
    rng = np.random.default_rng(1)
    truth = torch.zeros(1, 256, 256, dtype=torch.bool)
    predicted = torch.ones(1, 256, 256, dtype=torch.bool)  # everything is wrong
    valid = torch.zeros(256, 256, dtype=torch.bool)
    valid[:100, :64] = True
    for _ in range(50):
        points, labels = error_points(predicted, truth, valid, rng)
        assert points[0, 1] < 400 and points[0, 0] < 256 and labels[0] == 0


def test_iteration_plan_has_the_papers_shape():
    plan = iteration_plan(11, 2, np.random.default_rng(0))
    assert len(plan) == 10 and plan.count(False) == 2 and plan[-1] is False
    assert iteration_plan(1, 0, np.random.default_rng(0)) == []
    with pytest.raises(InvalidInputError, match="quiet iterations"):
        iteration_plan(3, 3, np.random.default_rng(0))


def test_first_points_lie_on_the_object_and_box_noise_is_bounded():
    rng = np.random.default_rng(2)
    targets = torch.zeros(4, 1, 256, 256)
    targets[:, :, 10:20, 30:60] = 1
    boxes = torch.tensor([[120.0, 40.0, 240.0, 80.0]] * 4)
    state = first_prompts(targets, boxes, use_box=False, rng=rng)
    cells = (state.points[:, 0].flip(-1) // 4).long()
    assert targets[torch.arange(4), 0, cells[:, 0], cells[:, 1]].all()
    assert state.single_point and state.labels.tolist() == [[1]] * 4
    big = torch.tensor([[0.0, 0.0, 1000.0, 1000.0]] * 200)
    noisy = first_prompts(
        torch.zeros(200, 1, 256, 256), big, True, rng, input_size=(1024, 1024)
    ).boxes
    shift = (noisy - big).abs()
    assert shift.max() <= 20.0 + 1e-4 and shift.mean() > 5.0  # 10% of 1000 px, clipped at 20
