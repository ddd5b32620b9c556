"""Keeping the base model's skills: rehearsal, anchoring and the weight mix (tiny SAM)."""

import json

import pytest
import torch

from napari_sam.engine.model.weights import read_state_dict
from napari_sam.errors import InvalidInputError
from napari_sam.training.config import PromptSettings, RetentionSettings, TrainingConfig
from napari_sam.training.loop import train
from napari_sam.training.retention import (
    adapt_rehearsal,
    add_anchor_gradients,
    blend,
    choose_mix,
    domains_to_keep,
    outcome_text,
    trained_snapshot,
)

FAST = {
    "objects_per_step": 2,
    "prompts": PromptSettings(iterations=1, quiet_iterations=0),
    "validation_objects": 1,
    "checkpoint_every": 50,
    "warmup_steps": 1,
    "calibrate_logits": False,
}


def _train_with_reference(trainable, images, folder, config, reference, rehearsal=None):
    """Train on the first image, validate on the second, with reference (and rehearsal) images."""
    return train(
        trainable,
        images[:1],
        images[1:2],
        folder,
        config,
        reference_images=reference,
        rehearsal_images=rehearsal,
    )


def _choose(scores, grid=(0.0, 0.5, 1.0), tolerance=0.005, known=None, min_improvement=0.0):
    """choose_mix over a table of (user, reference) scores by alpha; returns (choice, loads)."""
    loaded = []
    current = []

    def load(alpha):
        loaded.append(alpha)
        current[:] = [alpha]

    choice = choose_mix(
        lambda: scores[current[0]],
        load,
        RetentionSettings(mix_grid=grid, tolerance=tolerance),
        known,
        min_improvement,
    )
    return choice, loaded


def test_the_mix_is_the_best_user_score_within_the_reference_tolerance():
    scores = {0.0: (0.50, 0.80), 0.5: (0.60, 0.797), 1.0: (0.70, 0.70)}
    choice, loaded = _choose(scores)
    assert choice.alpha == 0.5  # 1.0 is better for the user but loses 0.1 on the reference
    assert (choice.user, choice.reference) == (0.60, 0.797)
    assert loaded[-1] == 0.5  # the choice stays loaded
    assert [a for a, _, _ in choice.scores] == [0.0, 0.5, 1.0]
    # nothing within the tolerance: the released weights
    choice, _ = _choose({0.0: (0.5, 0.8), 0.5: (0.6, 0.79), 1.0: (0.7, 0.7)})
    assert choice.alpha == 0.0
    # all within: the best for the user; a gain below min_improvement does not count
    table = {0.0: (0.5, 0.8), 0.5: (0.6, 0.8), 1.0: (0.601, 0.8)}
    choice, _ = _choose(table, min_improvement=0.002)
    assert choice.alpha == 0.5


def test_known_scores_are_not_measured_again():
    scores = {0.0: (0.5, 0.8), 0.5: (0.6, 0.8), 1.0: (0.7, 0.8)}
    choice, loaded = _choose(scores, known={0.0: scores[0.0], 1.0: scores[1.0]})
    assert loaded == [0.5, 1.0]  # measured 0.5, then loaded the choice
    assert choice.alpha == 1.0 and choice.to_dict()["scores"][2]["validation"] == 0.7


def test_blend_and_anchor_gradients_are_exact():
    initial = {"w": torch.tensor([0.0, 2.0])}
    tuned = {"w": torch.tensor([1.0, 4.0])}
    assert torch.equal(blend(initial, tuned, 0.25)["w"], torch.tensor([0.25, 2.5]))
    layer = torch.nn.Linear(2, 1, bias=False)
    start = trained_snapshot(layer)
    with torch.no_grad():
        layer.weight.add_(torch.tensor([[1.0, -2.0]]))
    layer.weight.grad = torch.zeros_like(layer.weight)
    add_anchor_gradients(layer, start, 0.5)
    assert torch.allclose(layer.weight.grad, torch.tensor([[0.5, -1.0]]))
    add_anchor_gradients(layer, start, 0.0)  # off: unchanged
    assert torch.allclose(layer.weight.grad, torch.tensor([[0.5, -1.0]]))


def test_settings_refuse_bad_values():
    with pytest.raises(InvalidInputError, match="rehearsal"):
        RetentionSettings(rehearsal=1.0)
    with pytest.raises(InvalidInputError, match="anchor"):
        RetentionSettings(anchor=-1)
    with pytest.raises(InvalidInputError, match="mix_grid"):
        RetentionSettings(mix_grid=(0.0, 1.5))
    with pytest.raises(InvalidInputError, match="iou_head_mix"):
        RetentionSettings(iou_head_mix=1.5)
    with pytest.raises(InvalidInputError, match="free_points"):
        RetentionSettings(free_points=-1)
    # cards from before retention existed trained without a mix
    values = TrainingConfig().to_dict()
    del values["retention"]
    old = TrainingConfig.from_dict(values).retention
    assert old.mix is False and old.rehearsal == 0.0
    assert TrainingConfig.from_dict(TrainingConfig().to_dict()) == TrainingConfig()
    # ... and before the IoU head's options: labels' IoU, nothing kept on rehearsal
    values = TrainingConfig().to_dict()
    del values["losses"]["iou_band"], values["retention"]["keep_iou_head"]
    old = TrainingConfig.from_dict(values)
    assert old.losses.iou_band == 0 and old.retention.keep_iou_head is False


