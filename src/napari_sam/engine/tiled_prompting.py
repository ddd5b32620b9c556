"""Prompts on planes larger than the encoder: decode where the object is, not tile by tile.

A prompt is decoded on the window of the tile where it is most central (see
:mod:`napari_sam.engine.tiling`). If the mask then touches that window's edge inside the
plane, the object continues beyond the window: the prompt is decoded again on a window
centred on the mask found so far, so an object crossing tile borders still gets one whole
mask (micro-sam requires each object to fit inside one tile). Window embeddings are
computed on demand with the plane's normalisation and kept in a small LRU.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from napari_sam.engine.predictor import Predictor
from napari_sam.engine.preprocess import Normalization
from napari_sam.engine.results import Embedding, Prediction
from napari_sam.engine.tiling import most_central_tile, tile_grid

Window = tuple[slice, slice]
RECENTRE_LIMIT = 2  # re-decodes on a moved window before settling


class TiledPlane:
    """One large 2D plane prompted through windows of ``tile + 2 * halo`` pixels."""

    def __init__(self, predictor: Predictor, plane: np.ndarray, normalization: Normalization,
                 tile: int, halo: int, capacity: int = 8) -> None:
        self.predictor = predictor
        self.plane = plane
        self.normalization = normalization
        self.shape = plane.shape[:2]
        self.tiles = tile_grid(self.shape, tile, halo)
        self.side = tile + 2 * halo
        self.capacity = capacity
        self._embeddings: OrderedDict[tuple, Embedding] = OrderedDict()
        self.encoder_calls = 0

    def embedding(self, window: Window) -> Embedding:
        """The embedding of a window, encoded on first use."""
        key = (window[0].start, window[0].stop, window[1].start, window[1].stop)
        if key not in self._embeddings:
            self._embeddings[key] = self.predictor.encode(np.asarray(self.plane[window]), self.normalization)
            self.encoder_calls += 1
            while len(self._embeddings) > self.capacity:
                self._embeddings.popitem(last=False)
        self._embeddings.move_to_end(key)
        return self._embeddings[key]

    def predict(self, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                box: np.ndarray | None = None) -> Prediction:
        """One object's best mask on the whole plane (N = 1)."""
        points = None if points is None else np.asarray(points, float).reshape(-1, 2)
        labels = None if points is None else (np.ones(len(points), int) if point_labels is None
                                              else np.asarray(point_labels, int))
        centre = self._centre(points, labels, box)
        window = most_central_tile(self.tiles, *centre).window
        for _ in range(RECENTRE_LIMIT + 1):
            local = self._decode(window, points, labels, box)
            mask = local.best_mask
            if not self._touches_inner_edge(mask, window):
                break
            rows, cols = np.nonzero(mask)
            moved = self._window_at((rows.mean() + window[0].start, cols.mean() + window[1].start))
            if moved == window:
                break
            window = moved
        return self._paste(local, window)

    def _decode(self, window: Window, points, labels, box) -> Prediction:
        self.predictor.set_embedding(self.embedding(window))
        offset = np.array([window[0].start, window[1].start], float)
        height, width = window[0].stop - window[0].start, window[1].stop - window[1].start
        local_points = None if points is None else points - offset
        local_box = None if box is None else np.asarray(box, float) - np.tile(offset, 2)
        if local_points is not None:  # points outside this window cannot be given to SAM
            inside = ((local_points >= 0) & (local_points < [height, width])).all(axis=1)
            local_points, labels = local_points[inside], labels[inside]
            if not len(local_points):
                local_points = labels = None
        if local_box is not None:
            local_box = np.clip(local_box, 0, [height - 1, width - 1, height - 1, width - 1])
        return self.predictor.predict(points=local_points, point_labels=labels, box=local_box, multimask=False)

    def _touches_inner_edge(self, mask: np.ndarray, window: Window) -> bool:
        rows, cols = window
        return bool(
            (rows.start > 0 and mask[0].any()) or (rows.stop < self.shape[0] and mask[-1].any())
            or (cols.start > 0 and mask[:, 0].any()) or (cols.stop < self.shape[1] and mask[:, -1].any())
        )

    def _window_at(self, centre: tuple[float, float]) -> Window:
        bounds = []
        for c, size in zip(centre, self.shape):
            start = int(round(c - self.side / 2))
            start = min(max(0, start), max(0, size - self.side))
            bounds.append(slice(start, min(size, start + self.side)))
        return tuple(bounds)

    def _centre(self, points, labels, box) -> tuple[float, float]:
        if box is not None:
            box = np.asarray(box, float)
            return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        positive = points[labels == 1] if labels is not None else points
        return tuple(positive.mean(axis=0))

    def _paste(self, local: Prediction, window: Window) -> Prediction:
        masks = np.zeros((1, *self.shape), bool)
        masks[0][window] = local.best_mask
        return Prediction(masks=masks, scores=local.scores[[local.best]], logits=local.logits[[local.best]])
