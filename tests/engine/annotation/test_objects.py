import numpy as np
import pytest

from napari_sam.engine.annotation.objects import group_prompts, mask_to_logits, plan_commit
from napari_sam.errors import InvalidInputError

POINTS = np.array([(10, 10), (12, 14), (50, 50), (80, 20)])


def test_points_form_one_object_in_single_mode():
    objects = group_prompts(POINTS, [1, 0, 1, 1], None)
    assert len(objects) == 1
    assert objects[0].labels.tolist() == [1, 0, 1, 1] and objects[0].box is None


def test_each_positive_point_is_an_object_with_all_negatives():
    objects = group_prompts(POINTS, [1, 0, 1, 1], None, mode="per_point")
    assert [o.points[0].tolist() for o in objects] == [[10, 10], [50, 50], [80, 20]]
    assert all(o.labels.tolist() == [1, 0] and o.points[1].tolist() == [12, 14] for o in objects)


def test_points_inside_a_box_refine_it():
    objects = group_prompts(POINTS, [1, 0, 1, 1], [(0, 0, 20, 20), (40, 40, 60, 60)])
    assert len(objects) == 3
    assert objects[0].points.tolist() == [[10, 10], [12, 14]] and objects[0].labels.tolist() == [
        1,
        0,
    ]
    assert objects[1].points.tolist() == [[50, 50]]
    assert objects[2].points.tolist() == [[80, 20]] and objects[2].box is None


def test_negative_points_alone_describe_nothing():
    assert group_prompts(POINTS[:2], [0, 0], None) == []


def test_ambiguity_is_a_single_positive_point():
    assert group_prompts(POINTS[:1], None, None)[0].ambiguous
    assert not group_prompts(POINTS[:2], [1, 0], None)[0].ambiguous


def test_unknown_mode():
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        group_prompts(POINTS, None, None, mode="all")


def test_commit_never_overwrites_other_objects():
    labels = np.zeros((6, 6), int)
    labels[0:3, 0:3] = 7
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 1:5, 1:5] = True  # overlaps object 7 on 4 pixels
    masks[1, 4:6, 4:6] = True  # overlaps the first new object on 1 pixel
    plan = plan_commit(labels, masks, next_id=8)
    result = labels.copy()
    result[plan.rows, plan.cols] = plan.values
    assert plan.ids == (8, 9) and plan.blocked_pixels == 4
    assert (result[0:3, 0:3] == 7).all()
    assert np.count_nonzero(result == 8) == 16 - 4
    assert np.count_nonzero(result == 9) == 3
    overwrite = plan_commit(labels, masks, next_id=8, overwrite=True)
    assert overwrite.blocked_pixels == 0 and len(overwrite.rows) == 16 + 3


def test_commit_in_place_keeps_the_object_id():
    labels = np.zeros((4, 4), int)
    labels[0, 0] = 5
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True
    plan = plan_commit(labels, mask, next_id=6, ids=[5])
    assert plan.ids == (5,) and plan.blocked_pixels == 0 and set(plan.values) == {5}


def test_mask_to_logits_marks_the_object_region():
    mask = np.zeros((512, 512), bool)
    mask[100:200, 300:400] = True
    logits = mask_to_logits(mask, (1024, 1024), 1024)
    assert logits.shape == (256, 256)
    assert logits[60:90, 160:190].min() == pytest.approx(8.0)
    assert logits[:40, :40].max() == pytest.approx(-8.0)


def test_on_plane_rounds_leading_coordinates():
    from napari_sam.engine.annotation.objects import on_plane

    coords = np.array([(2.2, 10, 10), (1.6, 5, 5), (3.0, 1, 1)])
    assert on_plane(coords, (2,)).tolist() == [True, True, False]
    assert on_plane(coords[:, 1:], ()).tolist() == [True, True, True]


def test_boxes_on_plane_from_rectangles():
    from napari_sam.engine.annotation.objects import boxes_on_plane

    on = np.array([(4, 10, 20), (4, 10, 60), (4, 30, 60), (4, 30, 20)])
    off = on + [1, 0, 0]
    boxes = boxes_on_plane([on, off], (4,))
    assert boxes.tolist() == [[10, 20, 30, 60]]
    assert boxes_on_plane([], (4,)).shape == (0, 4)
