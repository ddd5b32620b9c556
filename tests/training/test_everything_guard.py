"""The segment-everything guard: the saved mix must keep segment-everything on the domains
to keep, else it steps down towards the released weights."""

import dataclasses
import json

import pytest
import torch

from napari_sam.training.config import PromptSettings, RetentionSettings, TrainingConfig
from napari_sam.training.everything_guard import (
    EverythingCheck,
    candidate_mixes,
    everything_text,
    step_down,
)
from napari_sam.training.final_weights import Checks
from napari_sam.training.retention import (
    IOU_HEAD_PREFIXES,
    MixChoice,
    blend,
    trained_snapshot,
)

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def _mix(alpha, references):
    """A MixChoice that chose ``alpha``; ``references``: reference score per grid alpha."""
    return MixChoice(alpha, tuple((a, 0.5 + a / 10, r) for a, r in zip(GRID, references)))


def test_candidates_are_the_mixes_that_kept_the_clicks_from_the_choice_down():
    mix = _mix(0.75, (0.60, 0.61, 0.59, 0.598, 0.50))
    # 1.0 is above the choice; 0.5 lost more than the tolerance on clicks; 0 needs no check
    assert candidate_mixes(mix, 0.005) == [(0.75, 1.0), (0.25, 1.0)]
    assert candidate_mixes(mix, 0.005, (1.0, 0.5)) == [
        (0.75, 1.0),
        (0.75, 0.5),
        (0.25, 1.0),
        (0.25, 0.5),
    ]
    assert candidate_mixes(_mix(0.0, (0.6,) * 5), 0.005) == []


def test_step_down_saves_the_first_mix_within_the_tolerance():
    table = {(1.0, 1.0): 0.30, (1.0, 0.5): 0.39, (0.5, 1.0): 0.395, (0.5, 0.5): 0.42}
    measured = []

    def measure(candidate):
        measured.append(candidate)
        return table[candidate]

    saved, tried = step_down(list(table), measure, released=0.40, tolerance=0.01)
    assert saved == (1.0, 0.5) and measured == [(1.0, 1.0), (1.0, 0.5)]
    assert tried == ((1.0, 1.0, 0.30), (1.0, 0.5, 0.39))
    check = EverythingCheck(0.40, 0.01, tried, *saved)
    assert check.saved == 0.39 and check.stepped_down
    text = everything_text(check)
    assert "saved 0.390; stepped down to 1.00 of the trained change, 0.5 of the IoU head" in text
    assert "(0.300 at 1.00 lost more than 0.01)" in text
    # none within: the released weights
    saved, tried = step_down(list(table)[:3], measure, released=0.50, tolerance=0.01)
    assert saved == (0.0, 1.0) and len(tried) == 3
    check = EverythingCheck(0.50, 0.01, tried, *saved)
    assert check.saved == 0.50 and check.stepped_down
    assert "stepped down to the released weights" in everything_text(check)
    kept = EverythingCheck(0.40, 0.01, ((1.0, 1.0, 0.395),), 1.0, 1.0)
    assert kept.saved == 0.395 and not kept.stepped_down
    assert "stepped down" not in everything_text(kept)


def _guard_inputs(trainable, labelled_images):
    """The state of finish_run just before the guard: the chosen mix (1.0) loaded."""
    from napari_sam.training.checkpoints import LoopState
    from napari_sam.training.validation import ValidationSet

    for p in trainable.module.parameters():
        p.requires_grad_(False)
    for p in trainable.module.mask_decoder.parameters():
        p.requires_grad_(True)
    state = LoopState.fresh(0)
    state.initial_state = trained_snapshot(trainable.module)
    with torch.no_grad():
        for p in trainable.module.mask_decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    unmixed = trained_snapshot(trainable.module)
    config = TrainingConfig(
        calibrate_logits=False,
        prompts=PromptSettings(iterations=1, quiet_iterations=0),
        retention=RetentionSettings(everything_tolerance=0.05),
    )
    reference = ValidationSet.build(labelled_images[2:], config)
    return state, unmixed, config, Checks(None, reference, None)


def _fake_ap(state, unmixed):
    """AP 0.5 - 0.2 a - 0.2 h, where a is how far the loaded decoder went from the released
    weights towards the trained ones and h how far its IoU head went: so a test sees
    which weights the guard measured."""
    head = next(n for n in unmixed if n.startswith(IOU_HEAD_PREFIXES))
    body = next(n for n in unmixed if not n.startswith(IOU_HEAD_PREFIXES))

    def share(trainable, name):
        current = dict(trainable.module.named_parameters())[name].detach()
        start, end = state.initial_state[name], unmixed[name]
        return float(((current - start) * (end - start)).sum() / ((end - start) ** 2).sum())

    def everything_ap(trainable, images, store):
        return 0.5 - 0.2 * share(trainable, body) - 0.2 * share(trainable, head)

    return everything_ap


