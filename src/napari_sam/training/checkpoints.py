"""Resumable training state: the loop's counters and randomness, saved with the weights.

``checkpoint.pt`` holds the full state dict, the optimizer state, the step, the random
generators, the history and the best weights so far; it loads with
``torch.load(weights_only=True)`` (plain tensors, numbers, strings, lists and dicts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_sam.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1
# Settings that decide which parameters the optimizer holds: a resumed run must keep them.
# Checkpoints from before freeze_iou_head existed trained the IoU head.
OPTIMIZED_PARTS = {"trainable": None, "encoder_blocks": None, "freeze_iou_head": False}


@dataclass
class LoopState:
    """The mutable state of a training run (owned by the loop)."""

    step: int  # steps done
    rng: np.random.Generator  # draws images, objects and prompts
    history: list[dict] = field(default_factory=list)  # one record per step
    best_score: float | None = None  # best validation mean IoU (among guarded steps, if any)
    best_step: int = 0  # step of best_score
    best_state: dict | None = None  # trainable tensors at best_step
    stale: int = 0  # validations since the last improvement
    base_stability: list[float] | None = None  # base model's stability per calibration click
    base_iou_scores: list[list[float]] | None = None  # its 3 predicted IoUs per click
    rehearsal_share: float | None = None  # adaptive rehearsal's share now (None: the setting)
    initial_state: dict | None = None  # trained tensors before the first step (anchor, mix)
    base_scores: dict | None = None  # the released model's validation scores (step 0)
    # whether best_step kept the reference validation within tolerance (True without a guard)
    best_within: bool = True

    @classmethod
    def fresh(cls, seed: int) -> LoopState:
        return cls(step=0, rng=np.random.default_rng(seed))

    def observe(
        self,
        score: float,
        module: torch.nn.Module,
        min_improvement: float,
        within: bool = True,
    ) -> None:
        """Record a validation score; keep a copy of the trainable weights when it is the best.

        ``within`` says whether these weights keep the domains to keep (their reference
        validation within tolerance). A step within tolerance beats any step outside it;
        among steps alike, the higher score wins by more than ``min_improvement``. So the
        kept weights are the best of the user's domain among those that forget nothing,
        and the best overall only when every step forgot.
        """
        if (
            self.best_score is None
            or (within and not self.best_within)
            or (within == self.best_within and score > self.best_score + min_improvement)
        ):
            self.best_score, self.best_step, self.stale = score, self.step, 0
            self.best_within = within
            self.best_state = {
                name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad
            }
        else:
            self.stale += 1


def save_checkpoint(
    path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: LoopState, config
) -> Path:
    """Write everything needed to resume, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "step": state.step,
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": state.rng.bit_generator.state,
        "history": state.history,
        "best_score": state.best_score,
        "best_step": state.best_step,
        "best_state": state.best_state,
        "stale": state.stale,
        "config": config.to_dict(),
        "base_stability": state.base_stability,
        "base_iou_scores": state.base_iou_scores,
        "rehearsal_share": state.rehearsal_share,
        "initial_state": state.initial_state,
        "base_scores": state.base_scores,
        "best_within": state.best_within,
    }
    temporary = path.with_name(f".{path.name}.part")
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return path


def load_checkpoint(
    path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, config=None
) -> LoopState:
    """Restore weights and optimizer in place; return the loop state to continue from.

    Parameters
    ----------
    path : pathlib.Path
    module : torch.nn.Module
        The network, built as when the checkpoint was saved.
    optimizer : torch.optim.Optimizer
        Over the parameters that ``config`` trains.
    config : TrainingConfig, optional
        The resumed run's settings: its trained parts (``trainable``, ``encoder_blocks``,
        ``freeze_iou_head``) must be those of the checkpoint.

    Raises
    ------
    CheckpointError
        The file is unreadable or not a napari-sam training checkpoint, or it was made
        with other trainable parts (its optimizer state does not fit).
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise CheckpointError(f"Cannot read training checkpoint {path}: {error}.") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-sam training checkpoint (format {FORMAT}).")
    if config is not None:
        _check_parts(path, payload["config"], config.to_dict())
    module.load_state_dict(payload["module"])
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except ValueError as error:
        raise CheckpointError(
            f"{path} was saved while training other parts of the model "
            f"({payload['config'].get('trainable')}): resume with the same --trainable. ({error})"
        ) from error
    rng = np.random.default_rng()
    rng.bit_generator.state = payload["rng"]
    return LoopState(
        step=payload["step"],
        rng=rng,
        history=list(payload["history"]),
        best_score=payload["best_score"],
        best_step=payload["best_step"],
        best_state=payload["best_state"],
        stale=payload["stale"],
        base_stability=payload.get("base_stability"),  # absent before calibration existed
        base_iou_scores=payload.get("base_iou_scores"),  # absent before IoU calibration
        rehearsal_share=payload.get("rehearsal_share"),  # absent before adaptive rehearsal
        initial_state=payload.get("initial_state"),  # absent before retention existed
        base_scores=payload.get("base_scores"),
        best_within=payload.get("best_within", True),  # absent before the step guard existed
    )


def _check_parts(path: Path, saved: dict, current: dict) -> None:
    """Refuse to resume with other trained parameters than the checkpoint's."""
    names = [
        name
        for name in OPTIMIZED_PARTS
        if name != "encoder_blocks" or current["trainable"] == "encoder-last"
    ]
    changed = [
        f"{name}={saved.get(name, OPTIMIZED_PARTS[name])!r} (now {current[name]!r})"
        for name in names
        if saved.get(name, OPTIMIZED_PARTS[name]) != current[name]
    ]
    if changed:
        raise CheckpointError(
            f"{path} was saved while training other parts of the model: {', '.join(changed)}. "
            "Resume with the checkpoint's settings (--trainable, --encoder-blocks, "
            "--freeze-iou-head/--train-iou-head), or start a new run in another folder."
        )
