"""Prompts on planes larger than the encoder: decode where the object is, not tile by tile.

A prompt is decoded on the window of the tile where it is most central (see
:mod:`napari_sam.engine.tiling.grid`). If the mask then touches that window's edge inside the
plane, the object continues beyond the window: the prompt is decoded again on a window
centred on the mask found so far, so an object crossing tile borders still gets one whole
mask (micro-sam requires each object to fit inside one tile). An object larger than a
window is followed across the neighbouring tiles and their masks merged
(:mod:`napari_sam.engine.tiling.merging`).

Embeddings of the grid tiles come from a :class:`TileBackend` when one is given (the
on-disk embedding cache: computed and saved there on first use); re-centred windows and
tiles without a backend are computed on demand with the plane's normalisation and kept
in a small in-memory LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.engine.prediction.results import Embedding, Prediction
from napari_sam.engine.tiling.grid import (
    Tile,
    check_upscale,
    most_central_tile,
    resolve_tiling,
    tile_grid,
)
from napari_sam.engine.tiling.merging import grow_across_tiles

Window = tuple[slice, slice]
TileIndex = tuple[int, int]
RECENTRE_LIMIT = 2  # re-decodes on a moved window before settling


class TileBackend(Protocol):
    """Persistent storage of one plane's grid tiles, keyed by (tile row, tile col)."""

    def load(self, index: TileIndex) -> Embedding | None:
        """The stored embedding of a tile, or None when missing or damaged."""

    def save(self, index: TileIndex, embedding: Embedding) -> None:
        """Store a tile's embedding durably."""

    def completed(self) -> set[TileIndex]:
        """Tiles marked complete (cheap: flags only, no checksum)."""


