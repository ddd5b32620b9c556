import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import compute_normalization
from napari_sam.engine.prediction.upsampling import LogitUpsampler
from napari_sam.errors import CacheMismatchError, InvalidInputError
from tiny_sam import random_model

BOXES = np.array([(20, 30, 120, 200), (150, 10, 290, 90), (5, 300, 80, 495)])
POINTS = np.array([(40, 60), (200, 50), (60, 450)])


def _assert_same_prediction(predictor, batched, single):
    """Masks equal except where a logit is within float rounding of the threshold.

    Batched and single decoder calls use different matrix-product shapes, so logits
    differ by ~1e-7 and a pixel whose logit is ~1e-9 may flip; the tiny random model's
    logits are small, so such pixels exist. Logits and scores must agree closely.
    """
    np.testing.assert_allclose(batched.logits, single.logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched.scores, single.scores, atol=1e-5, rtol=0)
    embedding = predictor.embedding
    upsample = LogitUpsampler(embedding.original_size, embedding.input_size, 1024)
    full = upsample(torch.from_numpy(np.ascontiguousarray(single.logits))).numpy()
    clear = np.abs(full) > 1e-5
    assert clear.mean() > 0.999
    np.testing.assert_array_equal(batched.masks[clear], single.masks[clear])
    assert 0.01 < single.masks.mean() < 0.99  # non-trivial masks: the check has teeth


def _prompt_encoder_inputs(predictor, **prompts):
    """Run ``predict`` and capture what reaches SAM's prompt encoder."""
    seen = []
    hook = predictor.model.module.prompt_encoder.register_forward_pre_hook(
        lambda module, args: seen.append(args)
    )
    try:
        predictor.predict(**prompts)
    finally:
        hook.remove()
    return seen[0]


def test_embedding_records_geometry_and_model(predictor_300x500, tiny_model):
    embedding = predictor_300x500.embedding
    assert embedding.features.shape == (1, 256, 64, 64)
    assert embedding.original_size == (300, 500)
    assert embedding.input_size == (614, 1024)
    assert embedding.model_id == tiny_model.model_id == "random-seed0"
    assert embedding.normalization.high > embedding.normalization.low > 0


def test_point_reaches_the_encoder_as_x_y_of_the_resized_image(predictor_300x500):
    (coords, labels), box, mask = _prompt_encoder_inputs(predictor_300x500, points=[(100, 200)])
    # (row, col) = (100, 200) -> x = 200 * 1024/500 = 409.6, y = 100 * 614/300 = 204.67
    torch.testing.assert_close(coords, torch.tensor([[[409.6, 100 * 614 / 300]]]))
    torch.testing.assert_close(labels, torch.tensor([[1]]))
    assert box is None and mask is None


def test_point_on_a_tall_image_reaches_the_encoder_as_x_y(tiny_model, make_image):
    predictor = Predictor(tiny_model)
    predictor.set_image(make_image((500, 300), seed=2))
    assert predictor.embedding.input_size == (1024, 614)
    (coords, _), _, _ = _prompt_encoder_inputs(predictor, points=[(100, 200)])
    torch.testing.assert_close(coords, torch.tensor([[[200 * 614 / 300, 100 * 1024 / 500]]]))
    prediction = predictor.predict(points=[(450, 20)])  # near the bottom-left
    assert prediction.masks.shape == (3, 500, 300)


def test_box_reaches_the_encoder_as_x0_y0_x1_y1(predictor_300x500):
    _, box, _ = _prompt_encoder_inputs(predictor_300x500, box=(30, 50, 150, 400))
    s_row, s_col = 614 / 300, 1024 / 500
    expected = torch.tensor([[50 * s_col, 30 * s_row, 400 * s_col, 150 * s_row]])
    torch.testing.assert_close(box, expected)


def test_masks_are_the_upsampled_logits_in_row_col_order(predictor_300x500):
    prediction = predictor_300x500.predict(points=[(250, 40)])
    assert prediction.masks.shape == (3, 300, 500) and prediction.masks.dtype == bool
    assert prediction.scores.shape == (3,) and prediction.scores.dtype == np.float32
    assert prediction.logits.shape == (3, 256, 256) and prediction.logits.dtype == np.float32
    # Meta's postprocessing: to 1024x1024, crop to the resized 614x1024, to 300x500
    logits = torch.from_numpy(prediction.logits)[:, None].double()
    frame = F.interpolate(logits, (1024, 1024), mode="bilinear", align_corners=False)
    full = F.interpolate(frame[..., :614, :1024], (300, 500), mode="bilinear", align_corners=False)
    reference = full[:, 0].numpy()
    clear = np.abs(reference) > 1e-5  # pixels not within rounding of the threshold
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(prediction.masks[clear], (reference > 0)[clear])
    assert 0.05 < prediction.masks.mean() < 0.95  # a non-trivial mask: the check has teeth


