"""The SAM training losses: focal + dice on the best mask, MSE on the IoU head.

Kirillov et al., "Segment Anything" (ICCV 2023), section 3 and appendix A: masks are
supervised with a linear combination of focal loss (Lin et al., ICCV 2017) and dice loss
(Milletari et al., 3DV 2016) in a 20:1 ratio; when the decoder returns several candidate
masks, only the one with the lowest loss is back-propagated; the IoU head regresses the
true IoU of each mask with a mean-squared error. All work on SAM's low-resolution
(256 x 256) logits against targets in the same frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_sam.training.config import LossWeights

FOCAL_ALPHA = 0.25  # weight of the positive class (Lin et al.'s default)
FOCAL_GAMMA = 2.0  # focusing exponent (Lin et al.'s default)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid focal loss per mask.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, K, H, W)
    targets : torch.Tensor, shape (B, 1, H, W), values 0 or 1

    Returns
    -------
    torch.Tensor, shape (B, K)
    """
    targets = targets.expand_as(logits)
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = probability * targets + (1 - probability) * (1 - targets)
    alpha = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return (alpha * cross_entropy * (1 - p_true) ** FOCAL_GAMMA).mean(dim=(2, 3))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss per mask, ``1 - (2|P.T| + s) / (|P| + |T| + s)``; shapes as
    :func:`focal_loss`.
    """
    probability = torch.sigmoid(logits)
    targets = targets.expand_as(logits)
    overlap = (probability * targets).sum(dim=(2, 3))
    total = probability.sum(dim=(2, 3)) + targets.sum(dim=(2, 3))
    return 1 - (2 * overlap + smooth) / (total + smooth)


@torch.no_grad()
def true_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each thresholded mask (logit > 0) with its target, (B, K) -> (B, K)."""
    predicted = logits > 0
    truth = targets.expand_as(logits) > 0.5
    intersection = (predicted & truth).sum(dim=(2, 3)).float()
    union = (predicted | truth).sum(dim=(2, 3)).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def banded_iou(logits: torch.Tensor, targets: torch.Tensor, band: int) -> torch.Tensor:
    """IoU that ignores ``band`` pixels at each side of the target's boundary, (B, K).

    Hand-drawn labels and SAM's masks disagree at the boundary by a pixel or two, so the
    plain IoU of a mask that follows a nucleus is about 0.76, while the released IoU head
    predicts about 0.97 for it: its scale (set on SA-1B) is close to the IoU outside a
    thin band at the boundary (on the development nuclei, the IoU outside 2 image pixels
    is 0.97 too). Trained towards this IoU, the IoU head keeps the released scale, which
    segment-everything's ``pred_iou_thresh`` assumes. A target whose interior vanishes
    within the band (objects under ``2 * band + 1`` pixels across) keeps the plain IoU.
    """
    if band <= 0:
        return true_iou(logits, targets)
    truth = (targets > 0.5).float()
    size = 2 * band + 1
    grown = F.max_pool2d(truth, size, stride=1, padding=band) > 0
    core = F.max_pool2d(1 - truth, size, stride=1, padding=band) == 0
    kept = ~(grown & ~core)
    predicted, inside = logits > 0, truth > 0
    intersection = (predicted & inside & kept).sum(dim=(2, 3)).float()
    union = ((predicted | inside) & kept).sum(dim=(2, 3)).float()
    banded = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    has_core = core.flatten(1).any(dim=1, keepdim=True)
    return torch.where(has_core, banded, true_iou(logits, targets))


@dataclass(frozen=True)
class PromptLoss:
    """The loss of one prompting iteration and its parts (parts detached, as floats)."""

    total: torch.Tensor  # scalar with grad: weighted mask loss + IoU loss (if weighted)
    mask: float  # focal*w + dice*w of the best masks, batch mean
    iou: float  # MSE of the IoU head (measured even when its weight is 0)
    best: torch.Tensor  # (B,) int64 index of the lowest-loss candidate per object
    best_iou: float  # mean true IoU of the chosen masks


def prompt_loss(
    logits: torch.Tensor,
    predicted_iou: torch.Tensor,
    targets: torch.Tensor,
    weights: LossWeights = LossWeights(),
    iou_targets: torch.Tensor | None = None,
) -> PromptLoss:
    """Loss of the decoder's candidates for a batch of objects.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, K, 256, 256)
        K = 3 candidates for one ambiguous point, else 1.
    predicted_iou : torch.Tensor, shape (B, K)
    targets : torch.Tensor, shape (B, 1, 256, 256)
    weights : LossWeights
    iou_targets : torch.Tensor, shape (B, K), optional
        What the IoU head should predict instead of the candidates' true IoU: the
        released head's predictions on rehearsal steps that keep its scale
        (``RetentionSettings.keep_iou_head``).

    Returns
    -------
    PromptLoss
    """
    per_mask = weights.focal * focal_loss(logits, targets) + weights.dice * dice_loss(
        logits, targets
    )
    best = per_mask.detach().argmin(dim=1)
    rows = torch.arange(len(best), device=best.device)
    mask_term = per_mask[rows, best].mean()
    actual = true_iou(logits.detach(), targets)
    if iou_targets is None:
        iou_targets = banded_iou(logits.detach(), targets, weights.iou_band)
    iou_term = F.mse_loss(predicted_iou, iou_targets)
    # With a frozen IoU head the term is left out of the graph, not multiplied by 0: its
    # gradient would still reach the transformer that the IoU token passes through.
    total = mask_term + weights.iou * iou_term if weights.iou else mask_term
    return PromptLoss(
        total=total,
        mask=float(mask_term.detach()),
        iou=float(iou_term.detach()),
        best=best,
        best_iou=float(actual[rows, best].mean()),
    )


def distillation_loss(
    logits: torch.Tensor,
    predicted_iou: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_iou: torch.Tensor,
    weights: LossWeights = LossWeights(),
) -> PromptLoss:
    """Loss that asks for the released model's outputs: rehearsal that only keeps.

    Each candidate mask is scored (focal + dice, weighted as the task loss) against the
    same candidate of the released decoder, thresholded at 0, and the IoU head against
    the released IoU head; every candidate counts, not only the best, since all three
    are what the released model did. Shapes as :func:`prompt_loss`, the teacher's equal
    to the student's.
    """
    targets = (teacher_logits > 0).float()
    per_mask = weights.focal * focal_loss(logits, targets) + weights.dice * dice_loss(
        logits, targets
    )
    mask_term = per_mask.mean()
    iou_term = F.mse_loss(predicted_iou, teacher_iou)
    total = mask_term + weights.iou * iou_term if weights.iou else mask_term
    actual = true_iou(logits.detach(), targets)
    return PromptLoss(
        total=total,
        mask=float(mask_term.detach()),
        iou=float(iou_term.detach()),
        best=torch.zeros(len(logits), dtype=torch.int64, device=logits.device),
        best_iou=float(actual.mean()),
    )