class TiledPlane:
    """One large 2D plane prompted through windows of ``tile + 2 * halo`` pixels.

    Parameters
    ----------
    predictor : Predictor
    plane : array-like, shape (rows, cols) or (rows, cols, channels)
        Indexed one window at a time, so a lazy (dask, zarr) plane is never read whole.
    normalization : Normalization
        One mapping for the whole plane (or stack): no seams between tiles.
    tile, halo : int, optional
        Interior side and overlap in plane pixels; None chooses automatically
        (:func:`~napari_sam.engine.tiling.grid.resolve_tiling`). A plane that needs no tiles
        is one tile whose window is the whole plane.
    capacity : int
        Window embeddings kept in memory (4 MB each for the default model).
    upscale : float
        Encoder pixels per plane pixel, at least (windows of ``1024 / upscale`` pixels).
    backend : TileBackend, optional
        Where grid tiles' embeddings persist (``EmbeddingCache.tiles(key)``).
    """

    def __init__(
        self,
        predictor: Predictor,
        plane,
        normalization: Normalization,
        tile: int | None = None,
        halo: int | None = None,
        capacity: int = 8,
        *,
        upscale: float = 1.0,
        backend: TileBackend | None = None,
    ) -> None:
        self.predictor = predictor
        self.plane = plane
        self.normalization = normalization
        self.shape = (int(plane.shape[0]), int(plane.shape[1]))
        self.upscale = check_upscale(upscale)
        self.tile, self.halo = resolve_tiling(self.shape, tile, halo, self.upscale)
        side, overlap = (self.tile, self.halo) if self.tile is not None else (max(self.shape), 0)
        self.tiles = tile_grid(self.shape, side, overlap)
        self.side = side + 2 * overlap
        self.capacity = capacity
        self.backend = backend
        self.encoder_calls = 0
        self._grid = {_bounds(t.window): t.index for t in self.tiles}
        self._embeddings: OrderedDict[tuple, Embedding] = OrderedDict()
        self._lock = threading.Lock()

    def embedding(
        self, window: Window | Tile, should_stop: Callable[[], bool] | None = None
    ) -> Embedding:
        """The embedding of a window (or a grid :class:`Tile`), from memory, the backend, or
        encoded.

        A grid tile's new embedding is also saved to the backend.
        """
        if isinstance(window, Tile):
            window = window.window
        key = _bounds(window)
        with self._lock:
            if key in self._embeddings:
                self._embeddings.move_to_end(key)
                return self._embeddings[key]
        index = self._grid.get(key)
        found = self.backend.load(index) if index is not None and self.backend is not None else None
        if found is None:
            found = self.predictor.encode(
                np.asarray(self.plane[window]), self.normalization, should_stop
            )
            self.encoder_calls += 1
            if index is not None and self.backend is not None:
                self.backend.save(index, found)
        with self._lock:
            self._embeddings[key] = found
            while len(self._embeddings) > self.capacity:
                self._embeddings.popitem(last=False)
        return found

    def ready(self) -> bool:
        """True when every grid tile can be used without running the encoder."""
        with self._lock:
            held = {self._grid[k] for k in self._embeddings if k in self._grid}
        if len(held) < len(self.tiles) and self.backend is not None:
            held |= self.backend.completed()
        return len(held) >= len(self.tiles)

    def encode_tiles(
        self,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Make every grid tile's embedding available; returns the encoder calls made.

        ``progress(done, total)`` after each tile; ``should_stop`` is polled inside the
        encoder (raises OperationCancelled; finished tiles stay saved).
        """
        before = self.encoder_calls
        backend = self.backend
        done = backend.completed() if backend is not None else set()
        for count, tile in enumerate(self.tiles, start=1):
            if tile.index not in done or backend is None or backend.load(tile.index) is None:
                self.embedding(tile, should_stop)
            if progress is not None:
                progress(count, len(self.tiles))
        return self.encoder_calls - before

    def predict(
        self,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
    ) -> Prediction:
        """One object's best mask on the whole plane (N = 1).

        Parameters
        ----------
        points : array-like, shape (K, 2), optional
            (row, col) plane pixels.
        point_labels : array-like, shape (K,), optional
            1 object, 0 background; all 1 when omitted.
        box : array-like, shape (4,), optional
            (row0, col0, row1, col1) plane pixels.

        Returns
        -------
        Prediction
            ``masks`` (1, rows, cols) bool on the whole plane; ``scores`` (1,) and
            ``logits`` (1, 256, 256) of the window where the object was first settled.
        """
        points = None if points is None else np.asarray(points, float).reshape(-1, 2)
        labels = (
            None
            if points is None
            else (
                np.ones(len(points), int)
                if point_labels is None
                else np.asarray(point_labels, int).reshape(-1)
            )
        )
        window = most_central_tile(self.tiles, *self._centre(points, labels, box)).window
        local = self.decode_window(window, points, labels, box)
        for _ in range(RECENTRE_LIMIT):
            if not self._touches_inner_edge(local.best_mask, window):
                break
            rows, cols = np.nonzero(local.best_mask)
            moved = self._window_at((rows.mean() + window[0].start, cols.mean() + window[1].start))
            if moved == window:
                break
            window = moved
            local = self.decode_window(window, points, labels, box)
        if not self._touches_inner_edge(local.best_mask, window):
            return self._paste(local, window)
        settled = self._paste(local, window)  # larger than a window: follow it across tiles
        explored = np.zeros(self.shape, bool)
        explored[window] = True
        mask = grow_across_tiles(
            self.tiles, self.decode_window, settled.masks[0].copy(), explored, points, labels, box
        )
        return Prediction(masks=mask[None], scores=settled.scores, logits=settled.logits)

    def decode_window(self, window: Window, points, labels, box, extra=None) -> Prediction:
        """Decode a prompt given in plane pixels on one window (masks in window pixels).

        ``extra`` adds (points (K, 2), labels (K,)) in plane pixels; points outside the
        window are dropped and the box is clipped to it.
        """
        embedding = self.embedding(window)
        if self.predictor.current_embedding is not embedding:  # preparing the decoder costs ~0.1 s
            self.predictor.set_embedding(embedding)
        offset = np.array([window[0].start, window[1].start], float)
        height, width = window[0].stop - window[0].start, window[1].stop - window[1].start
        if extra is not None:
            points = extra[0] if points is None else np.vstack([extra[0], points])
            labels = extra[1] if labels is None else np.concatenate([extra[1], labels])
        local_points = None if points is None else points - offset
        local_box = None if box is None else np.asarray(box, float) - np.tile(offset, 2)
        if local_points is not None:  # points outside this window cannot be given to SAM
            inside = ((local_points >= 0) & (local_points < [height, width])).all(axis=1)
            local_points, labels = local_points[inside], labels[inside]
            if not len(local_points):
                local_points = labels = None
        if local_box is not None and (
            local_box[2] < 0
            or local_box[3] < 0
            or local_box[0] > height - 1
            or local_box[1] > width - 1
        ):
            local_box = None  # the box lies wholly outside this window
        if local_box is not None:
            local_box = np.clip(local_box, 0, [height - 1, width - 1, height - 1, width - 1])
        return self.predictor.predict(
            points=local_points, point_labels=labels, box=local_box, multimask=False
        )

    def _touches_inner_edge(self, mask: np.ndarray, window: Window) -> bool:
        rows, cols = window
        return bool(
            (rows.start > 0 and mask[0].any())
            or (rows.stop < self.shape[0] and mask[-1].any())
            or (cols.start > 0 and mask[:, 0].any())
            or (cols.stop < self.shape[1] and mask[:, -1].any())
        )

    def _window_at(self, centre: tuple[float, float]) -> Window:
        rows, cols = (self._span(c, size) for c, size in zip(centre, self.shape))
        return rows, cols

    def _span(self, centre: float, size: int) -> slice:
        """A window side's slice centred on ``centre``, moved inside [0, size)."""
        start = round(centre - self.side / 2)
        start = min(max(0, start), max(0, size - self.side))
        return slice(start, min(size, start + self.side))

    def _centre(self, points, labels, box) -> tuple[float, float]:
        if box is not None:
            box = np.asarray(box, float)
            return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        positive = points[labels == 1] if labels is not None else points
        return tuple(positive.mean(axis=0))

    def _paste(self, local: Prediction, window: Window) -> Prediction:
        masks = np.zeros((1, *self.shape), bool)
        masks[0][window] = local.best_mask
        return Prediction(
            masks=masks, scores=local.scores[[local.best]], logits=local.logits[[local.best]]
        )


def _bounds(window: Window) -> tuple[int, int, int, int]:
    return window[0].start, window[0].stop, window[1].start, window[1].stop
