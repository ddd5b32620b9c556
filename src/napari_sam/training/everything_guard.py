"""Keep segment-everything on the domains to keep: the last check of a training run.

The mix (:func:`~napari_sam.training.retention.choose_mix`) keeps the domains to keep
within tolerance on *clicks and boxes*. Segment-everything asks more of the decoder: its
prompts are a grid over the whole image, most of them off any object, and a mask counts
only if its predicted IoU and its stability pass fixed thresholds. Weights that keep the
clicks can still lose it (docs/training.md, issue 17): trained on label-free cells, the
nuclei kept their clicks but segment-everything's AP@0.5 fell 0.435 -> 0.387; trained on
nuclei, the label-free cells' fell 0.112 -> 0.105 while their clicks gained, the decoder
now proposing nucleus-sized parts of cells.

So :func:`keep_everything` measures segment-everything (default settings, AP@0.5) on the
reference validation images with the weights about to be saved and with the released
weights. When the saved weights lose more than ``everything_tolerance``, it steps down
the mix grid, from the chosen alpha towards the released weights, through the mixes that
kept the clicks, and saves the first that keeps segment-everything too (each mix is
calibrated as the saved weights are). The released weights, alpha 0, always qualify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari_sam.training.config import EvaluationSettings

if TYPE_CHECKING:
    from napari_sam.training.embeddings import EmbeddingStore

# segment-everything with its default settings; one click on one object per image, so the
# interactive part of the evaluation costs next to nothing
EVERYTHING = EvaluationSettings(clicks=1, max_objects=1, point_negative=False, automatic=True)
# Shares of the trained IoU head's change tried at each mix (times ``iou_head_mix``), when the
# head trained. The one IoU shift that lets your objects pass segment-everything's threshold
# over-passes nuclei kept: on their validation images a quarter of the head kept their AP
# where half did not (docs/training.md); the weights' mix cannot do that (every mix of the
# whole change lost 0.07-0.09 there), so both are stepped.
HEAD_SHARES = (1.0, 0.5, 0.25)

Mix = tuple[float, float]  # (alpha of the weights' change, share of the IoU head's change)


@dataclass(frozen=True)
class EverythingCheck:
    """Segment-everything AP@0.5 on the reference validation images, released and saved."""

    released: float  # the released weights' AP@0.5
    tolerance: float  # the AP the saved weights may lose
    tried: tuple[tuple[float, float, float], ...]  # (alpha, head share, AP@0.5), in order
    alpha: float  # the mix saved (0: the released weights)
    head_share: float = 1.0  # the share of the IoU head's change saved, times iou_head_mix
    seconds: float = 0.0  # wall time of the check
    # the same on your validation images, released and saved (measured, not constrained)
    yours: tuple[float, float] | None = None

    @property
    def saved(self) -> float:
        """AP@0.5 of the saved weights."""
        for alpha, share, ap in self.tried:
            if (alpha, share) == (self.alpha, self.head_share):
                return ap
        return self.released

    @property
    def stepped_down(self) -> bool:
        """Whether the check saved other weights than the mix the clicks chose."""
        return bool(self.tried) and self.tried[0][:2] != (self.alpha, self.head_share)

    def to_dict(self) -> dict:
        return {
            "released_ap50": self.released,
            "saved_ap50": self.saved,
            "tolerance": self.tolerance,
            "alpha": self.alpha,
            "head_share": self.head_share,
            "tried": [{"alpha": a, "head_share": h, "ap50": ap} for a, h, ap in self.tried],
            "seconds": self.seconds,
            "yours_released_ap50": None if self.yours is None else self.yours[0],
            "yours_saved_ap50": None if self.yours is None else self.yours[1],
        }


def everything_ap(trainable, images, store: EmbeddingStore | None) -> float:
    """Mean segment-everything AP@0.5 (default settings) of the weights now loaded."""
    from napari_sam.training.evaluation import evaluate
    from napari_sam.training.network import inference_model

    if not images:
        return 0.0
    report = evaluate(inference_model(trainable), list(images), EVERYTHING, store)
    return float(report.automatic_ap[0.5])


def step_down(
    candidates: list[Mix],
    measure: Callable[[Mix], float],
    released: float,
    tolerance: float,
) -> tuple[Mix, tuple[tuple[float, float, float], ...]]:
    """The first of ``candidates`` whose AP is within ``tolerance`` of ``released``.

    Parameters
    ----------
    candidates : list of (alpha, head share)
        In the order to try: the chosen mix first.
    measure : callable
        ``measure(candidate)`` loads those weights as they would be saved; returns the AP.
    released, tolerance : float

    Returns
    -------
    saved : (alpha, head share)
        ``(0.0, 1.0)``, the released weights, when no candidate qualifies.
    tried : tuple of (alpha, head share, AP)
    """
    tried = []
    for candidate in candidates:
        ap = measure(candidate)
        tried.append((*candidate, ap))
        if ap >= released - tolerance:
            return candidate, tuple(tried)
    return (0.0, 1.0), tuple(tried)


def candidate_mixes(mix, tolerance: float, head_shares=(1.0,)) -> list[Mix]:
    """What the check may save, in order, from ``mix``'s choice down (a ``MixChoice``).

    The mixes that kept the clicks on the reference validation images (the mix's own
    constraint, ``tolerance`` below the released weights' score) and are not above the
    chosen alpha, largest first, each with ``head_shares`` in turn. The released weights
    (alpha 0) are left out: they need no measurement.
    """
    released_reference = next(r for a, _, r in mix.scores if a == 0.0)
    floor = released_reference - tolerance
    alphas = [
        alpha
        for alpha, _, reference in sorted(mix.scores, reverse=True)
        if 0.0 < alpha <= mix.alpha and reference >= floor
    ]
    return [(alpha, share) for alpha in alphas for share in head_shares]


def everything_text(check: EverythingCheck) -> str:
    """One line for the CLI and the widget: segment-everything on the domains to keep."""
    text = (
        f"Segment-everything on the domains to keep (validation AP@0.5): released "
        f"{check.released:.3f}, saved {check.saved:.3f}"
    )
    if check.stepped_down:
        lost = ", ".join(
            f"{ap:.3f} at {a:.2f}" + (f" (IoU head x{h:g})" if h != 1.0 else "")
            for a, h, ap in check.tried
            if (a, h) != (check.alpha, check.head_share)
        )
        saved = (
            "the released weights"
            if check.alpha == 0.0
            else f"{check.alpha:.2f} of the trained change"
            + (
                f", {check.head_share:g} of the IoU head's change"
                if check.head_share != 1.0
                else ""
            )
        )
        text += f"; stepped down to {saved} ({lost} lost more than {check.tolerance})"
    if check.yours is not None:
        released, saved = check.yours
        text += f". On your validation images: released {released:.3f}, saved {saved:.3f}"
    return text + "."
