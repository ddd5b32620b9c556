"""Fast upsampling of SAM's 256x256 mask logits to the original image.

SAM upsamples logits bilinearly to the padded encoder frame (1024x1024), crops the
padding, and resizes bilinearly again to the original size. Both steps are linear and
separable, so each axis is one fixed linear map from 256 values to the original length,
with only a few non-zero weights per output pixel. :class:`LogitUpsampler` computes those
weights once per image size by pushing an identity matrix through the same two
``torch.nn.functional.interpolate`` calls, then applies them as gathers: about 20x fewer
operations than the two dense interpolations, with the same values to float rounding.
The weights are made on the CPU and follow the logits to their device (a few kB).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)  # one entry per image geometry; the tensors are read-only
def axis_weights(
    low: int, frame: int, valid: int, original: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse form of the map low -> frame (bilinear) -> crop [:valid] -> original.

    Cached: segment-everything upsamples its survivors in chunks, on every re-threshold;
    making the weights each time cost 7% of ``generate`` on DSB2018 (13 of 208 ms).

    Returns
    -------
    index : torch.Tensor, shape (original, K), int64
        Source positions (in 0..low-1) of each output position.
    weight : torch.Tensor, shape (original, K), float32
        Their weights (zero for padding entries).
    """
    eye = torch.eye(low, dtype=torch.float64).view(1, 1, low, low)
    step = F.interpolate(eye, size=(frame, low), mode="bilinear", align_corners=False)
    step = step[:, :, :valid, :]
    dense = F.interpolate(step, size=(original, low), mode="bilinear", align_corners=False)
    dense = dense[0, 0]  # (original, low)
    nonzero = dense != 0
    k = int(nonzero.sum(dim=1).max())
    weight, index = torch.topk(dense.abs() * nonzero, k, dim=1)
    weight = torch.gather(dense, 1, index)
    return index, weight.float()


class LogitUpsampler:
    """Upsamples (N, 256, 256) logits to (N, rows, cols) for one image geometry."""

    def __init__(
        self, original: tuple[int, int], resized: tuple[int, int], frame: int, low: int = 256
    ) -> None:
        self.original = original
        self.row_index, self.row_weight = axis_weights(low, frame, resized[0], original[0])
        self.col_index, self.col_weight = axis_weights(low, frame, resized[1], original[1])

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 256, 256) float on any device -> (N, rows, cols) float on the same device."""
        n, _low_rows, low_cols = logits.shape
        # On the CPU ``.to`` returns the tensors themselves; elsewhere it copies a few kB.
        row_index, row_weight, col_index, col_weight = (
            t.to(logits.device)
            for t in (self.row_index, self.row_weight, self.col_index, self.col_weight)
        )
        rows = logits.index_select(1, row_index[:, 0]).mul_(row_weight[:, 0, None])
        for k in range(1, row_index.shape[1]):  # whole source rows: contiguous gathers
            rows.add_(logits.index_select(1, row_index[:, k]).mul_(row_weight[:, k, None]))
        flat = rows.reshape(-1, low_cols)  # 2D index_select on the last axis is the fast one
        out = flat.index_select(1, col_index[:, 0]).mul_(col_weight[:, 0])
        for k in range(1, col_index.shape[1]):
            out.add_(flat.index_select(1, col_index[:, k]).mul_(col_weight[:, k]))
        return out.view(n, self.original[0], self.original[1])