def test_multimask_defaults(predictor_300x500):
    predict = predictor_300x500.predict
    assert len(predict(points=[(10, 10)]).scores) == 3
    assert len(predict(points=[(10, 10)], multimask=False).scores) == 1
    assert len(predict(points=[(10, 10), (20, 20)]).scores) == 1
    assert len(predict(box=BOXES[0]).scores) == 1
    assert len(predict(box=BOXES[0], multimask=True).scores) == 3


def test_best_is_the_highest_score(predictor_300x500):
    prediction = predictor_300x500.predict(points=[(100, 100)])
    assert prediction.best == int(np.argmax(prediction.scores))
    np.testing.assert_array_equal(prediction.best_mask, prediction.masks[prediction.best])


def test_mask_input_refines_a_previous_prediction(predictor_300x500):
    first = predictor_300x500.predict(points=[(100, 100)])
    refined = predictor_300x500.predict(
        points=[(100, 100), (120, 300)], point_labels=[1, 0], mask_input=first.logits[first.best]
    )
    assert refined.masks.shape == (1, 300, 500)
    without = predictor_300x500.predict(points=[(100, 100), (120, 300)], point_labels=[1, 0])
    assert not np.allclose(refined.logits, without.logits, atol=1e-3)  # the mask is used


def test_batch_of_boxes_equals_single_calls(predictor_300x500):
    batch = predictor_300x500.predict_batch(boxes=BOXES)
    assert batch.masks.shape == (3, 1, 300, 500) and len(batch) == 3
    for i, box in enumerate(BOXES):
        _assert_same_prediction(predictor_300x500, batch[i], predictor_300x500.predict(box=box))


def test_batch_of_points_equals_single_calls(predictor_300x500):
    batch = predictor_300x500.predict_batch(points=POINTS, multimask=True)
    assert batch.masks.shape == (3, 3, 300, 500)
    for i, point in enumerate(POINTS):
        single = predictor_300x500.predict(points=[point])
        _assert_same_prediction(predictor_300x500, batch[i], single)


def test_batch_of_point_sets_with_labels_equals_single_calls(predictor_300x500):
    points = np.stack([POINTS[:2], POINTS[1:]])  # (2 objects, 2 points, 2)
    labels = np.array([[1, 0], [1, 1]])
    batch = predictor_300x500.predict_batch(points=points, point_labels=labels)
    for i in range(2):
        single = predictor_300x500.predict(points=points[i], point_labels=labels[i])
        _assert_same_prediction(predictor_300x500, batch[i], single)


def test_batch_size_does_not_change_results(predictor_300x500):
    whole = predictor_300x500.predict_batch(boxes=BOXES, batch_size=16)
    for size in (1, 2):
        chunked = predictor_300x500.predict_batch(boxes=BOXES, batch_size=size)
        assert chunked.masks.shape == whole.masks.shape == (3, 1, 300, 500)
        for i in range(3):
            _assert_same_prediction(predictor_300x500, chunked[i], whole[i])


def test_same_seed_gives_identical_embeddings_and_masks(
    tiny_model, tiny_architecture, image_300x500
):
    other = random_model(tiny_architecture, seed=0)
    for name, value in tiny_model.module.state_dict().items():
        assert torch.equal(value, other.module.state_dict()[name]), name
    first, second = Predictor(tiny_model), Predictor(other)
    a, b = first.set_image(image_300x500), second.set_image(image_300x500)
    assert torch.equal(a.features, b.features)
    np.testing.assert_array_equal(
        first.predict(points=[(120, 240)]).masks, second.predict(points=[(120, 240)]).masks
    )


def test_another_seed_gives_other_weights(tiny_model, tiny_architecture):
    other = random_model(tiny_architecture, seed=1)
    weight = "mask_decoder.iou_token.weight"
    assert not torch.equal(
        tiny_model.module.state_dict()[weight], other.module.state_dict()[weight]
    )
    assert other.model_id == "random-seed1"


def test_set_image_twice_gives_identical_features(tiny_model, image_300x500):
    predictor = Predictor(tiny_model)
    first = predictor.set_image(image_300x500)
    second = predictor.set_image(image_300x500)
    assert torch.equal(first.features, second.features)


def test_set_embedding_switches_images(tiny_model, make_image, predictor_300x500):
    predictor = Predictor(tiny_model)
    predictor.set_image(make_image((64, 80), seed=3))
    assert predictor.predict(points=[(5, 5)]).masks.shape == (3, 64, 80)
    predictor.set_embedding(predictor_300x500.embedding)
    switched = predictor.predict(points=[(100, 200)])
    np.testing.assert_array_equal(
        switched.masks, predictor_300x500.predict(points=[(100, 200)]).masks
    )


