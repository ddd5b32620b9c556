"""Segment everything: every object of a plane from a grid of point prompts, as labels.

The SAM paper's fully automatic stage (Kirillov et al. 2023, sec. 4) prompts a point grid,
keeps masks with high predicted IoU and stability, removes duplicates with NMS and paints
the survivors. Meta's generator upsamples every candidate to full resolution before
filtering; here the work is split in two:

* :meth:`AutomaticSegmenter.initialise` (expensive, kept): encode each view once, decode the
  grid in batches to 256x256 logits, skip grid points already inside a confident mask, keep
  candidates above loose floors (see :mod:`napari_sam.engine.everything.views`).
* :meth:`AutomaticSegmenter.generate` (cheap, repeatable with other thresholds): filter by
  predicted IoU, stability and area at low resolution, NMS, upsample only survivors,
  remove small islands and holes, de-duplicate across tiles and crops, paint labels without
  overlaps (larger objects first, so an object inside another stays visible).

:func:`segment_plane` does both, for scripts and the batch CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_sam.engine.everything.merging import (
    Survivor,
    merge_views,
    paint_survivors,
    view_survivors,
)
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.everything.views import View, ViewCandidates, Window, crop_views, decode_view
from napari_sam.engine.prediction.planes import PlaneView
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import Normalization, compute_normalization
from napari_sam.engine.prediction.results import Embedding
from napari_sam.engine.tiling.grid import tile_grid
from napari_sam.errors import InvalidInputError


@dataclass(frozen=True, eq=False)
class Candidates:
    """The expensive part of segment-everything for one plane, kept for re-thresholding."""

    plane_shape: tuple[int, int]  # (rows, cols)
    views: tuple[ViewCandidates, ...]
    settings: EverythingSettings  # the settings used to decode (skip rule, floors)

    @property
    def points_decoded(self) -> int:
        return sum(v.decoded for v in self.views)

    @property
    def points_skipped(self) -> int:
        return sum(v.skipped for v in self.views)


@dataclass(frozen=True, eq=False)
class PlaneSegmentation:
    """Labels of one plane and what each label scored."""

    labels: np.ndarray  # (rows, cols) int32, 0 = background, objects 1..n
    scores: np.ndarray  # (n,) float32 predicted IoU of label i + 1
    stability: np.ndarray  # (n,) float32 stability score of label i + 1
    points_decoded: int  # grid points sent to the decoder
    points_skipped: int  # grid points skipped inside confident masks

    @property
    def count(self) -> int:
        return len(self.scores)


EmbedWindow = Callable[[Window], Embedding]


class AutomaticSegmenter:
    """Segment everything on planes with one predictor.

    Parameters
    ----------
    predictor : Predictor
        Its current embedding is replaced while initialising.
    settings : EverythingSettings, optional

    Examples
    --------
    >>> segmenter = AutomaticSegmenter(Predictor("vit_t"))          # doctest: +SKIP
    >>> candidates = segmenter.initialise(image)                     # doctest: +SKIP
    >>> labels = segmenter.generate(candidates).labels               # doctest: +SKIP
    >>> stricter = segmenter.generate(                               # doctest: +SKIP
    ...     candidates, replace(settings, pred_iou_thresh=0.95)
    ... )
    """

    def __init__(self, predictor: Predictor, settings: EverythingSettings | None = None) -> None:
        self.predictor = predictor
        self.settings = settings or EverythingSettings()

    def initialise(
        self,
        plane: np.ndarray | PlaneView,
        normalization: Normalization | None = None,
        *,
        tile: int | None = None,
        halo: int = 0,
        embed: EmbedWindow | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Candidates:
        """Encode and decode every view of a plane (the slow part).

        Parameters
        ----------
        plane : array-like, shape (rows, cols) or (rows, cols, channels)
            Read one window at a time, so a lazy (dask, zarr) plane is never read whole.
        normalization : Normalization, optional
            One mapping for the whole plane or stack; computed from ``plane`` if omitted.
        tile, halo : int, optional
            Tile interiors and halo in pixels; no tiling when ``tile`` is None.
        embed : callable, optional
            ``embed(window) -> Embedding`` for a window of the plane, e.g. from an embedding
            cache; by default the window is encoded with ``predictor``.
        should_stop : callable, optional
            Polled between encoder blocks and decoder batches.
        progress : callable, optional
            ``progress(done, total)`` in grid points.
        """
        shape = checked_plane_shape(plane)
        if embed is None:
            normalization = normalization or compute_normalization(plane)
            embed = window_encoder(self.predictor, plane, normalization, should_stop)
        views = plan_views(shape, self.settings, tile, halo)
        total = sum(v.points_per_side**2 for v in views)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, total)

        decoded = tuple(
            decode_view(
                self.predictor, embed(view.window), view, self.settings, should_stop, advance
            )
            for view in views
        )
        return Candidates(plane_shape=shape, views=decoded, settings=self.settings)

    def generate(
        self, candidates: Candidates, settings: EverythingSettings | None = None
    ) -> PlaneSegmentation:
        """Filter, de-duplicate and paint candidates (cheap; thresholds may change freely).

        ``settings`` defaults to this segmenter's. Its grid, batch and floor fields have
        no effect here: they were used by :meth:`initialise`.
        """
        settings = settings or self.settings
        survivors: list[Survivor] = []
        for view in candidates.views:
            survivors.extend(view_survivors(view, settings, candidates.plane_shape))
        if len(candidates.views) > 1:
            survivors = merge_views(survivors, settings.box_nms_thresh)
        labels, kept = paint_survivors(survivors, candidates.plane_shape)
        return PlaneSegmentation(
            labels=labels,
            scores=np.array([s.score for s in kept], np.float32),
            stability=np.array([s.stability for s in kept], np.float32),
            points_decoded=candidates.points_decoded,
            points_skipped=candidates.points_skipped,
        )


def segment_plane(
    predictor: Predictor,
    plane: np.ndarray,
    normalization: Normalization | None = None,
    settings: EverythingSettings | None = None,
    *,
    tile: int | None = None,
    halo: int = 0,
    embed: EmbedWindow | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PlaneSegmentation:
    """Segment every object of one plane: :meth:`AutomaticSegmenter.initialise` then
    :meth:`~AutomaticSegmenter.generate` (see there for the parameters)."""
    segmenter = AutomaticSegmenter(predictor, settings)
    candidates = segmenter.initialise(
        plane,
        normalization,
        tile=tile,
        halo=halo,
        embed=embed,
        should_stop=should_stop,
        progress=progress,
    )
    return segmenter.generate(candidates)


def plan_views(
    shape: tuple[int, int], settings: EverythingSettings, tile: int | None, halo: int
) -> list[View]:
    """The views of a plane: the plane itself or its tiles, then their crop layers."""
    n = settings.points_per_side
    if tile is None:
        full = (slice(0, shape[0]), slice(0, shape[1]))
        bases = [View(full, full, (False, False, False, False), n)]
    else:
        bases = []
        for t in tile_grid(shape, tile, halo):
            rows, cols = t.window
            edges = (rows.start > 0, cols.start > 0, rows.stop < shape[0], cols.stop < shape[1])
            bases.append(View(t.window, t.interior, edges, n))
    views = list(bases)
    for base in bases:
        views.extend(
            crop_views(
                base,
                shape,
                settings.crop_layers,
                settings.crop_overlap_ratio,
                settings.crop_points_downscale,
            )
        )
    return views


def checked_plane_shape(plane) -> tuple[int, int]:
    shape = tuple(int(s) for s in np.shape(plane))
    if len(shape) not in (2, 3) or min(shape[:2]) < 1:
        raise InvalidInputError(
            "Segment everything needs one 2D plane, (rows, cols) or (rows, cols, channels); "
            f"got shape {shape}."
        )
    return shape[0], shape[1]


def window_encoder(
    predictor: Predictor, plane, normalization: Normalization, should_stop
) -> EmbedWindow:
    def embed(window: Window) -> Embedding:
        return predictor.encode(np.asarray(plane[window]), normalization, should_stop)

    return embed
