"""Keep segment-everything's filters where they were after fine-tuning (calibration).

Segment-everything keeps a mask only when its *stability score* is high: the IoU of the
mask thresholded at logit +1 and at -1
(:func:`~napari_sam.engine.everything.filters.stability_scores`, threshold 0.95). The
released decoder, trained at scale, predicts steep logits; a few
hundred fine-tuning steps with the focal and dice losses leave the sign of the logits
where the labels want it but flatten them near the outline. The masks a user is shown do
not change, yet fewer masks pass the stability filter, and segment-everything with its
default settings finds fewer objects (held-out AP@0.5 0.497 -> 0.317 in one run of
docs/training.md; multiplying the same weights' logits by 2 gave 0.586).

Multiplying all mask logits by ``s > 0`` changes no mask (it keeps every sign), and it is
exact to fold into the weights: the logits are the dot product of a hypernetwork output
with the upscaled embedding, so scaling the last layer of every hypernetwork MLP scales
the logits. :func:`fit_logit_scale` finds, for each click on a training object, the factor
that gives the fine-tuned mask the stability of the base model's mask for the same click,
and takes the median (about 2 after 10-25 steps in docs/training.md). The stability of
logits ``s * L`` at offset 1 is that of ``L`` at offset ``1 / s``, so the search needs
one decoder pass. :func:`~napari_sam.training.loop.train` measures the base model before
its first step and calibrates the kept weights at the end.

The IoU filter (``pred_iou_thresh``, 0.88) has the same problem when the IoU head trains:
it learns the training labels' IoU, about 0.8 where their outlines differ from SAM's, and
segment-everything then keeps nothing. :func:`fit_iou_shift` adds one number to every
predicted IoU (the head's last bias) so that as many of the clicks' candidates pass the
threshold as with the base model; the order of a click's candidates, and so the mask it
shows, does not change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from napari_sam.training.datasets import LabelledImage
from napari_sam.training.embeddings import EmbeddingStore

STABILITY_OFFSET = 1.0  # segment-everything's default stability_offset
MAX_SCALE = 8.0  # never sharpen beyond this (a model that flat is better left alone)
IOU_THRESHOLD = 0.88  # segment-everything's default pred_iou_thresh
MAX_IOU_SHIFT = 0.3  # never move predicted IoUs further than this
CALIBRATION_IMAGES = 12  # images measured, spread over the list
CALIBRATION_OBJECTS = 16  # objects per image (a fixed draw)


def click_predictions(
    model,
    images: list[LabelledImage],
    store: EmbeddingStore | None = None,
    objects: int = CALIBRATION_OBJECTS,
    seed: int = 0,
    min_area: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shown mask's logits and the three candidates' predicted IoUs for each click.

    Parameters
    ----------
    model : SamModel
    images : list of LabelledImage
        Up to :data:`CALIBRATION_IMAGES` of them, evenly spread, are used.
    store : EmbeddingStore, optional
    objects : int
        Objects per image, drawn with ``seed``.

    Returns
    -------
    logits : torch.Tensor, shape (n, 256, 256) float32
    scores : torch.Tensor, shape (n, 3) float32
    """
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.training.evaluation import interior_point

    store = store or EmbeddingStore()
    predictor = Predictor(model)
    rng = np.random.default_rng(seed)
    picked = np.unique(
        np.linspace(0, len(images) - 1, min(len(images), CALIBRATION_IMAGES)).round().astype(int)
    )
    chunks, scores = [], []
    for index in picked if len(images) else []:
        image = images[int(index)]
        ids = image.object_ids(min_area)
        if len(ids) > objects:
            ids = np.sort(rng.choice(ids, size=objects, replace=False))
        if not len(ids):
            continue
        predictor.set_embedding(store.embedding(model, image))
        points = np.stack([interior_point(image.labels == i) for i in ids])
        result = predictor.predict_batch(points=points, multimask=True)
        best = result.scores.argmax(axis=1)
        chunks.append(
            torch.from_numpy(np.ascontiguousarray(result.logits[np.arange(len(ids)), best]))
        )
        scores.append(torch.from_numpy(np.asarray(result.scores, dtype=np.float32)))
    if not chunks:
        return torch.zeros((0, 256, 256)), torch.zeros((0, 3))
    return torch.cat(chunks), torch.cat(scores)


def stability_each(logits: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """(n,) stability score of each of ``scale * logits`` at segment-everything's offset.

    ``scale`` is a number or an (n,) tensor (one scale per mask).
    """
    flat = logits.reshape(len(logits), -1)
    offset = STABILITY_OFFSET / torch.as_tensor(scale, dtype=torch.float32).reshape(-1, 1)
    inner = (flat > offset).sum(dim=1, dtype=torch.int32).float()
    outer = (flat > -offset).sum(dim=1, dtype=torch.int32).float()
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(inner))


def fit_logit_scale(
    logits: torch.Tensor, base_stability: torch.Tensor, max_scale: float = MAX_SCALE
) -> float:
    """The scale that gives fine-tuned logits the stability of the base model's.

    For each prompt, the factor (between ``1 / max_scale`` and ``max_scale``) at which the
    fine-tuned mask is as stable as the base model's mask for the same prompt; the result
    is their median, clamped to [1, max_scale]. The median ignores the few prompts whose
    masks changed shape (or vanished), where no factor is meaningful; the mean stability
    is dominated by them (matching it asked for x6 where x2 restored segment-everything).

    Parameters
    ----------
    logits : torch.Tensor, shape (n, 256, 256)
        The fine-tuned model's logits (the shown masks of :func:`click_predictions`).
    base_stability : torch.Tensor, shape (n,)
        :func:`stability_each` of the base model's logits for the same prompts.

    Returns
    -------
    float
        1.0 when there are no prompts or the logits are as stable as the base model's.
    """
    if not len(logits):
        return 1.0
    low = torch.full((len(logits),), 1.0 / max_scale)
    high = torch.full((len(logits),), float(max_scale))
    for _ in range(24):  # stability grows with the scale; bisect each prompt in log space
        middle = (low * high).sqrt()
        below = stability_each(logits, middle) < base_stability
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return float(min(max(float(high.median()), 1.0), max_scale))


