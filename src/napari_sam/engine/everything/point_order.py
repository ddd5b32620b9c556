"""Which grid points segment-everything decodes, and in what order.

Decoding a grid point costs a decoder pass; most points of a sparse microscopy image add
nothing (they sit in the background, or inside an object already found). Two rules save
that work, both of which check themselves on the image at hand instead of trusting a
threshold tuned elsewhere:

* **Coverage**: a point inside a confident, object-sized mask found earlier, or within
  ``skip_distance`` pixels of one, is not decoded; the object there is found. A mask
  covers only cells within ``COVER_REACH`` equivalent radii of its own prompt, so a mask of
  two touching nuclei leaves the far one its grid points, and background-sized masks cover
  nothing.
* **Ranked decoding with a stop rule**: after a coarse warm-up, a logistic regression is
  fitted, on this image alone, from the image-embedding vector at each decoded point to
  whether that point found an object. The undecoded points are decoded most-promising
  first, refitting after every batch, and decoding stops once ``stop_after_empty`` points
  in a row, taken in that order, found nothing. An object is lost only if the image's own
  classifier ranks it below that many empty points, so a dim nucleus, which ranks below
  bright ones but above the background, is still decoded; an image where the classifier
  learns nothing useful decodes more, not less.

The replaced rule (skip a point whose embedding was nearer to an empty point's than to any
object point's, by a fixed margin) lost up to 95% of the nuclei on images unlike the ones
it was tuned on (docs/everything.md, "Images it was never tuned on").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.engine.prediction import prompts
from napari_sam.engine.prediction.results import Embedding

LOW_RES_STRIDE = 4  # encoder-frame pixels per low-resolution logit
WARMUP = 16  # the coarse 4 x 4 grid, decoded first, in grid order
RIDGE = 1.0  # L2 penalty of the per-image logistic regression (features are unit vectors)
MAX_EXAMPLES = 256  # per class: fitting stays a few milliseconds on dense images
NEIGHBOURHOOD = 3  # patches (a side) around a point whose best score ranks it
COVER_REACH = 1.5  # a mask covers cells within this many equivalent radii of its prompt
MIN_AUC = 0.9  # cross-validated separation the classifier needs before the stop rule may fire


class GridState:
    """What decoding has learnt about a view's grid so far, and which points come next.

    Parameters
    ----------
    embedding : Embedding
        The view's embedding (its vectors at the grid points are the classifier's features).
    local : numpy.ndarray, shape (P, 2) float64
        Grid points in window (row, col) pixels, coarse sub-grids first.
    settings : EverythingSettings
    device : torch.device
        The decoder's; coverage and vectors live there, only small decisions come back.
    """

    def __init__(
        self, embedding: Embedding, local: np.ndarray, settings, device: torch.device
    ) -> None:
        self.settings = settings
        self.local = local
        cells = _low_res_cells(local, embedding)
        features = embedding.features[0].float()  # (C, 64, 64)
        side = features.shape[-1]
        self.patch_stride = prompts.LOW_RES // side  # low-res cells per embedding patch
        self.patch_side = side
        self.patches = F.normalize(features.reshape(len(features), -1).T, dim=1).to(
            device=device, dtype=torch.float64
        )  # (side * side, C) unit vectors, row-major patches
        patch = cells // self.patch_stride
        self.point_patch = (patch[:, 0] * side + patch[:, 1]).to(device)  # (P,)
        self.inside = _inside_patches(embedding, side).to(device)  # (side, side) not padding
        self.cells = cells.to(device)  # (P, 2)
        self.objects = torch.zeros_like(self.inside, dtype=torch.float32)  # found fraction
        self.grid_index = _grid_index(local)  # (P, 2) int, position in the n x n grid
        self.covered = torch.zeros(
            (prompts.LOW_RES, prompts.LOW_RES), dtype=torch.bool, device=device
        )
        # skip_distance in window pixels -> low-res cells (a window pixel is resized by
        # input_size / original_size into the encoder frame, LOW_RES_STRIDE pixels per cell)
        cells_per_pixel = embedding.input_size[0] / embedding.original_size[0] / LOW_RES_STRIDE
        self.reach = math.ceil(settings.skip_distance * cells_per_pixel - 1e-9)
        self.valid = _valid_fraction(embedding)
        count = len(local)
        self.open = np.ones(count, dtype=bool)  # neither decoded nor skipped yet
        self.found = np.zeros(count, dtype=bool)  # decoded and found a new object
        self.decoded_mask = np.zeros(count, dtype=bool)
        self.empty_run = 0  # ranked points in a row that found nothing
        self.stopped = False  # the stop rule fired: the rest is skipped
        self.decoded = self.skipped = 0

    @property
    def handled(self) -> int:
        """Points decoded or skipped so far."""
        return self.decoded + self.skipped

    def next_batch(self) -> np.ndarray:
        """Grid indices to decode next (at most ``points_per_batch``); empty when done."""
        self._skip_covered()
        remaining = np.flatnonzero(self.open)
        if len(remaining) == 0:
            return remaining
        size = self.settings.points_per_batch
        if self.decoded < WARMUP:
            return remaining[: min(size, WARMUP - self.decoded)]
        if not self._can_rank():
            return remaining[:size]
        if self.empty_run >= self.settings.stop_after_empty and self._separable():
            self._skip(remaining)
            self.stopped = True
            return remaining[:0]
        scores = self._foreground_scores(remaining)
        ranked = remaining[np.argsort(-scores, kind="stable")]
        # A batch no longer than the stop run lets the rule fire as soon as it can.
        return self._spread(ranked, min(size, self.settings.stop_after_empty))

    def learn(
        self, batch: np.ndarray, logits: torch.Tensor, scores: torch.Tensor, stability: torch.Tensor
    ) -> None:
        """Update coverage, outcomes and the stop rule from a decoded batch.

        ``batch`` is in decoding-priority order; ``logits`` (3B, 256, 256) hold the three
        candidates of each point in that order.
        """
        settings = self.settings
        area = (logits > 0).flatten(1).float().mean(dim=1) / self.valid  # fraction of the window
        confident = (
            (scores >= settings.pred_iou_thresh)
            & (stability >= settings.stability_score_thresh)
            & (area > 0)
        )
        sized = confident & (area < settings.background_fraction)
        # A point found a new object if it gave a confident, object-sized mask that is
        # mostly outside every mask found before (it need not contain the point: a point
        # beside a small nucleus finds it).
        positive = logits > 0
        pixels = positive.flatten(1).sum(dim=1).clamp(min=1)
        fresh = (positive & ~self.covered).flatten(1).sum(dim=1) / pixels
        objects = (sized & (fresh >= 0.5)).view(len(batch), -1).any(dim=1).cpu().numpy()
        # Only object-sized masks cover, and only near their prompt: a background mask (the
        # cells as holes) would hide every small or dim object whose hole it fills, and a
        # mask of two touching nuclei the one its prompt was not on.
        if sized.any():
            found = (positive[sized] & self._near_prompt(batch, sized, positive, pixels)).any(dim=0)
            self.covered |= found
            found = found.float()[None, None]
            pooled = F.avg_pool2d(found, self.patch_stride)[0, 0]
            self.objects = torch.maximum(self.objects, pooled)
        ranked = self._can_rank()
        self.found[batch] = objects
        self.decoded_mask[batch] = True
        self.open[batch] = False
        self.decoded += len(batch)
        if ranked:
            for hit in objects:
                self.empty_run = 0 if hit else self.empty_run + 1

    def _near_prompt(
        self,
        batch: np.ndarray,
        covering: torch.Tensor,
        positive: torch.Tensor,
        pixels: torch.Tensor,
    ) -> torch.Tensor:
        """(K, 256, 256) bool: cells within COVER_REACH equivalent radii of the prompt of
        each covering mask. A mask vouches for the object at its prompt: the far nucleus of
        a two-nucleus mask keeps its own grid points."""
        masks = positive[covering]
        cells = self.cells[batch].repeat_interleave(3, dim=0)[covering]  # (K, 2)
        on_mask = masks[torch.arange(len(masks)), cells[:, 0], cells[:, 1]]
        # a mask found from beside it (a small nucleus between grid points) is anchored at
        # its own centre
        axis = torch.arange(prompts.LOW_RES, device=masks.device, dtype=torch.float32)
        row_mass, col_mass = masks.sum(dim=2).float(), masks.sum(dim=1).float()  # (K, 256)
        total = row_mass.sum(dim=1, keepdim=True).clamp(min=1)
        centres = torch.cat([row_mass @ axis[:, None], col_mass @ axis[:, None]], 1) / total
        cells = torch.where(on_mask[:, None], cells.float(), centres)
        radius = COVER_REACH * torch.sqrt(pixels[covering].float() / math.pi)  # (K,)
        rows = (axis[None, :] - cells[:, :1]) ** 2  # (K, 256)
        cols = (axis[None, :] - cells[:, 1:]) ** 2
        return rows[:, :, None] + cols[:, None, :] <= (radius**2)[:, None, None]

    def _can_rank(self) -> bool:
        """Ranking needs the stop rule on and examples of both outcomes."""
        if self.settings.stop_after_empty is None or self.decoded < WARMUP:
            return False
        positives, negatives = self._training_patches()
        return bool(len(positives) and len(negatives))

    def _training_patches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat patch indices that are foreground (mostly inside objects found) and
        background (under a decoded point that found nothing, outside every object)."""
        objects = self.objects.flatten()
        positives = torch.nonzero((objects >= 0.5) & self.inside.flatten()).flatten()
        empty = torch.from_numpy(self.decoded_mask & ~self.found).to(self.point_patch.device)
        under = torch.unique(self.point_patch[empty])
        negatives = under[objects[under] == 0]
        return _thinned(positives), _thinned(negatives)

    def _skip_covered(self) -> None:
        if not self.settings.skip_covered or not self.open.any():
            return
        covered = self.covered
        if self.reach > 0:
            side = 2 * self.reach + 1
            covered = F.max_pool2d(covered[None, None].float(), side, 1, self.reach)[0, 0] > 0
        remaining = np.flatnonzero(self.open)
        cells = self.cells[remaining]
        hit = covered[cells[:, 0], cells[:, 1]].cpu().numpy()
        self._skip(remaining[hit])

    def _skip(self, indices: np.ndarray) -> None:
        self.open[indices] = False
        self.skipped += len(indices)

    def _examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's (features, targets): foreground then background patches."""
        positives, negatives = self._training_patches()
        features = torch.cat([self.patches[positives], self.patches[negatives]])
        targets = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
        return features, targets.to(features)

    def _separable(self) -> bool:
        """Whether the classifier tells apart examples it was not fitted on (checked only
        when the stop rule is about to fire)."""
        return cross_validated_auc(*self._examples()) >= MIN_AUC

    def _foreground_scores(self, candidates: np.ndarray) -> np.ndarray:
        """How likely each candidate point is to find an object not found yet: the
        classifier's best decision value over the not-yet-found patches around it."""
        weights = fit_logistic(*self._examples())
        values = self.patches @ weights[1:] + weights[0]
        side = self.patch_side
        values = values.view(side, side).float()
        values = values.masked_fill(~self.inside | (self.objects >= 0.5), -1e4)
        around = F.max_pool2d(values[None, None], NEIGHBOURHOOD, 1, NEIGHBOURHOOD // 2)[0, 0]
        around = around.flatten()
        return around[self.point_patch[candidates]].cpu().numpy()

    def _spread(self, ranked: np.ndarray, size: int) -> np.ndarray:
        """The best-ranked points, at most one per 3 x 3 block of grid neighbours: two
        neighbours usually hit the same object, and the first one's mask covers the other
        before the next batch."""
        taken: list[int] = []
        near = np.zeros(0, dtype=np.int64).reshape(0, 2)
        for index in ranked:
            position = self.grid_index[index]
            if len(near) and (np.abs(near - position).max(axis=1) <= 1).any():
                continue
            taken.append(int(index))
            near = np.vstack([near, position])
            if len(taken) == size:
                break
        return np.array(taken, dtype=np.int64)


def fit_logistic(
    features: torch.Tensor, targets: torch.Tensor, ridge: float = RIDGE, steps: int = 8
) -> torch.Tensor:
    """Class-balanced logistic regression with an L2 penalty, by Newton's method.

    Parameters
    ----------
    features : torch.Tensor, shape (N, D) float64
    targets : torch.Tensor, shape (N,) float64, 0 or 1; both classes present

    Returns
    -------
    torch.Tensor, shape (D + 1,) float64
        Bias first, then one weight per feature.
    """
    n, d = features.shape
    design = torch.cat(
        [torch.ones((n, 1), dtype=features.dtype, device=features.device), features], 1
    )
    positives = targets.sum()
    sample = torch.where(targets > 0, n / (2 * positives), n / (2 * (n - positives)))
    penalty = torch.full((d + 1,), ridge, dtype=features.dtype, device=features.device)
    penalty[0] = 1e-6  # the bias is not shrunk
    weights = torch.zeros(d + 1, dtype=features.dtype, device=features.device)
    for _ in range(steps):
        probability = torch.sigmoid(design @ weights)
        gradient = design.T @ (sample * (targets - probability)) - penalty * weights
        curvature = (sample * probability * (1 - probability))[:, None] * design
        hessian = design.T @ curvature + torch.diag(penalty)
        weights = weights + torch.linalg.solve(hessian, gradient)
    return weights


def _thinned(indices: torch.Tensor) -> torch.Tensor:
    """At most MAX_EXAMPLES of ``indices``, evenly spaced (deterministic)."""
    if len(indices) <= MAX_EXAMPLES:
        return indices
    keep = torch.linspace(0, len(indices) - 1, MAX_EXAMPLES, device=indices.device).round()
    return indices[keep.long()]


def cross_validated_auc(features: torch.Tensor, targets: torch.Tensor) -> float:
    """Two-fold cross-validated area under the ROC curve of :func:`fit_logistic`.

    The stop rule trusts the classifier only where it separates examples it was not fitted
    on; 0.5 (chance) when either class has fewer than 4 examples.
    """
    positives = torch.nonzero(targets > 0).flatten()
    negatives = torch.nonzero(targets == 0).flatten()
    if min(len(positives), len(negatives)) < 4:
        return 0.5
    scores = torch.empty_like(targets)
    folds = [torch.cat([positives[k::2], negatives[k::2]]) for k in (0, 1)]
    for held, fitted in ((folds[0], folds[1]), (folds[1], folds[0])):
        weights = fit_logistic(features[fitted], targets[fitted])
        scores[held] = features[held] @ weights[1:] + weights[0]
    greater = (scores[positives][:, None] > scores[negatives][None, :]).double().mean()
    ties = (scores[positives][:, None] == scores[negatives][None, :]).double().mean()
    return float(greater + 0.5 * ties)


def _inside_patches(embedding: Embedding, side: int) -> torch.Tensor:
    """(side, side) bool: embedding patches inside the resized window (not padding)."""
    stride = prompts.LOW_RES * LOW_RES_STRIDE / side
    rows = math.ceil(embedding.input_size[0] / stride)
    cols = math.ceil(embedding.input_size[1] / stride)
    inside = torch.zeros((side, side), dtype=torch.bool)
    inside[:rows, :cols] = True
    return inside


def _grid_index(local: np.ndarray) -> np.ndarray:
    """(P, 2) int (row, col) index of each point in its grid."""
    rows = np.unique(local[:, 0], return_inverse=True)[1]
    cols = np.unique(local[:, 1], return_inverse=True)[1]
    return np.stack([rows, cols], axis=1).astype(np.int64)


def _valid_fraction(embedding: Embedding) -> float:
    """Fraction of the 256x256 logits that lies inside the resized window."""
    frame = prompts.LOW_RES * LOW_RES_STRIDE
    return (embedding.input_size[0] / frame) * (embedding.input_size[1] / frame)


def _low_res_cells(local: np.ndarray, embedding: Embedding) -> torch.Tensor:
    """(P, 2) window (row, col) -> (P, 2) int64 (row, col) of their low-res logit, on the
    CPU."""
    xy = prompts.to_encoder_xy(local, embedding.original_size, embedding.input_size)
    cells = np.floor(xy[:, ::-1] / LOW_RES_STRIDE).astype(np.int64)
    return torch.from_numpy(np.clip(cells, 0, prompts.LOW_RES - 1))
