"""The end of a training run: the kept weights, their mix with the released ones, the card.

:func:`finish_run` loads the kept (best validated) weights, mixes them with the released
weights when both validation sets exist (:func:`mix_with_released`,
:mod:`~napari_sam.training.retention`), calibrates the logit scale, saves the weights in
the official state-dict format and writes the model card beside them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from napari_sam.training.calibration import LogitCalibration, calibrate
from napari_sam.training.checkpoints import LoopState
from napari_sam.training.config import TrainingConfig
from napari_sam.training.embeddings import EmbeddingStore
from napari_sam.training.everything_guard import (
    HEAD_SHARES,
    EverythingCheck,
    candidate_mixes,
    everything_ap,
    step_down,
)
from napari_sam.training.network import save_weights
from napari_sam.training.records import write_training_card
from napari_sam.training.retention import (
    MixChoice,
    blend,
    choose_mix,
    mix_iou_head,
    trained_snapshot,
)
from napari_sam.training.validation import ValidationSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`train` produced."""

    weights: Path  # final (best) weights, official state-dict format
    card: Path  # JSON model card beside them
    steps: int  # steps done in total (including those before a resume)
    best_step: int  # step of the best validation (the final weights), or the last step
    best_validation: float | None  # its validation score (mean IoU), None without validation
    stopped: str  # "completed", "early stopping" or "time limit"
    history: tuple[
        dict, ...
    ]  # per step: step, image, loss, first_iou, last_iou, validation, seconds, cpu_seconds
    calibration: LogitCalibration | None = None  # the logit scale folded into the weights
    mix: MixChoice | None = None  # the chosen mix with the released weights (retention)
    base_scores: dict | None = None  # the released model's validation scores
    # the kept weights before the mix (trained tensors; None without a mix), for comparisons
    unmixed: dict | None = None
    # segment-everything on the reference validation images, released and saved (retention)
    everything: EverythingCheck | None = None


@dataclass(frozen=True)
class Checks:
    """The validation sets of a run: the user's domain and, optionally, the reference."""

    validation: ValidationSet | None
    reference: ValidationSet | None
    store: EmbeddingStore | None  # cached embeddings while the encoder is frozen

    def scores(self, trainable) -> dict:
        """``{"validation": ..., "reference": ...}`` of the weights now loaded (None: no set)."""
        return {
            "validation": None
            if self.validation is None
            else self.validation.score(trainable, self.store),
            "reference": None
            if self.reference is None
            else self.reference.score(trainable, self.store),
        }


def finish_run(
    trainable,
    output,
    config,
    state: LoopState,
    stopped,
    train_images,
    validation_images,
    store: EmbeddingStore,
    checks: Checks,
) -> TrainingResult:
    if state.best_state is not None:
        trainable.module.load_state_dict(state.best_state, strict=False)
    unmixed = trained_snapshot(trainable.module)
    mix = mix_with_released(trainable, state, config, checks)
    calibration = finalize(trainable, config, state, train_images, store)
    everything = None
    if mix is not None and mix.alpha > 0.0 and config.retention.everything_guard:
        mix, calibration, everything = keep_everything(
            trainable, config, state, train_images, store, checks, mix, unmixed, calibration
        )
    name = f"{config.name}_{trainable.architecture_name}"
    weights = save_weights(trainable.module, output / f"{name}.pt")
    best_step = state.best_step if state.best_state is not None else state.step
    card = write_training_card(
        output / f"{name}.json",
        weights,
        trainable,
        config,
        state,
        stopped,
        best_step,
        train_images,
        validation_images,
        calibration,
        mix,
        everything,
    )
    return TrainingResult(
        weights,
        card,
        state.step,
        best_step,
        state.best_score,
        stopped,
        tuple(state.history),
        calibration,
        mix,
        state.base_scores,
        unmixed if mix is not None else None,
        everything,
    )


def finalize(
    trainable, config: TrainingConfig, state: LoopState, train_images, store: EmbeddingStore
) -> LogitCalibration | None:
    """Calibrate the weights now loaded and keep the configured share of the IoU head.

    What the saved weights go through after the mix: the logit scale and the IoU shift
    (:mod:`~napari_sam.training.calibration`), then ``iou_head_mix`` of the head's change.
    """
    calibration = None
    if config.calibrate_logits and state.base_stability is not None:
        base_scores = None
        if not config.freeze_iou_head and state.base_iou_scores is not None:
            base_scores = torch.tensor(state.base_iou_scores)
        calibration = calibrate(
            trainable,
            train_images,
            torch.tensor(state.base_stability),
            store,
            config.seed,
            base_scores,
        )
        log.info(
            "logit scale %.2f: median stability %.3f -> %.3f (base model %.3f); IoU shift %+.3f",
            calibration.scale,
            calibration.tuned_median,
            calibration.calibrated_median,
            calibration.base_median,
            calibration.iou_shift,
        )
    elif config.calibrate_logits:
        log.warning(
            "logits not calibrated: the run started from random weights, or resumed a "
            "checkpoint written before calibration existed"
        )
    if not config.freeze_iou_head and state.initial_state is not None:
        mix_iou_head(trainable.module, state.initial_state, config.retention.iou_head_mix)
    return calibration


