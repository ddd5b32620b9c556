"""Simulated interactive prompting, the SAM paper's training recipe.

Kirillov et al., "Segment Anything" (ICCV 2023), appendix A "Training algorithm": the
first prompt of an object is, with equal probability, one foreground point drawn
uniformly from its mask or its box with noise (standard deviation 10% of the box side,
at most 20 pixels) on each corner coordinate. Each later point is drawn uniformly from
the error region between the previous prediction and the truth, positive on a false
negative and negative on a false positive, and the previous mask logits are fed back as
a dense prompt. Two iterations add no point (one at random, one last), so the model
learns to refine from its own mask; 11 iterations in all in the paper
(:data:`~napari_sam.training.steps.PAPER_PROMPTS`), one by default. Coordinates here
are SAM's (x, y) in encoder-input pixels; a low-resolution logit at (row, col) covers
input pixels [4 row, 4 row + 4) x [4 col, 4 col + 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_sam.errors import InvalidInputError

NOT_A_POINT = -1  # prompt encoder label for a placeholder token


@dataclass(frozen=True, eq=False)
class PromptState:
    """The prompts of a batch of objects at one iteration."""

    points: torch.Tensor | None  # (B, K, 2) float32 (x, y) encoder pixels, or None
    labels: torch.Tensor | None  # (B, K) int64: 1 object, 0 background, -1 placeholder
    boxes: torch.Tensor | None  # (B, 4) float32 (x0, y0, x1, y1), or None
    mask_logits: torch.Tensor | None  # (B, 1, 256, 256) previous logits, detached

    @property
    def single_point(self) -> bool:
        """True for one point alone: the ambiguous case with three candidate masks."""
        return self.boxes is None and self.mask_logits is None and self.points.shape[1] == 1


def iteration_plan(iterations: int, quiet_iterations: int, rng: np.random.Generator) -> list[bool]:
    """Whether each iteration after the first adds a point (False: mask fed back only).

    Parameters
    ----------
    iterations : int
        All iterations, the first prompt included (the paper's 11).
    quiet_iterations : int
        Iterations without a new point (the paper's 2): the last one, and the others
        at random positions.

    Returns
    -------
    list of bool, length ``iterations - 1``
    """
    if iterations < 1 or not 0 <= quiet_iterations <= max(iterations - 1, 0):
        raise InvalidInputError(
            f"Need iterations >= 1 and 0 <= quiet iterations <= iterations - 1; got "
            f"{iterations} and {quiet_iterations}."
        )
    plan = [True] * (iterations - 1)
    if quiet_iterations:
        plan[-1] = False
        others = (
            rng.choice(iterations - 2, size=quiet_iterations - 1, replace=False)
            if iterations > 2
            else []
        )
        for index in others:
            plan[int(index)] = False
    return plan


def first_prompts(
    targets: torch.Tensor,
    boxes: torch.Tensor,
    use_box: bool,
    rng: np.random.Generator,
    box_noise: float = 0.1,
    max_box_noise: float = 20.0,
    input_size: tuple[int, int] = (1024, 1024),
) -> PromptState:
    """The first prompt of each object: one foreground point or a noisy box.

    Parameters
    ----------
    targets : torch.Tensor, shape (B, 1, 256, 256), 0/1
    boxes : torch.Tensor, shape (B, 4), exact (x0, y0, x1, y1) boxes
    use_box : bool
        Boxes for the whole batch, else points.
    box_noise : float
        Noise standard deviation as a fraction of the box side.
    max_box_noise : float
        Noise clipped to this many encoder pixels.
    input_size : (int, int)
        (h, w) of the resized image, to keep noisy boxes inside it.
    """
    if use_box:
        sides = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1)
        noise = torch.from_numpy(rng.normal(size=boxes.shape)).float() * box_noise * sides
        noisy = boxes + noise.clamp(-max_box_noise, max_box_noise)
        h, w = input_size
        noisy[:, 0::2] = noisy[:, 0::2].clamp(0, w - 1)
        noisy[:, 1::2] = noisy[:, 1::2].clamp(0, h - 1)
        low, high = (
            torch.minimum(noisy[:, :2], noisy[:, 2:]),
            torch.maximum(noisy[:, :2], noisy[:, 2:]),
        )
        return PromptState(None, None, torch.cat([low, high], dim=1), None)
    xy = torch.stack([_uniform_pixel(t[0] > 0.5, rng) for t in targets])
    points = low_res_to_xy(xy, rng)[:, None, :]
    return PromptState(points, torch.ones((len(targets), 1), dtype=torch.int64), None, None)


def error_points(
    predicted: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective point per object, uniform over its error region.

    Parameters
    ----------
    predicted : torch.Tensor, shape (B, 256, 256) bool
    targets : torch.Tensor, shape (B, 256, 256) bool
    valid : torch.Tensor, shape (256, 256) bool
        Low-res pixels inside the image; the padding never receives points.

    Returns
    -------
    points : torch.Tensor, shape (B, 2) float32 (x, y) encoder pixels
    labels : torch.Tensor, shape (B,) int64
        1 on a missed object pixel, 0 on a false positive, -1 (placeholder at (0, 0))
        when the prediction has no error left.
    """
    errors = (predicted ^ targets) & valid
    cells, labels = [], []
    for error, target in zip(errors, targets):
        if error.any():
            cell = _uniform_pixel(error, rng)
            cells.append(cell)
            labels.append(int(target[cell[0], cell[1]]))
        else:
            cells.append(torch.zeros(2, dtype=torch.int64))
            labels.append(NOT_A_POINT)
    points = low_res_to_xy(torch.stack(cells), rng)
    labels_tensor = torch.tensor(labels, dtype=torch.int64)
    points[labels_tensor == NOT_A_POINT] = 0.0
    return points, labels_tensor


def add_point(
    state: PromptState, points: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor
) -> PromptState:
    """The next iteration's prompts: one more point per object and the fed-back logits."""
    if state.points is None:
        new_points, new_labels = points[:, None], labels[:, None]
    else:
        new_points = torch.cat([state.points, points[:, None]], dim=1)
        new_labels = torch.cat([state.labels, labels[:, None]], dim=1)
    return PromptState(new_points, new_labels, state.boxes, logits)


def feed_back(state: PromptState, logits: torch.Tensor) -> PromptState:
    """The next iteration's prompts without a new point: only the logits change."""
    return PromptState(state.points, state.labels, state.boxes, logits)


def low_res_to_xy(cells: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B, 2) (row, col) low-res cells -> (B, 2) (x, y) at a random input pixel inside."""
    offset = torch.from_numpy(rng.integers(0, 4, size=cells.shape)).float()
    rc = cells.float() * 4 + offset
    return rc.flip(-1)


def _uniform_pixel(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(2,) int64 (row, col) of a uniformly chosen True pixel of a (H, W) mask."""
    flat = torch.nonzero(mask.reshape(-1)).reshape(-1)
    index = flat[int(rng.integers(0, len(flat)))]
    return torch.stack([index // mask.shape[1], index % mask.shape[1]])
