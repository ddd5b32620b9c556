"""The training loop: steps, validation, early stopping, resumable checkpoints.

:func:`train` draws one image per step, samples its objects, runs the simulated
interactive prompting of :mod:`~napari_sam.training.steps` and takes an AdamW step.
Every ``validate_every`` steps it measures the validation images (fixed objects and
prompts, so numbers compare across steps), keeps the best weights, and stops after
``patience`` validations without improvement. ``checkpoint.pt`` in the output folder
(weights, optimizer, step, random states, history) lets an interrupted run resume where
it stopped; the final weights are the best ones, in the official state-dict format, with
a JSON model card beside them (:mod:`~napari_sam.training.records`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_sam.errors import InvalidInputError, OperationCancelled
from napari_sam.training.calibration import click_predictions, stability_each
from napari_sam.training.checkpoints import (
    CHECKPOINT_NAME,
    LoopState,
    load_checkpoint,
    save_checkpoint,
)
from napari_sam.training.config import TrainingConfig
from napari_sam.training.datasets import LabelledImage
from napari_sam.training.embeddings import EmbeddingStore
from napari_sam.training.final_weights import Checks, TrainingResult, finish_run
from napari_sam.training.network import TrainableSam, inference_model
from napari_sam.training.optimization import (
    install_drop_path,
    learning_rate_factor,
    make_optimizer,
    parameter_groups,
    set_learning_rate,
)
from napari_sam.training.retention import (
    adapt_rehearsal,
    add_anchor_gradients,
    needs_released_decoder,
    released_decoder,
    trained_snapshot,
)
from napari_sam.training.sampling import prepare_image, sample_objects
from napari_sam.training.steps import distil_free_points, run_prompting
from napari_sam.training.validation import ValidationSet

log = logging.getLogger(__name__)

MAX_DRAWS = 100  # image draws per step before concluding that no object is usable


@dataclass(frozen=True)
class TrainingProgress:
    """Reported after every step."""

    step: int  # steps done so far (1-based after the first)
    total_steps: int  # the configured number of steps
    loss: float  # this step's loss
    validation: float | None  # validation score measured at this step, if any
    best_validation: float | None  # best validation score so far
    seconds: float  # wall time of this step
    reference_validation: float | None = None  # reference validation score at this step, if any


def train(
    trainable: TrainableSam,
    train_images: list[LabelledImage],
    validation_images: list[LabelledImage],
    output: str | Path,
    config: TrainingConfig | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    store: EmbeddingStore | None = None,
    reference_images: list[LabelledImage] | None = None,
    rehearsal_images: list[LabelledImage] | None = None,
) -> TrainingResult:
    """Fine-tune (or train) ``trainable`` in place and save the best weights.

    Parameters
    ----------
    trainable : TrainableSam
        From :func:`~napari_sam.training.network.load_trainable`.
    train_images, validation_images : list of LabelledImage
        Disjoint sets of whole images (see :func:`~napari_sam.training.datasets.split_images`);
        without validation images there is no early stopping and the last weights are kept.
    output : str or pathlib.Path
        Folder for ``checkpoint.pt``, the final weights and the model card.
    config : TrainingConfig, optional
        :class:`~napari_sam.training.config.TrainingConfig`'s defaults when omitted.
    progress : callable, optional
        Called with a :class:`TrainingProgress` after every step.
    should_stop : callable, optional
        Polled before every step; True saves a checkpoint and raises
        :class:`~napari_sam.errors.OperationCancelled` (resume later with ``resume=True``).
    resume : bool
        Continue from ``output/checkpoint.pt`` (weights, optimizer, step, random state).
    store : EmbeddingStore, optional
        Embedding cache to use (and fill) while the encoder is frozen.
    reference_images : list of LabelledImage, optional
        Validation images of the domains the model must keep (whole images, none of them
        trained on): measured at every validation (the reference curve) and the
        constraint when mixing the weights (:mod:`~napari_sam.training.retention`).
    rehearsal_images : list of LabelledImage, optional
        Images of the domains to keep that ``config.retention.rehearsal`` of the steps
        train on; without them rehearsal is off.

    Returns
    -------
    TrainingResult

    Raises
    ------
    InvalidInputError
        No training image, or ``output`` holds a checkpoint and ``resume`` is False.
    """
    output, config = Path(output).expanduser(), config or TrainingConfig()
    _check_inputs(train_images, output, resume)
    sam = trainable.module
    groups = parameter_groups(
        sam,
        config.trainable,
        config.encoder_blocks,
        config.layer_decay,
        config.weight_decay,
        config.freeze_iou_head,
    )
    optimizer = make_optimizer(groups, config.learning_rate)
    state = LoopState.fresh(config.seed)
    if resume and (output / CHECKPOINT_NAME).is_file():
        state = load_checkpoint(output / CHECKPOINT_NAME, sam, optimizer, config)
        log.info("resuming at step %d", state.step)
    store = store or EmbeddingStore()
    frozen = (
        inference_model(trainable) if config.trainable in ("decoder", "decoder+prompt") else None
    )
    if config.calibrate_logits and state.step == 0 and not trainable.base_id.startswith("random-"):
        base, base_scores = click_predictions(
            frozen or inference_model(trainable),
            train_images,
            store if frozen is not None else EmbeddingStore(),
            seed=config.seed,
        )
        state.base_stability = [float(v) for v in stability_each(base)]
        state.base_iou_scores = base_scores.tolist()
    if state.initial_state is None and state.step == 0:
        state.initial_state = trained_snapshot(sam)
    validation = ValidationSet.build(validation_images, config) if validation_images else None
    reference = ValidationSet.build(reference_images, config) if reference_images else None
    if reference is not None and not reference.images:
        reference = None
    checks = Checks(validation, reference, store if frozen is not None else None)
    if state.base_scores is None and state.step == 0 and validation is not None:
        state.base_scores = checks.scores(trainable)
    rehearsal = list(rehearsal_images or []) if config.retention.rehearsal > 0 else []
    teacher = (
        released_decoder(sam, state.initial_state)
        if needs_released_decoder(rehearsal, config)
        else None
    )
    generator = torch.Generator().manual_seed(config.seed)
    with install_drop_path(sam.image_encoder, config.drop_path, generator):
        stopped = _run_steps(
            trainable,
            frozen,
            (train_images, rehearsal),
            checks,
            store,
            optimizer,
            state,
            config,
            output,
            progress,
            should_stop,
            teacher,
        )
    save_checkpoint(output / CHECKPOINT_NAME, sam, optimizer, state, config)
    return finish_run(
        trainable,
        output,
        config,
        state,
        stopped,
        train_images,
        validation_images,
        store if frozen is not None else EmbeddingStore(),
        checks,
    )


def _run_steps(
    trainable,
    frozen,
    images,
    checks: Checks,
    store,
    optimizer,
    state: LoopState,
    config: TrainingConfig,
    output: Path,
    progress,
    should_stop,
    teacher=None,
) -> str:
    """Step until done or stopped early; returns why training ended."""
    sam = trainable.module
    while state.step < config.steps:
        if should_stop is not None and should_stop():
            save_checkpoint(output / CHECKPOINT_NAME, sam, optimizer, state, config)
            raise OperationCancelled(
                f"Training stopped at step {state.step}; resume it from {output}."
            )
        started, cpu_started = time.perf_counter(), time.process_time()
        record = _one_step(sam, frozen, images, store, optimizer, state, config, teacher)
        score = reference_score = None
        if checks.validation is not None and (
            state.step % config.validate_every == 0 or state.step == config.steps
        ):
            measured = checks.scores(trainable)
            score, reference_score = measured["validation"], measured["reference"]
            state.observe(score, sam, config.min_improvement, _within(state, config, measured))
            state.rehearsal_share = adapt_rehearsal(
                _share(state, config),
                reference_score,
                (state.base_scores or {}).get("reference"),
                config.retention,
            )
        record.update(
            validation=score,
            reference_validation=reference_score,
            seconds=time.perf_counter() - started,
            cpu_seconds=time.process_time() - cpu_started,
        )
        state.history.append(record)
        if state.step % config.checkpoint_every == 0:
            save_checkpoint(output / CHECKPOINT_NAME, sam, optimizer, state, config)
        if progress is not None:
            progress(
                TrainingProgress(
                    state.step,
                    config.steps,
                    record["loss"],
                    score,
                    state.best_score,
                    time.perf_counter() - started,
                    reference_score,
                )
            )
        if checks.validation is not None and state.stale >= config.patience:
            return "early stopping"
        if (
            config.max_minutes is not None
            and _minutes(state) >= config.max_minutes
            and state.step < config.steps
        ):
            if (
                checks.validation is not None and score is None
            ):  # the steps since the last validation count too
                measured = checks.scores(trainable)
                state.observe(
                    measured["validation"],
                    sam,
                    config.min_improvement,
                    _within(state, config, measured),
                )
                state.history[-1]["validation"] = measured["validation"]
                state.history[-1]["reference_validation"] = measured["reference"]
            return "time limit"
    return "completed"


def _within(state: LoopState, config: TrainingConfig, measured: dict) -> bool:
    """Whether the weights just measured keep the domains to keep (the step guard).

    True when their reference validation is at most ``retention.tolerance`` below the
    released model's, or when there is nothing to guard (no reference, guard off).
    """
    base = (state.base_scores or {}).get("reference")
    if not config.retention.guard_steps or base is None or measured["reference"] is None:
        return True
    return measured["reference"] >= base - config.retention.tolerance


def _share(state: LoopState, config: TrainingConfig) -> float:
    """The rehearsal share of the next step (adaptive rehearsal moves it from the setting)."""
    return config.retention.rehearsal if state.rehearsal_share is None else state.rehearsal_share


def _minutes(state: LoopState) -> float:
    """Wall minutes of the steps and validations so far (a resumed run counts its earlier part)."""
    return sum(record.get("seconds", 0.0) for record in state.history) / 60


def _check_inputs(train_images: list[LabelledImage], output: Path, resume: bool) -> None:
    if not train_images:
        raise InvalidInputError("No training image: give at least one image with labels.")
    if not resume and (output / CHECKPOINT_NAME).is_file():
        raise InvalidInputError(
            f"{output} already holds a training checkpoint: pass resume=True (--resume) to "
            "continue it, or choose an empty output folder."
        )


def _one_step(
    sam, frozen, pools, store, optimizer, state: LoopState, config: TrainingConfig, teacher=None
) -> dict:
    """Draw an image and its objects, run the prompting iterations, update the weights.

    ``pools`` is (training images, rehearsal images). When there are rehearsal images, a
    share of the steps draws from them instead (``config.retention.rehearsal``, or
    where adaptive rehearsal has moved it, ``state.rehearsal_share``); with
    ``retention.joint`` every step draws a training image *and* a rehearsal image
    (``rehearsal * objects_per_step`` of its objects) and adds both losses. Rehearsal
    trains towards ``teacher``'s outputs when one is given (distilled rehearsal), else
    towards the labels.
    """
    rng, retention = state.rng, config.retention
    joint = retention.joint and bool(pools[1])
    share = _share(state, config)
    rehearsing = not retention.joint and bool(pools[1]) and bool(rng.random() < share)
    set_learning_rate(
        optimizer,
        config.learning_rate,
        learning_rate_factor(state.step, config.steps, config.warmup_steps, config.decay_at),
    )
    image, prepared, batch = _draw(
        pools[1] if rehearsing else pools[0], sam, rng, config, config.objects_per_step
    )
    _set_modes(sam, config.trainable)
    embedding = _embed(sam, frozen, store, image, prepared)
    result = run_prompting(
        sam,
        embedding,
        batch,
        config.prompts,
        rng,
        prepared.input_size,
        config.loss_weights,
        teacher=teacher if rehearsing else None,
        teacher_masks=retention.rehearsal_targets == "released",
    )
    record = {
        "image": image.name,
        "loss": result.loss,
        "first_iou": result.first_iou,
        "last_iou": result.last_iou,
        "objects": result.objects,
        "rehearsal": rehearsing,
        "rehearsal_share": share,
    }
    if rehearsing and retention.free_points:  # the decoder only: the embedding is detached
        record["free_points_loss"] = distil_free_points(
            sam,
            embedding.detach(),
            teacher,
            retention.free_points,
            rng,
            prepared.input_size,
            config.loss_weights,
        )
    if joint:  # the rehearsal image's gradient adds to the training image's
        objects = max(1, round(share * config.objects_per_step))
        kept_image, kept_prepared, kept_batch = _draw(pools[1], sam, rng, config, objects)
        kept = run_prompting(
            sam,
            _embed(sam, frozen, store, kept_image, kept_prepared),
            kept_batch,
            config.prompts,
            rng,
            kept_prepared.input_size,
            config.loss_weights,
            teacher=teacher,
            teacher_masks=retention.rehearsal_targets == "released",
        )
        record.update(rehearsal_image=kept_image.name, rehearsal_loss=kept.loss)
    if state.initial_state is not None:
        add_anchor_gradients(sam, state.initial_state, retention.anchor)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return {"step": state.step, **record}


def _draw(images, sam, rng, config: TrainingConfig, objects: int):
    """(image, prepared image, object batch) of one image with usable objects."""
    for _ in range(MAX_DRAWS):  # an image whose objects all vanish after cropping is drawn again
        image = images[int(rng.integers(len(images)))]
        prepared = prepare_image(
            image, sam.input_size, rng, config.crop_size, config.flips, config.min_area
        )
        batch = sample_objects(prepared, objects, rng) if len(prepared.object_ids) else None
        if batch is not None:
            return image, prepared, batch
    raise InvalidInputError(
        f"No usable object in {MAX_DRAWS} draws: objects must have at least min_area="
        f"{config.min_area} pixels (and survive --crop {config.crop_size}). "
        "Lower min_area or the crop."
    )


def _embed(sam, frozen, store, image, prepared):
    """The image embedding: cached while the encoder is frozen (and the image unchanged)."""
    if frozen is not None and not prepared.augmented:
        return store.features(frozen, image)
    if frozen is not None:
        with torch.no_grad():
            return sam.image_encoder(sam.normalize_pixels(prepared.pixels))
    return sam.image_encoder(sam.normalize_pixels(prepared.pixels))


def _set_modes(sam, trainable: str) -> None:
    """Train mode for what trains; batch norms always use their running statistics."""
    sam.train()
    if trainable in ("decoder", "decoder+prompt"):
        sam.image_encoder.eval()
    for module in sam.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