def test_rehearsal_draws_its_share_of_the_steps(trainable, labelled_images, tmp_path):
    config = TrainingConfig(steps=12, retention=RetentionSettings(rehearsal=0.5), **FAST)
    result = train(
        trainable, labelled_images[:1], [], tmp_path, config, rehearsal_images=labelled_images[1:]
    )
    rehearsed = [h for h in result.history if h["rehearsal"]]
    assert 3 <= len(rehearsed) <= 9  # binomial(12, 0.5)
    assert {h["image"] for h in rehearsed} <= {i.name for i in labelled_images[1:]}
    assert {h["image"] for h in result.history if not h["rehearsal"]} == {labelled_images[0].name}


def test_adaptive_rehearsal_follows_the_reference_validation():
    adaptive = RetentionSettings(rehearsal=0.5, adaptive=True, tolerance=0.005)
    base = 0.80
    assert adapt_rehearsal(0.5, 0.82, base, adaptive) == 0.25  # safe: rehearse less
    assert adapt_rehearsal(0.5, 0.81, base, adaptive) == 0.5  # within the band: keep
    assert adapt_rehearsal(0.5, 0.80, base, adaptive) == 0.5
    assert adapt_rehearsal(0.125, 0.797, base, adaptive) == 0.25  # slipping: rehearse more
    assert adapt_rehearsal(0.125, 0.79, base, adaptive) == 0.75  # forgetting: the most
    assert adapt_rehearsal(1 / 16, 0.9, base, adaptive) == 1 / 16  # bounded below ...
    assert adapt_rehearsal(0.75, 0.5, base, adaptive) == 0.75  # ... and above
    assert adapt_rehearsal(0.5, None, base, adaptive) == 0.5  # nothing measured
    fixed = RetentionSettings(rehearsal=0.5, adaptive=False)
    assert adapt_rehearsal(0.5, 0.9, base, fixed) == 0.5
    assert adapt_rehearsal(0.0, 0.5, base, adaptive) == 0.0  # rehearsal off stays off


def test_training_moves_the_rehearsal_share_after_each_validation(
    trainable, labelled_images, tmp_path
):
    retention = RetentionSettings(rehearsal=0.5, adaptive=True, tolerance=0.0, mix=False)
    config = TrainingConfig(
        steps=6, validate_every=2, patience=10, learning_rate=3e-3, retention=retention, **FAST
    )
    result = _train_with_reference(
        trainable, labelled_images, tmp_path, config, labelled_images[2:3], labelled_images[3:]
    )
    base = result.base_scores["reference"]
    share = 0.5
    for record in result.history:  # each step used the share the last validation left
        assert record["rehearsal_share"] == share
        share = adapt_rehearsal(share, record["reference_validation"], base, retention)
    saved = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert saved["rehearsal_share"] == share
    assert len({h["rehearsal_share"] for h in result.history}) > 1  # it did move


def test_joint_rehearsal_trains_on_both_every_step(trainable, labelled_images, tmp_path):
    retention = RetentionSettings(rehearsal=0.5, joint=True, rehearsal_targets="released")
    config = TrainingConfig(steps=4, retention=retention, **FAST)
    result = train(
        trainable, labelled_images[:1], [], tmp_path, config, rehearsal_images=labelled_images[1:]
    )
    assert [h["image"] for h in result.history] == [labelled_images[0].name] * 4
    assert not any(h["rehearsal"] for h in result.history)
    kept = {i.name for i in labelled_images[1:]}
    assert all(h["rehearsal_image"] in kept and h["rehearsal_loss"] > 0 for h in result.history)


def test_the_anchor_keeps_the_weights_near_the_released_ones(
    tiny_architecture, labelled_images, tmp_path
):
    from napari_sam.training.network import load_trainable
    from tiny_sam import random_model

    drift = {}
    for anchor in (0.0, 1000.0):
        trainable = load_trainable(random_model(tiny_architecture, seed=0))
        start = {k: v.clone() for k, v in trainable.module.mask_decoder.state_dict().items()}
        config = TrainingConfig(
            steps=6, learning_rate=1e-3, retention=RetentionSettings(anchor=anchor), **FAST
        )
        train(trainable, labelled_images, [], tmp_path / str(anchor), config)
        end = trainable.module.mask_decoder.state_dict()
        drift[anchor] = sum(float((end[k] - start[k]).float().norm()) for k in start)
    assert drift[1000.0] < 0.5 * drift[0.0], drift