def test_multichannel_image_with_a_channel_choice(tiny_model, image_300x500):
    stack = np.stack([image_300x500 // 3, image_300x500, image_300x500 // 2], axis=-1)
    stack = np.concatenate([stack, stack[..., :2]], axis=-1)  # 5 channels
    predictor = Predictor(tiny_model)
    norm = compute_normalization(stack, channel=1)
    embedding = predictor.set_image(stack, normalization=norm)
    assert embedding.normalization is norm
    grey = Predictor(tiny_model).set_image(image_300x500)
    assert torch.equal(embedding.features, grey.features)


# --- errors -------------------------------------------------------------------------


def test_predict_before_set_image(tiny_model):
    with pytest.raises(InvalidInputError, match=r"No image is set: call set_image"):
        Predictor(tiny_model).predict(points=[(1, 1)])


def test_embedding_from_another_model(tiny_architecture, predictor_300x500):
    other = Predictor(random_model(tiny_architecture, seed=1, name="other"))
    with pytest.raises(
        CacheMismatchError, match="computed by random-seed0, but the predictor holds other-seed1"
    ):
        other.set_embedding(predictor_300x500.embedding)


def test_no_prompt(predictor_300x500):
    with pytest.raises(InvalidInputError, match="Give at least one prompt"):
        predictor_300x500.predict()


def test_no_prompt_in_a_batch(predictor_300x500):
    with pytest.raises(InvalidInputError, match="Give at least one prompt"):
        predictor_300x500.predict_batch()


def test_batch_prompts_of_different_counts(predictor_300x500):
    with pytest.raises(
        InvalidInputError, match=r"different numbers of objects: \{.points.: 3, .boxes.: 2\}"
    ):
        predictor_300x500.predict_batch(points=POINTS, boxes=BOXES[:2])


def test_point_outside_the_image(predictor_300x500):
    with pytest.raises(
        InvalidInputError,
        match=r"\(row, col\) = \[350.0, 20.0\] lies outside the image of shape \(300, 500\)",
    ):
        predictor_300x500.predict(points=[(350, 20)])


def test_box_with_inverted_corners(predictor_300x500):
    with pytest.raises(InvalidInputError, match="inverted corners"):
        predictor_300x500.predict(box=(120, 200, 20, 30))


@pytest.mark.parametrize("labels", [[1, 1, 1], [1, 3]])
def test_point_labels_of_wrong_length_or_values(predictor_300x500, labels):
    with pytest.raises(InvalidInputError, match="point_labels must be 2 values"):
        predictor_300x500.predict(points=[(10, 10), (20, 20)], point_labels=labels)


def test_mask_input_of_wrong_shape(predictor_300x500):
    with pytest.raises(InvalidInputError, match=r"mask_input must be \(256, 256\)"):
        predictor_300x500.predict(points=[(10, 10)], mask_input=np.zeros((300, 500)))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.ones(100), "Expected a 2D image"),
        (np.ones((3, 40, 40, 3)), "Expected a 2D image"),
        (np.ones((0, 40)), "empty or degenerate"),
        (np.full((40, 40), 9.0), "constant"),
        (np.where(np.eye(40) > 0, np.nan, 1.0), "NaN or infinite"),
        (np.ones((40, 40, 2)), "has 2 channels"),
        (np.arange(40 * 40 * 5).reshape(40, 40, 5), "has 5 channels"),
    ],
)
def test_unusable_images(tiny_model, image, message):
    with pytest.raises(InvalidInputError, match=message):
        Predictor(tiny_model).set_image(image)


@pytest.mark.parametrize(
    "prompts, message",
    [
        (dict(boxes=[1, 2, 3]), "shape \\(B, 4\\)"),
        (dict(points=[(1, 1), (2, 2), (3, 3)], point_labels=[1, 1]), "one label per point"),
        (dict(points=np.zeros((2, 2, 3))), "shape \\(B, K, 2\\)"),
        (dict(boxes=BOXES, batch_size=0), "batch_size must be at least 1"),
        (dict(boxes=BOXES, points=POINTS[:2]), "different numbers of objects"),
        (dict(mask_input=np.zeros((256, 256))), "shape \\(B, 256, 256\\)"),
    ],
)
def test_predict_batch_rejects_malformed_prompts(predictor_300x500, prompts, message):
    with pytest.raises(InvalidInputError, match=message):
        predictor_300x500.predict_batch(**prompts)


@pytest.mark.parametrize("multimask, n", [(False, 1), (True, 3)])
def test_predict_batch_of_no_objects_is_empty(predictor_300x500, multimask, n):
    result = predictor_300x500.predict_batch(boxes=np.zeros((0, 4)), multimask=multimask)
    assert len(result) == 0
    assert result.masks.shape == (0, n, 300, 500)
    assert result.logits.shape == (0, n, 256, 256)


def test_thin_strip_image_is_encoded(tiny_model):
    predictor = Predictor(tiny_model)
    embedding = predictor.set_image(np.random.default_rng(0).random((2, 5000)))
    assert embedding.input_size == (1, 1024)
    assert predictor.predict(points=[(1, 2500)]).masks.shape == (3, 2, 5000)
