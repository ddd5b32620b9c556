"""Fine-tuning that keeps what the base model knew: rehearsal, anchoring, weight mixing.

Fine-tuned on a few images of one domain, SAM's decoder forgets others: trained on
label-free whole cells, it lost about a tenth of its mean IoU on fluorescent nuclei
(issue 17). The known remedies built here, each a :class:`RetentionSettings` field:

- **Rehearsal** (``rehearsal``): a share of the steps draws its image from *rehearsal
  images* of the domains to keep (the reference domain, or the development nuclei when
  the user gives none), so the loss keeps asking for what the model already did.
  With ``rehearsal_targets="released"`` those steps train towards the released decoder's
  own outputs for the same prompts (:func:`released_decoder`, distillation as in
  "learning without forgetting", Li and Hoiem, ECCV 2016), which keeps a domain without
  learning its labels; with ``joint`` every step trains on one image of each kind.
  With ``adaptive`` the share follows the reference validation (:func:`adapt_rehearsal`):
  it falls while the domains to keep are safe and rises when they slip, so the user's
  domain gets the steps the constraint allows.
  Two options ask the released decoder for less than its masks on those steps (measured
  in docs/training.md, off by default): ``keep_iou_head`` trains the IoU head towards the
  released head's predictions while the masks follow the labels, and ``free_points``
  adds points drawn anywhere in the image (segment-everything's grid prompts, mostly on
  background) trained towards the released masks and IoUs.
- **The step guard** (``guard_steps``): the kept step is the best on the user's
  validation among the steps whose reference validation is within ``tolerance``
  (:meth:`~napari_sam.training.checkpoints.LoopState.observe`).
- **Anchoring** (``anchor``, L2-SP, Li et al., ICML 2018): the loss gains
  ``anchor / 2 * ||theta - theta_0||^2`` over the trained parameters, a pull back
  towards the released weights ``theta_0`` (added to the gradients, see
  :func:`add_anchor_gradients`).
- **Weight mixing** (``mix``, WiSE-FT, Wortsman et al., CVPR 2022): the saved weights are
  ``(1 - alpha) * theta_0 + alpha * theta_tuned``, with ``alpha`` chosen on both
  validation sets: the best user-domain validation score among the mixes whose
  reference validation score is at most ``tolerance`` below the released model's
  (:func:`choose_mix`). ``alpha = 0`` (the released weights) always qualifies, so on the
  validation images the reference constraint holds by construction.

docs/training.md measures each on two domain pairs and says which are on by default.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from napari_sam.errors import InvalidInputError
from napari_sam.training.config import ADAPTIVE_SHARES, RetentionSettings
from napari_sam.training.datasets import LabelledImage, split_images


def trained_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train (``requires_grad``), by name."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def adapt_rehearsal(
    share: float, reference: float | None, base: float | None, settings: RetentionSettings
) -> float:
    """The rehearsal share after a validation that measured ``reference`` (adaptive).

    With the released model's ``base`` score and ``t = settings.tolerance``: halved while
    ``reference`` is more than ``2 t`` above ``base`` (safe), kept from ``base`` to
    ``base + 2 t``, doubled below ``base`` (slipping, before the step guard would reject
    the step) and set to the most below ``base - t`` (forgetting). Always within
    :data:`~napari_sam.training.config.ADAPTIVE_SHARES`. Unchanged without the setting or
    without a reference measurement.
    """
    if not settings.adaptive or reference is None or base is None or share <= 0:
        return share
    low, high = ADAPTIVE_SHARES
    if reference > base + 2 * settings.tolerance:
        return max(share / 2, low)
    if reference < base - settings.tolerance:
        return high
    if reference < base:
        return min(share * 2, high)
    return share


def add_anchor_gradients(
    module: torch.nn.Module, initial: dict[str, torch.Tensor], weight: float
) -> None:
    """Add the L2-SP gradient ``weight * (theta - theta_0)`` to each trained parameter."""
    if weight <= 0:
        return
    for name, parameter in module.named_parameters():
        if name in initial and parameter.grad is not None:
            parameter.grad.add_(parameter.detach() - initial[name], alpha=weight)


@dataclass(frozen=True)
class ReleasedDecoder:
    """Frozen copies of the released prompt encoder and mask decoder (distilled rehearsal)."""

    prompt_encoder: torch.nn.Module
    mask_decoder: torch.nn.Module


def needs_released_decoder(rehearsal: list, config) -> bool:
    """Whether rehearsal steps ask anything of the released decoder (``config``: a
    TrainingConfig): its masks, its IoU scale, or its outputs at free points."""
    retention = config.retention
    if not rehearsal:
        return False
    keeps_iou = retention.keep_iou_head and not config.freeze_iou_head
    return retention.rehearsal_targets == "released" or keeps_iou or retention.free_points > 0


def released_decoder(sam: torch.nn.Module, initial: dict[str, torch.Tensor]) -> ReleasedDecoder:
    """The prompt encoder and mask decoder of ``sam`` with the released weights ``initial``.

    ``initial`` holds the trained tensors before the first step (the rest never changes),
    so a resumed run gets the same teacher. While the encoder trains, the teacher decodes
    the trained encoder's embedding: close to, not exactly, the released outputs.
    """
    parts = []
    for name in ("prompt_encoder", "mask_decoder"):
        part = copy.deepcopy(getattr(sam, name))
        prefix = f"{name}."
        released = {k.removeprefix(prefix): v for k, v in initial.items() if k.startswith(prefix)}
        part.load_state_dict(released, strict=False)
        part.eval().requires_grad_(False)
        parts.append(part)
    return ReleasedDecoder(*parts)


def blend(
    initial: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * initial + alpha * tuned`` for every tensor of ``tuned``."""
    return {name: torch.lerp(initial[name], value, alpha) for name, value in tuned.items()}