def apply_logit_scale(sam: torch.nn.Module, scale: float) -> None:
    """Multiply every mask logit of ``sam`` by ``scale`` (in place, through the hypernetworks)."""
    if scale == 1.0:
        return
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(scale)
            mlp.layers[-1].bias.mul_(scale)


def fit_iou_shift(
    scores: torch.Tensor, base_scores: torch.Tensor, threshold: float = IOU_THRESHOLD
) -> float:
    """The shift that lets as many candidates pass ``threshold`` as the base model's did.

    A head trained on a few images predicts their labels' IoU (about 0.8 where the labels'
    outlines differ from SAM's), so segment-everything's ``pred_iou_thresh`` rejects masks
    the released head passed. Adding one number to every prediction keeps their order (the
    mask a click shows) and restores the share of the base model's candidates, for the
    same clicks, at or above the threshold. When none or all of them passed, the medians
    are matched instead. At most :data:`MAX_IOU_SHIFT` either way.

    Parameters
    ----------
    scores, base_scores : torch.Tensor, shape (n, 3)
        Predicted IoUs of the fine-tuned and the base model for the same clicks.
    """
    if not len(scores):
        return 0.0
    tuned, base = scores.reshape(-1).float(), base_scores.reshape(-1).float()
    share = float((base >= threshold).float().mean())
    if 0.0 < share < 1.0:
        shift = threshold - float(torch.quantile(tuned, 1.0 - share))
    else:
        shift = float(base.median() - tuned.median())
    return float(min(max(shift, -MAX_IOU_SHIFT), MAX_IOU_SHIFT))


def apply_iou_shift(sam: torch.nn.Module, shift: float) -> None:
    """Add ``shift`` to every IoU ``sam`` predicts (in place, the IoU head's last bias)."""
    if shift == 0.0:
        return
    with torch.no_grad():
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(shift)


def passing_share(scores: torch.Tensor, shift: float = 0.0) -> float:
    """Share of candidates whose predicted IoU (plus ``shift``) passes :data:`IOU_THRESHOLD`."""
    if not len(scores):
        return float("nan")
    return float(((scores + shift) >= IOU_THRESHOLD).float().mean())


@dataclass(frozen=True)
class LogitCalibration:
    """What :func:`calibrate` measured and did (recorded in the model card)."""

    scale: float  # factor folded into the weights (1.0: nothing changed)
    prompts: int  # clicks measured, on the training images
    base_median: float  # median stability of the base model's masks for those clicks
    tuned_median: float  # ... of the fine-tuned model before scaling
    calibrated_median: float  # ... after scaling
    # added to every predicted IoU (0.0: the IoU head was frozen, or nothing to shift)
    iou_shift: float = 0.0
    iou_pass_base: float | None = None  # share of the base model's candidates >= 0.88
    iou_pass_tuned: float | None = None  # ... of the fine-tuned model's, before the shift
    iou_pass_calibrated: float | None = None  # ... after it

    def to_dict(self) -> dict:
        return {
            name: round(value, 4) if isinstance(value, float) else value
            for name, value in asdict(self).items()
        }


def calibrate(
    trainable,
    images: list[LabelledImage],
    base_stability: torch.Tensor,
    store: EmbeddingStore | None = None,
    seed: int = 0,
    base_scores: torch.Tensor | None = None,
) -> LogitCalibration:
    """Measure the fine-tuned ``trainable`` on the base model's prompts and fold the scale in.

    With ``base_scores`` (a trained IoU head) the IoU predictions are shifted too
    (:func:`fit_iou_shift`).

    Parameters
    ----------
    trainable : TrainableSam
        Changed in place (its hypernetworks' last layers).
    images : list of LabelledImage
        The images ``base_stability`` was measured on, in the same order.
    base_stability : torch.Tensor, shape (n,)
        :func:`stability_each` of the shown masks' logits (:func:`click_predictions`) of
        the base model, same ``seed``.
    base_scores : torch.Tensor, shape (n, 3), optional
        The base model's predicted IoUs for the same clicks (:func:`click_predictions`).
    """
    from napari_sam.training.network import inference_model

    logits, scores = click_predictions(inference_model(trainable), images, store, seed=seed)
    if len(logits) != len(base_stability):
        raise ValueError(
            f"{len(logits)} prompts now, {len(base_stability)} for the base model: "
            "calibrate on the images the base model was measured on."
        )
    scale = fit_logit_scale(logits, base_stability)
    apply_logit_scale(trainable.module, scale)
    shift = 0.0 if base_scores is None else fit_iou_shift(scores, base_scores)
    apply_iou_shift(trainable.module, shift)
    return LogitCalibration(
        scale=scale,
        prompts=len(logits),
        base_median=_median(base_stability),
        tuned_median=_median(stability_each(logits)),
        calibrated_median=_median(stability_each(logits, scale)),
        iou_shift=shift,
        iou_pass_base=None if base_scores is None else passing_share(base_scores),
        iou_pass_tuned=None if base_scores is None else passing_share(scores),
        iou_pass_calibrated=None if base_scores is None else passing_share(scores, shift),
    )


def _median(values: torch.Tensor) -> float:
    return float(values.median()) if len(values) else float("nan")