def keep_everything(
    trainable, config, state, train_images, store, checks: Checks, mix, unmixed, calibration
):
    """Step the mix down until segment-everything on the domains to keep holds
    (:mod:`~napari_sam.training.everything_guard`); returns (mix, calibration, check).

    The weights loaded on entry are the mix's choice as it would be saved; on return, the
    weights to save. When they differ, their validation scores are measured again and
    replace the mix's entry for their alpha.
    """
    started = time.perf_counter()
    images, module = checks.reference.images, trainable.module
    finalized = {mix.alpha: {k: v.clone() for k, v in module.state_dict().items()}}
    calibrations = {mix.alpha: calibration}
    first = everything_ap(trainable, images, checks.store)
    module.load_state_dict(state.initial_state, strict=False)
    released = everything_ap(trainable, images, checks.store)
    yours = checks.validation.images if checks.validation is not None else ()
    yours_released = everything_ap(trainable, yours, checks.store) if yours else None

    def load(candidate) -> None:
        alpha, share = candidate
        if alpha not in finalized:
            module.load_state_dict(blend(state.initial_state, unmixed, alpha), strict=False)
            calibrations[alpha] = finalize(trainable, config, state, train_images, store)
            finalized[alpha] = {k: v.clone() for k, v in module.state_dict().items()}
        module.load_state_dict(finalized[alpha])
        mix_iou_head(module, state.initial_state, share)

    def measure(candidate) -> float:
        if candidate == (mix.alpha, 1.0):
            return first
        load(candidate)
        return everything_ap(trainable, images, checks.store)

    shares = (1.0,) if config.freeze_iou_head else HEAD_SHARES
    candidates = candidate_mixes(mix, config.retention.tolerance, shares)
    tolerance = config.retention.everything_tolerance
    (alpha, share), tried = step_down(candidates, measure, released, tolerance)
    if alpha == 0.0:
        module.load_state_dict(state.initial_state, strict=False)
    else:
        load((alpha, share))
    if alpha > 0.0 and tried[0][:2] != (alpha, share):  # stepped down: measure it again
        measured = checks.scores(trainable)
        scores = {a: (u, r) for a, u, r in mix.scores}
        scores[alpha] = (measured["validation"], measured["reference"])
        mix = replace(mix, scores=tuple((a, u, r) for a, (u, r) in sorted(scores.items())))
    yours_saved = None
    if yours_released is not None:
        yours_saved = (
            yours_released if alpha == 0.0 else everything_ap(trainable, yours, checks.store)
        )
    seconds = round(time.perf_counter() - started, 1)
    pair = None if yours_saved is None else (yours_released, yours_saved)
    check = EverythingCheck(released, tolerance, tried, alpha, share, seconds, pair)
    log.info("segment-everything guard: %s", check.to_dict())
    return replace(mix, alpha=alpha), calibrations.get(alpha), check


def mix_with_released(trainable, state: LoopState, config: TrainingConfig, checks: Checks):
    """Mix the kept weights with the released ones (retention), when both checks exist."""
    if not (
        config.retention.mix
        and checks.validation is not None
        and checks.reference is not None
        and state.initial_state is not None
        and state.base_scores is not None
    ):
        return None
    module = trainable.module
    tuned = state.best_state or trained_snapshot(module)
    kept = next(
        (
            h
            for h in state.history
            if h["step"] == (state.best_step if state.best_state else state.step)
        ),
        None,
    )
    known = {0.0: (state.base_scores["validation"], state.base_scores["reference"])}
    if kept is not None and kept.get("reference_validation") is not None:
        known[1.0] = (kept["validation"], kept["reference_validation"])

    def score() -> tuple[float, float]:
        measured = checks.scores(trainable)
        return measured["validation"], measured["reference"]

    def load(alpha: float) -> None:
        module.load_state_dict(blend(state.initial_state, tuned, alpha), strict=False)

    choice = choose_mix(score, load, config.retention, known, config.min_improvement)
    log.info(
        "weights mixed at alpha %.2f: validation %.3f, reference %.3f (released %.3f, %.3f)",
        choice.alpha,
        choice.user,
        choice.reference,
        *known[0.0],
    )
    return choice