# the IoU head's tensors: the token it reads and the MLP that turns it into scores
IOU_HEAD_PREFIXES = ("mask_decoder.iou_token.", "mask_decoder.iou_prediction_head.")


def mix_iou_head(module: torch.nn.Module, initial: dict[str, torch.Tensor], alpha: float) -> None:
    """Keep ``alpha`` of the IoU head's change since ``initial`` (the released tensors).

    Applied to the saved weights after the calibration, so the IoU shift folded into the
    head's last bias is kept in the same share. Nothing changes at ``alpha = 1`` or when
    ``initial`` holds no IoU head tensors (the head was frozen).
    """
    names = [name for name in initial if name.startswith(IOU_HEAD_PREFIXES)]
    if alpha >= 1.0 or not names:
        return
    current = module.state_dict()
    mixed = {name: torch.lerp(initial[name], current[name], alpha) for name in names}
    module.load_state_dict(mixed, strict=False)


@dataclass(frozen=True)
class MixChoice:
    """The chosen mix and what each measured mix scored on validation."""

    alpha: float  # weight of the fine-tuned weights (0: released, 1: as fine-tuned)
    scores: tuple[tuple[float, float, float], ...]  # (alpha, user, reference) per mix

    @property
    def user(self) -> float:
        """User-domain validation score of the chosen mix."""
        return next(u for a, u, _ in self.scores if a == self.alpha)

    @property
    def reference(self) -> float:
        """Reference validation score of the chosen mix."""
        return next(r for a, _, r in self.scores if a == self.alpha)

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "scores": [{"alpha": a, "validation": u, "reference": r} for a, u, r in self.scores],
        }


def choose_mix(
    score: Callable[[], tuple[float, float]],
    load: Callable[[float], None],
    settings: RetentionSettings,
    known: dict[float, tuple[float, float]] | None = None,
    min_improvement: float = 0.0,
) -> MixChoice:
    """Measure each mix of the grid and pick one (module docstring); the pick stays loaded.

    Parameters
    ----------
    score : callable
        ``score() -> (user, reference)``: validation scores of the weights now loaded.
    load : callable
        ``load(alpha)`` loads the mix ``alpha`` into the network.
    settings : RetentionSettings
    known : dict, optional
        Scores already measured, by alpha (the released model's at 0, the kept weights' at
        1), not measured again.
    min_improvement : float
        A larger alpha is chosen only when it gains more than this on the user's domain.

    Returns
    -------
    MixChoice
    """
    measured = dict(known or {})
    for alpha in sorted(set(settings.mix_grid) | {0.0}):
        if alpha not in measured:
            load(alpha)
            measured[alpha] = score()
    floor = measured[0.0][1] - settings.tolerance
    best = 0.0
    for alpha in sorted(measured):
        user, reference = measured[alpha]
        if reference >= floor and user > measured[best][0] + min_improvement:
            best = alpha
    load(best)
    return MixChoice(best, tuple((a, float(u), float(r)) for a, (u, r) in sorted(measured.items())))


def domains_to_keep(
    keep: list[LabelledImage] | None = None, seed: int = 0
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(rehearsal images, reference validation images) of the domains the model must keep.

    ``keep`` (labelled images of those domains) is split by whole images into halves;
    without it, the development nuclei of docs/training.md (BBBC007 and cells3d planes,
    their training and validation splits; fetched on first use) stand in for what the
    released model already does well.

    Raises
    ------
    InvalidInputError
        ``keep`` holds fewer than two whole images (or blocks of planes).
    DownloadError
        No ``keep`` and the development images are not cached and cannot be fetched.
    """
    if keep:
        if len({image.group for image in keep}) < 2:
            raise InvalidInputError(
                "The images to keep need at least two whole images (or two blocks of 5 "
                "planes of a volume): half rehearse, half check the mix. Give more images, "
                "or train without images to keep."
            )
        return split_images(keep, 0.5, seed)
    from napari_sam.training.development_data import development_splits

    splits = development_splits()
    return splits.train, splits.validation


def saved_scores(result) -> tuple[float, float | None] | None:
    """Validation scores (your objects, domains to keep) of a ``TrainingResult``'s saved weights.

    None when the run had no validation images.
    """
    if result.mix is not None:
        return result.mix.user, result.mix.reference
    kept = next((h for h in result.history if h["step"] == result.best_step), None)
    if kept is None or kept.get("validation") is None:
        return None
    return kept["validation"], kept.get("reference_validation")


def outcome_text(result) -> str:
    """The two numbers to read before using new weights: your objects, the domains to keep.

    Validation mean IoU of the released and the saved weights, from a ``TrainingResult``.
    """
    base, saved = result.base_scores or {}, saved_scores(result)
    if saved is None or base.get("validation") is None:
        return (
            "No validation: commit objects in at least 3 planes or images to measure the "
            "new weights before using them."
        )
    lines = [
        f"Your objects (validation): {base['validation']:.3f} -> {saved[0]:.3f} "
        f"({saved[0] - base['validation']:+.3f})."
    ]
    if saved[1] is not None and base.get("reference") is not None:
        lines.append(
            f"Domains to keep (development nuclei): {base['reference']:.3f} -> {saved[1]:.3f} "
            f"({saved[1] - base['reference']:+.3f})."
        )
    if result.mix is not None:
        lines.append(f"Saved: {result.mix.alpha:.2f} of the trained change kept (mix).")
    if result.everything is not None:
        from napari_sam.training.everything_guard import everything_text

        lines.append(everything_text(result.everything))
    return " ".join(lines)