@pytest.mark.parametrize(
    ("tolerance", "saved", "tried"),
    [(0.5, (1.0, 1.0), 1), (0.26, (1.0, 0.25), 3), (0.2, (0.75, 0.25), 6), (0.05, (0.0, 1.0), 12)],
)
def test_the_guard_steps_the_saved_weights_down(
    trainable, labelled_images, monkeypatch, tolerance, saved, tried
):
    from napari_sam.training import final_weights

    state, unmixed, config, checks = _guard_inputs(trainable, labelled_images)
    config = dataclasses.replace(
        config, retention=RetentionSettings(everything_tolerance=tolerance)
    )
    monkeypatch.setattr(final_weights, "everything_ap", _fake_ap(state, unmixed))
    monkeypatch.setattr(
        Checks, "scores", lambda self, trainable: {"validation": 0.7, "reference": 0.6}
    )
    mix = _mix(1.0, (0.6,) * 5)
    chosen, calibration, check = final_weights.keep_everything(
        trainable, config, state, labelled_images[:1], None, checks, mix, unmixed, None
    )
    alpha, share = saved
    assert (check.alpha, check.head_share) == saved and chosen.alpha == alpha
    assert len(check.tried) == tried and calibration is None
    assert check.released == pytest.approx(0.5)
    assert check.saved == pytest.approx(0.5 - 0.2 * alpha - 0.2 * alpha * share)
    if check.stepped_down and alpha > 0:  # the saved weights' clicks, measured again
        assert (chosen.user, chosen.reference) == (0.7, 0.6)
    loaded = trained_snapshot(trainable.module)
    for name, value in blend(state.initial_state, unmixed, alpha).items():
        if name.startswith(IOU_HEAD_PREFIXES):
            value = torch.lerp(state.initial_state[name], unmixed[name], alpha * share)
        assert torch.allclose(loaded[name], value, atol=1e-6), name


def test_a_run_with_a_reference_records_the_guard(
    trainable, labelled_images, tmp_path, monkeypatch
):
    """A real run (no fake): the card and the result carry the check, the released AP is
    the released weights' own, and the saved weights are the mix the check saved."""
    from napari_sam.engine.everything import segmenter
    from napari_sam.engine.everything.settings import EverythingSettings
    from napari_sam.engine.model.weights import read_state_dict

    # a coarse grid: the random tiny model finds blobs everywhere, and 32 x 32 prompts per
    # pass made this test take minutes
    full = segmenter.segment_plane

    def coarse(predictor, plane, normalization, settings=None, **kwargs):
        settings = settings or EverythingSettings(points_per_side=8)
        return full(predictor, plane, normalization, settings, **kwargs)

    monkeypatch.setattr(segmenter, "segment_plane", coarse)
    from napari_sam.training.everything_guard import everything_ap
    from napari_sam.training.loop import train

    released = {k: v.clone() for k, v in trainable.module.state_dict().items()}
    reference = labelled_images[2:]
    config = TrainingConfig(
        steps=2,
        validate_every=2,
        learning_rate=1e-3,
        objects_per_step=2,
        validation_objects=1,
        calibrate_logits=False,
        prompts=PromptSettings(iterations=1, quiet_iterations=0),
        # the mix keeps the trained weights, so that the guard has something to check
        retention=RetentionSettings(mix_grid=(1.0,), tolerance=1.0),
        min_improvement=-1.0,
    )
    result = train(
        trainable,
        labelled_images[:1],
        labelled_images[1:2],
        tmp_path,
        config,
        reference_images=reference,
    )
    check = result.everything
    assert check is not None and check.alpha == result.mix.alpha and check.tried
    assert check.tried[0][:2] == (1.0, 1.0)
    card = json.loads(result.card.read_text())["training"]["everything_guard"]
    assert card == json.loads(json.dumps(check.to_dict()))
    trainable.module.load_state_dict(released)
    assert check.released == pytest.approx(everything_ap(trainable, reference, None))
    # your validation images: measured with the released weights too
    assert check.yours[0] == pytest.approx(everything_ap(trainable, labelled_images[1:2], None))
    assert "On your validation images" in everything_text(check)
    saved = read_state_dict(result.weights)
    for name, value in result.unmixed.items():
        share = check.head_share if name.startswith(IOU_HEAD_PREFIXES) else 1.0
        expected = torch.lerp(released[name], value, check.alpha * share)
        assert torch.allclose(saved[name], expected, atol=1e-6), name
