"""Where segment-everything prompts: views of a plane and the point grid decoded on each.

A *view* is a window of the plane encoded once: the whole plane, a tile (with halo) of a
large plane, or a zoomed crop (the SAM paper's crop layers: the window is enlarged to the
encoder's 1024 pixels, so small objects get more pixels). Grid points are laid over the
view's *region* (a tile's interior, so neighbouring tiles never prompt the same pixel) and
decoded in batches, coarse points first. After each batch, the pixels of confident masks
are marked covered and later grid points falling there are skipped: a nucleus hit by one
point needs no second prompt, and the background mask, found in the first batch, saves most
of the grid on sparse microscopy images. The grid's state and the candidates stay on the
decoder's device; only small per-point decisions come back to the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from napari_sam.engine.everything.filters import stability_scores
from napari_sam.engine.everything.point_order import GridState
from napari_sam.engine.prediction import prompts
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.results import Embedding
from napari_sam.errors import OperationCancelled

Window = tuple[slice, slice]


@dataclass(frozen=True)
class View:
    """One encoded window of a plane and the grid prompted on it."""

    window: Window  # plane pixels that are encoded
    region: Window  # plane pixels where grid points are placed
    inner_edges: tuple[bool, bool, bool, bool]  # (top, left, bottom, right) edges inside the plane
    points_per_side: int  # grid points along each side of the region
    layer: int = 0  # 0 for the plane or a tile, k for the k-th crop layer

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the window."""
        return (
            self.window[0].stop - self.window[0].start,
            self.window[1].stop - self.window[1].start,
        )


@dataclass(frozen=True, eq=False)
class ViewCandidates:
    """Every decoded candidate of one view that passed the keep floors."""

    view: View
    logits: torch.Tensor  # (M, 256, 256) float16 low-res logits in the padded encoder frame,
    # on the decoder's device
    scores: np.ndarray  # (M,) float32 predicted IoU
    points: np.ndarray  # (M, 2) float64 plane (row, col) of the prompt that made each
    encoded_size: tuple[int, int]  # (rows, cols) the window had when encoded (upscaling)
    input_size: tuple[int, int]  # (rows, cols) of the resized window in the encoder frame
    frame: int  # encoder input side (1024)
    decoded: int  # grid points decoded
    skipped: int  # grid points skipped because a confident mask already covered them


def grid_points(region: Window, points_per_side: int) -> np.ndarray:
    """Cell-centred grid over a region, coarse sub-grids first.

    Returns
    -------
    numpy.ndarray, shape (points_per_side ** 2, 2) float64
        (row, col) plane coordinates. Points of the 1x1, 2x2, 4x4 ... sub-grids come
        first, so the first batch already spans the whole region.
    """
    n = points_per_side
    fractions = (np.arange(n) + 0.5) / n
    rows = region[0].start + fractions * (region[0].stop - region[0].start)
    cols = region[1].start + fractions * (region[1].stop - region[1].start)
    index = np.arange(n)
    coarseness = np.array([_trailing_zeros(int(i), n) for i in index])
    level = np.minimum(coarseness[:, None], coarseness[None, :]).ravel()
    order = np.argsort(-level, kind="stable")
    points = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)
    return points[order]


def _trailing_zeros(i: int, n: int) -> int:
    """How coarse a grid index is: 0 is coarsest, odd indices finest."""
    if i == 0:
        return max(1, n).bit_length()
    return (i & -i).bit_length() - 1


def crop_views(
    base: View, plane_shape: tuple[int, int], layers: int, overlap_ratio: float, downscale: int
) -> list[View]:
    """Zoomed crops of a base view: layer k cuts its window into 2^k x 2^k overlapping crops."""
    views = []
    rows0, cols0 = base.window[0].start, base.window[1].start
    height, width = base.shape
    for layer in range(1, layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_h = math.ceil((height + overlap * (per_side - 1)) / per_side)
        crop_w = math.ceil((width + overlap * (per_side - 1)) / per_side)
        points = max(1, base.points_per_side // downscale**layer)
        for i in range(per_side):
            for j in range(per_side):
                r0, c0 = rows0 + i * (crop_h - overlap), cols0 + j * (crop_w - overlap)
                r1, c1 = min(r0 + crop_h, rows0 + height), min(c0 + crop_w, cols0 + width)
                window = (slice(r0, r1), slice(c0, c1))
                edges = (r0 > 0, c0 > 0, r1 < plane_shape[0], c1 < plane_shape[1])
                views.append(View(window, window, edges, points, layer))
    return views


def decode_view(
    predictor: Predictor,
    embedding: Embedding,
    view: View,
    settings,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ViewCandidates:
    """Decode the grid of one view into low-resolution candidates.

    Which points are decoded, and in what order, is :class:`GridState`'s choice (coverage
    and ranked decoding, :mod:`napari_sam.engine.everything.point_order`).

    Parameters
    ----------
    predictor : Predictor
        Its current embedding is replaced by ``embedding``.
    embedding : Embedding
        The view's window encoded (possibly upscaled: ``original_size`` may exceed it).
    view : View
    settings : EverythingSettings
        Batch size, skip rules, keep floors and the thresholds that make a mask confident.
    should_stop : callable, optional
        Polled between batches; True raises OperationCancelled.
    progress : callable, optional
        Called with the number of grid points handled (decoded or skipped) per batch.
    """
    predictor.set_embedding(embedding)
    points = grid_points(view.region, view.points_per_side)
    origin = np.array([view.window[0].start, view.window[1].start], dtype=np.float64)
    scale = np.array(embedding.original_size, dtype=np.float64) / np.array(view.shape)
    local = (points - origin + 0.5) * scale - 0.5  # pixel centres map to pixel centres
    local = np.clip(local, 0, np.array(embedding.original_size) - 1)
    device = torch.device(predictor.model.device)
    grid = GridState(embedding, local, settings, device)
    kept_logits, kept_scores, kept_points = [], [], []
    reported = 0
    while True:
        if should_stop is not None and should_stop():
            raise OperationCancelled("Segment everything was cancelled.")
        batch = grid.next_batch()
        if len(batch):
            out = predictor.predict_low_res(local[batch][:, None, :], multimask=True)
            logits = out.logits.reshape(-1, prompts.LOW_RES, prompts.LOW_RES).float()
            scores = out.scores.reshape(-1).float()
            stability = stability_scores(logits, settings.stability_offset)
            grid.learn(batch, logits, scores, stability)
            keep = (scores >= settings.keep_iou_floor) & (
                stability >= settings.keep_stability_floor
            )
            kept_logits.append(logits[keep].half())
            kept_scores.append(scores[keep].cpu().numpy())
            kept_points.append(
                np.repeat(points[batch], logits.shape[0] // len(batch), axis=0)[keep.cpu().numpy()]
            )
        if progress is not None and grid.handled > reported:
            progress(grid.handled - reported)
            reported = grid.handled
        if not len(batch):
            break
    empty = torch.zeros((0, prompts.LOW_RES, prompts.LOW_RES), dtype=torch.float16, device=device)
    return ViewCandidates(
        view=view,
        logits=torch.cat(kept_logits) if kept_logits else empty,
        scores=np.concatenate(kept_scores) if kept_scores else np.zeros(0, np.float32),
        points=np.concatenate(kept_points) if kept_points else np.zeros((0, 2)),
        encoded_size=(int(embedding.original_size[0]), int(embedding.original_size[1])),
        input_size=(int(embedding.input_size[0]), int(embedding.input_size[1])),
        frame=predictor.model.input_size,
        decoded=grid.decoded,
        skipped=grid.skipped,
    )
