"""One training (or validation) step: simulated interactive prompting on a batch of objects.

For every iteration of :mod:`~napari_sam.training.prompting` the prompt encoder and the
mask decoder run as plain autograd modules (the inference-only fast decoder is never
used here), the loss of :mod:`~napari_sam.training.losses` is back-propagated at once
(so the graph of one iteration is freed before the next), and the previous logits are
fed back detached, as in the paper. When the image encoder trains, its output is a leaf
that collects the gradients of all iterations, which then flow through the encoder in
one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from napari_sam.training.config import LossWeights, PromptSettings
from napari_sam.training.losses import distillation_loss, prompt_loss, true_iou
from napari_sam.training.prompting import (
    PromptState,
    add_point,
    error_points,
    feed_back,
    first_prompts,
    iteration_plan,
)
from napari_sam.training.sampling import ObjectBatch

# Objects per decoder pass in a training step: larger batches run in passes of 8 whose
# gradients add up to the batch's. A 16-object step then peaks at 1.6 GB instead of 2.4 GB
# (bench_training.py, decoder mode), in about the same time.
CHUNK_OBJECTS = 8


@dataclass(frozen=True)
class StepResult:
    """What one step measured (all floats, batch means)."""

    loss: float  # total loss averaged over iterations
    mask_loss: float  # focal + dice part
    iou_loss: float  # IoU-head MSE part
    first_iou: float  # IoU of the mask a user would get after the first prompt
    last_iou: float  # ... after the last iteration
    objects: int  # objects in the batch


def run_prompting(
    sam: torch.nn.Module,
    embedding: torch.Tensor,
    batch: ObjectBatch,
    settings: PromptSettings,
    rng: np.random.Generator,
    input_size: tuple[int, int],
    weights: LossWeights | None = None,
    use_box: bool | None = None,
    backward: bool = True,
    chunk: int = CHUNK_OBJECTS,
    teacher=None,
    teacher_masks: bool = True,
) -> StepResult:
    """Run every prompting iteration on one image's objects.

    Parameters
    ----------
    sam : Sam
    embedding : torch.Tensor, shape (1, 256, 64, 64)
        Requires grad when the encoder trains.
    batch : ObjectBatch
    settings : PromptSettings
    rng : numpy.random.Generator
    input_size : (int, int)
        (h, w) of the resized image in the encoder frame.
    weights : LossWeights, optional
        The paper's 20:1:1 when omitted.
    use_box : bool, optional
        Force the first prompt type; drawn with ``settings.box_probability`` when None.
    backward : bool
        Back-propagate (training) or only measure (validation, under ``no_grad``).
    chunk : int
        Objects per decoder pass; the gradient is the same for any value.
    teacher : optional
        The released prompt encoder and mask decoder
        (:func:`~napari_sam.training.retention.released_decoder`): when given, each
        prompt's target is the teacher's output for it, not the object's label
        (:func:`~napari_sam.training.losses.distillation_loss`). The prompts still come
        from the labels.
    teacher_masks : bool
        With ``teacher``: False keeps the labels as the masks' targets and takes only the
        IoU head's targets from the teacher (its predictions for the same prompts).

    Returns
    -------
    StepResult
    """
    weights = weights or LossWeights()
    leaf = embedding.detach().requires_grad_(backward and embedding.requires_grad)
    image_pe = sam.prompt_encoder.dense_positional_encoding()
    if teacher is not None:
        teacher_pe = teacher.prompt_encoder.dense_positional_encoding()
    if use_box is None:
        use_box = bool(rng.random() < settings.box_probability)
    state = first_prompts(
        batch.targets,
        batch.boxes,
        use_box,
        rng,
        settings.box_noise,
        settings.max_box_noise,
        input_size,
    )
    plan = iteration_plan(settings.iterations, settings.quiet_iterations, rng) + [False]
    totals = np.zeros(3)
    chosen_iou = []
    for adds_point in plan:
        shown = []
        for rows in _chunks(len(batch), chunk):
            # Every loss term is a mean over objects: chunk means weighted by their share
            # add up to the batch mean, so the gradient is the whole batch's.
            share = (rows.stop - rows.start) / len(batch)
            logits, predicted_iou = _decode(sam, leaf, image_pe, _rows(state, rows))
            kept = None
            if teacher is not None:
                with torch.no_grad():
                    kept = _decode(teacher, leaf.detach(), teacher_pe, _rows(state, rows))
            if kept is not None and teacher_masks:
                loss = distillation_loss(logits, predicted_iou, *kept, weights)
            else:
                targets = batch.targets[rows]
                iou_targets = None if kept is None else kept[1]
                loss = prompt_loss(logits, predicted_iou, targets, weights, iou_targets)
            if backward:
                (loss.total * (share / settings.iterations)).backward()
            totals += share * np.array((float(loss.total.detach()), loss.mask, loss.iou))
            picked = predicted_iou.detach().argmax(dim=1)  # what a user would be shown
            shown.append(logits.detach()[torch.arange(len(picked)), picked][:, None])
        fed = torch.cat(shown)
        chosen_iou.append(float(true_iou(fed, batch.targets).mean()))
        state = _next_state(state, fed, batch, adds_point, rng)
    if backward and embedding.requires_grad:
        embedding.backward(leaf.grad)
    totals /= len(plan)
    return StepResult(
        float(totals[0]),
        float(totals[1]),
        float(totals[2]),
        chosen_iou[0],
        chosen_iou[-1],
        len(batch),
    )


def distil_free_points(
    sam: torch.nn.Module,
    embedding: torch.Tensor,
    teacher,
    count: int,
    rng: np.random.Generator,
    input_size: tuple[int, int],
    weights: LossWeights | None = None,
    backward: bool = True,
) -> float:
    """Ask for the released outputs at ``count`` points drawn anywhere in the image.

    Segment-everything prompts a grid of single points, most of them on background or
    between objects, where the labelled objects' prompts never go. On images of the
    domains to keep these points train towards the teacher's three masks and predicted
    IoUs (:func:`~napari_sam.training.losses.distillation_loss`), so what the grid gets
    there stays what the released model gave. Returns the loss (a float); with
    ``backward`` its gradient is added to the parameters' (and the embedding's, when it
    requires grad).
    """
    weights = weights or LossWeights()
    height, width = input_size
    xy = rng.uniform((0, 0), (width, height), size=(count, 2))
    points = torch.from_numpy(xy).float()[:, None, :]
    state = PromptState(points, torch.ones((count, 1), dtype=torch.int64), None, None)
    image_pe = sam.prompt_encoder.dense_positional_encoding()
    with torch.no_grad():
        teacher_pe = teacher.prompt_encoder.dense_positional_encoding()
        kept = _decode(teacher, embedding.detach(), teacher_pe, state)
    loss = distillation_loss(*_decode(sam, embedding, image_pe, state), *kept, weights)
    if backward:
        loss.total.backward()
    return float(loss.total.detach())


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def _rows(state: PromptState, rows: slice) -> PromptState:
    """The prompts of some objects of the batch."""

    def pick(value):
        return None if value is None else value[rows]

    return replace(
        state,
        points=pick(state.points),
        labels=pick(state.labels),
        boxes=pick(state.boxes),
        mask_logits=pick(state.mask_logits),
    )


def _decode(sam, embedding: torch.Tensor, image_pe: torch.Tensor, state: PromptState):
    """Candidates of one iteration: three masks for a lone point, else the single mask."""
    points = None if state.points is None else (state.points, state.labels)
    sparse, dense = sam.prompt_encoder(points, state.boxes, state.mask_logits)
    logits, predicted_iou = sam.mask_decoder(embedding, image_pe, sparse, dense)
    chosen = slice(1, None) if state.single_point else slice(0, 1)
    return logits[:, chosen], predicted_iou[:, chosen]


def _next_state(
    state: PromptState,
    fed: torch.Tensor,
    batch: ObjectBatch,
    adds_point: bool,
    rng: np.random.Generator,
) -> PromptState:
    if not adds_point:
        return feed_back(state, fed)
    points, labels = error_points(fed[:, 0] > 0, batch.targets[:, 0] > 0.5, batch.valid, rng)
    return add_point(state, points, labels, fed)
