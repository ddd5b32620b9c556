import json

import numpy as np
import pytest
import torch

from napari_sam.engine.everything.filters import stability_scores
from napari_sam.engine.model.weights import read_state_dict
from napari_sam.training.calibration import (
    IOU_THRESHOLD,
    MAX_IOU_SHIFT,
    apply_iou_shift,
    apply_logit_scale,
    click_predictions,
    fit_iou_shift,
    fit_logit_scale,
    passing_share,
    stability_each,
)
from napari_sam.training.config import PromptSettings, TrainingConfig
from napari_sam.training.embeddings import EmbeddingStore
from napari_sam.training.loop import train
from napari_sam.training.network import inference_model


def disc_logits(steepness: float, radii=(20, 30, 45, 60)) -> torch.Tensor:
    """(n, 256, 256) logits falling linearly across the rim of a disc, ``steepness`` per pixel."""
    rows, cols = np.mgrid[:256, :256]
    distance = np.hypot(rows - 128, cols - 128)
    return torch.tensor(np.stack([steepness * (r - distance) for r in radii]), dtype=torch.float32)


def test_stability_each_matches_the_segment_everything_filter():
    logits = disc_logits(0.7)
    assert torch.allclose(stability_each(logits), stability_scores(logits, 1.0))
    assert torch.allclose(stability_each(logits, 2.0), stability_scores(2.0 * logits, 1.0))


def test_the_fitted_scale_restores_the_base_stability():
    base = stability_each(disc_logits(1.0))
    flat = disc_logits(0.4)  # 2.5x flatter, same masks
    scale = fit_logit_scale(flat, base)
    assert scale == pytest.approx(2.5, rel=0.05)
    assert torch.allclose(stability_each(flat, scale), base, atol=0.01)


def test_prompts_whose_masks_changed_do_not_move_the_median():
    base = stability_each(disc_logits(1.0, radii=(20, 30, 45, 60, 25, 35, 50)))
    flat = disc_logits(0.5, radii=(20, 30, 45, 60, 25, 35, 50))
    flat[-2:] = -5.0  # two masks vanished after fine-tuning: no factor brings them back
    assert fit_logit_scale(flat, base) == pytest.approx(2.0, rel=0.05)


def test_sharper_logits_are_left_alone():
    assert fit_logit_scale(disc_logits(2.0), stability_each(disc_logits(1.0))) == 1.0
    assert fit_logit_scale(torch.zeros((0, 256, 256)), torch.zeros(0)) == 1.0
    assert (
        fit_logit_scale(disc_logits(1e-3), stability_each(disc_logits(1.0)), max_scale=8.0) == 8.0
    )


def test_the_folded_scale_multiplies_the_logits_and_keeps_every_mask(trainable, labelled_images):
    store = EmbeddingStore()
    before = click_predictions(inference_model(trainable), labelled_images, store)[0]
    apply_logit_scale(trainable.module, 3.0)
    after = click_predictions(inference_model(trainable), labelled_images, store)[0]
    assert len(before) == sum(len(image.object_ids(20)) for image in labelled_images)
    assert torch.allclose(after, 3.0 * before, rtol=1e-4, atol=1e-4)
    assert torch.equal(after > 0, before > 0)


FAST = {
    "steps": 2,
    "objects_per_step": 2,
    "prompts": PromptSettings(iterations=1, quiet_iterations=0),
    "validate_every": 2,
    "validation_objects": 1,
    "checkpoint_every": 1,
    "warmup_steps": 1,
    "learning_rate": 1e-3,
}