def test_training_with_a_reference_mixes_and_records_both_curves(
    trainable, labelled_images, tmp_path
):
    released = {k: v.clone() for k, v in trainable.module.mask_decoder.state_dict().items()}
    config = TrainingConfig(steps=4, validate_every=2, learning_rate=1e-3, **FAST)
    result = _train_with_reference(
        trainable, labelled_images, tmp_path, config, labelled_images[2:]
    )
    assert set(result.base_scores) == {"validation", "reference"}
    validated = [h for h in result.history if h["validation"] is not None]
    assert [h["step"] for h in validated] == [2, 4]
    assert all(h["reference_validation"] is not None for h in validated)
    mix = result.mix
    assert mix is not None and [a for a, _, _ in mix.scores] == list(config.retention.mix_grid)
    assert mix.scores[0][1:] == (result.base_scores["validation"], result.base_scores["reference"])
    assert mix.reference >= result.base_scores["reference"] - config.retention.tolerance
    # the saved weights are the chosen blend of the released and the kept (unmixed) weights
    saved = read_state_dict(result.weights)
    for name, value in result.unmixed.items():
        short = name.removeprefix("mask_decoder.")
        expected = torch.lerp(released[short], value, mix.alpha)
        assert torch.allclose(saved[name], expected, atol=1e-6), name
    card = json.loads(result.card.read_text())
    assert card["training"]["mix_with_released"]["alpha"] == mix.alpha
    assert card["training"]["released_validation"] == result.base_scores
    text = outcome_text(result)
    assert f"{result.base_scores['validation']:.3f} -> {mix.user:.3f}" in text


def test_the_step_guard_prefers_steps_that_keep_the_reference():
    import numpy as np

    from napari_sam.training.checkpoints import LoopState

    module = torch.nn.Linear(1, 1)
    state = LoopState.fresh(0)
    kept = []
    # (user score, within tolerance) per validation: the best overall (0.9) forgets
    for step, (score, within) in enumerate(
        [(0.5, False), (0.45, True), (0.9, False), (0.47, True), (0.471, True)], start=1
    ):
        state.step = step
        module.weight.data.fill_(step)
        state.observe(score, module, 0.002, within)
        kept.append((state.best_step, state.stale))
    # a step within beats any step outside; among steps within, +0.02 counts, +0.001 does not
    assert kept == [(1, 0), (2, 0), (2, 1), (4, 0), (4, 1)]
    assert state.best_within and np.isclose(float(state.best_state["weight"]), 4.0)
    assert state.best_score == 0.47


def test_training_keeps_the_best_step_within_the_tolerance(trainable, labelled_images, tmp_path):
    retention = RetentionSettings(tolerance=0.0, mix=False)
    config = TrainingConfig(
        steps=8, validate_every=1, patience=10, learning_rate=3e-3, retention=retention, **FAST
    )
    result = _train_with_reference(
        trainable, labelled_images, tmp_path, config, labelled_images[2:]
    )
    floor = result.base_scores["reference"]
    validated = [h for h in result.history if h["validation"] is not None]
    within = [h for h in validated if h["reference_validation"] >= floor]
    kept = next(h for h in validated if h["step"] == result.best_step)
    card = json.loads(result.card.read_text())["training"]
    assert card["best_step_keeps_reference"] == bool(within)
    candidates = within or validated
    assert kept in candidates
    assert kept["validation"] >= max(h["validation"] for h in candidates) - config.min_improvement
    unguarded = TrainingConfig.from_dict({**config.to_dict(), "retention": {"mix": True}})
    assert not unguarded.retention.guard_steps  # runs from before the guard keep their rule
    assert not unguarded.retention.everything_guard


def test_no_mix_without_a_reference(trainable, labelled_images, tmp_path):
    config = TrainingConfig(steps=2, validate_every=2, **FAST)
    result = train(trainable, labelled_images[:2], labelled_images[2:], tmp_path, config)
    assert result.mix is None and result.unmixed is None
    assert result.base_scores["reference"] is None
    assert "Domains to keep" not in outcome_text(result)


def test_domains_to_keep_split_by_whole_images(labelled_images):
    rehearsal, validation = domains_to_keep(labelled_images, seed=0)
    assert rehearsal and validation
    assert {i.group for i in rehearsal}.isdisjoint({i.group for i in validation})
    with pytest.raises(InvalidInputError, match="at least two whole images"):
        domains_to_keep(labelled_images[:1])


def test_committed_objects_hold_out_planes_when_blocks_are_too_few(discs):
    """A 10-frame time-lapse is two blocks of 5: single planes are held out instead."""
    import numpy as np

    from napari_sam.training.annotations import annotated_images, validation_split

    disc_labels, disc_image = discs
    labels = np.stack([disc_labels(centres=((30 + k, 30), (60, 60))) for k in range(10)])
    image = np.stack([disc_image(plane, k) for k, plane in enumerate(labels)])
    images = annotated_images(image, labels)
    assert len({i.group for i in images}) == 2
    training, validation = validation_split(images)
    assert len(training) == 8 and len(validation) == 2
    assert {i.name for i in training}.isdisjoint({i.name for i in validation})
    assert validation_split(images[:2]) == (images[:2], [])  # too few: no validation