def test_training_folds_the_calibration_into_the_saved_weights(
    tiny_architecture, labelled_images, tmp_path
):
    from napari_sam.training.network import load_trainable
    from tiny_sam import random_model

    runs = {}
    for calibrate in (False, True):
        torch.manual_seed(0)
        trainable = load_trainable(
            random_model(tiny_architecture, seed=0, name="tiny")
        )  # not "random-": calibrated
        result = train(
            trainable,
            labelled_images[:2],
            labelled_images[2:],
            tmp_path / str(calibrate),
            TrainingConfig(**FAST, calibrate_logits=calibrate, freeze_iou_head=True),
        )
        runs[calibrate] = (
            result,
            read_state_dict(result.weights),
            json.loads(result.card.read_text()),
        )
    (plain, plain_weights, plain_card), (calibrated, weights, card) = runs[False], runs[True]
    assert plain.calibration is None and plain_card["training"]["logit_calibration"] is None
    scale = calibrated.calibration.scale
    assert card["training"]["logit_calibration"]["scale"] == pytest.approx(scale, abs=1e-4)
    assert calibrated.calibration.prompts == sum(
        len(image.object_ids(20)) for image in labelled_images[:2]
    )
    assert calibrated.calibration.calibrated_median >= calibrated.calibration.tuned_median
    scaled = {
        f"mask_decoder.output_hypernetworks_mlps.{i}.layers.2.{p}"
        for i in range(4)
        for p in ("weight", "bias")
    }
    for key, value in weights.items():  # only the hypernetworks' last layers differ, by the scale
        expected = plain_weights[key] * scale if key in scaled else plain_weights[key]
        assert torch.allclose(value, expected, rtol=1e-5, atol=1e-7), key
    checkpoint = torch.load(tmp_path / "True" / "checkpoint.pt", weights_only=True)
    assert len(checkpoint["base_stability"]) == calibrated.calibration.prompts


def test_the_iou_shift_restores_the_share_of_candidates_passing_the_threshold():
    generator = torch.Generator().manual_seed(0)
    base = 0.8 + 0.15 * torch.rand((200, 3), generator=generator)
    tuned = base - 0.07 + 0.01 * torch.randn((200, 3), generator=generator)  # a trained head
    shift = fit_iou_shift(tuned, base)
    assert passing_share(tuned) < passing_share(base) - 0.3
    assert passing_share(tuned, shift) == pytest.approx(passing_share(base), abs=0.01)
    assert shift == pytest.approx(0.07, abs=0.01)


def test_the_iou_shift_matches_medians_when_no_candidate_passed_and_is_bounded():
    base = torch.full((10, 3), 0.5)
    assert passing_share(base) == 0.0
    assert fit_iou_shift(base - 0.1, base) == pytest.approx(0.1)
    assert fit_iou_shift(base - 1.0, base) == MAX_IOU_SHIFT
    assert fit_iou_shift(torch.zeros((0, 3)), torch.zeros((0, 3))) == 0.0
    assert IOU_THRESHOLD == pytest.approx(0.88)  # segment-everything's default


def test_the_folded_iou_shift_moves_every_prediction_and_keeps_the_shown_mask(
    trainable, labelled_images
):
    store = EmbeddingStore()
    logits, scores = click_predictions(inference_model(trainable), labelled_images, store)
    apply_iou_shift(trainable.module, 0.125)
    after_logits, after = click_predictions(inference_model(trainable), labelled_images, store)
    assert scores.shape == (len(logits), 3)
    assert torch.allclose(after, scores + 0.125, atol=1e-5)
    assert torch.equal(after_logits, logits)


def test_a_trained_iou_head_is_shifted_back_to_the_base_models_pass_rate(
    tiny_architecture, labelled_images, tmp_path
):
    from napari_sam.training.network import load_trainable
    from tiny_sam import random_model

    runs = {}
    for calibrate in (False, True):
        torch.manual_seed(0)
        trainable = load_trainable(random_model(tiny_architecture, seed=0, name="tiny"))
        config = TrainingConfig(**FAST, calibrate_logits=calibrate, freeze_iou_head=False)
        result = train(
            trainable, labelled_images[:2], labelled_images[2:], tmp_path / f"{calibrate}", config
        )
        runs[calibrate] = (result, read_state_dict(result.weights))
    (_, plain), (calibrated, weights) = runs[False], runs[True]
    calibration = calibrated.calibration
    card = json.loads(calibrated.card.read_text())["training"]["logit_calibration"]
    assert card["iou_shift"] == pytest.approx(calibration.iou_shift, abs=1e-4)
    assert calibration.iou_pass_base is not None
    bias = "mask_decoder.iou_prediction_head.layers.2.bias"
    assert torch.allclose(weights[bias], plain[bias] + calibration.iou_shift, atol=1e-6)
    checkpoint = torch.load(tmp_path / "True" / "checkpoint.pt", weights_only=True)
    assert np.asarray(checkpoint["base_iou_scores"]).shape == (calibration.prompts, 3)
