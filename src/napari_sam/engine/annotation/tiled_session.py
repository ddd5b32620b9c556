"""Interactive annotation of planes too large for one encoder input.

A :class:`TiledSession` is an :class:`~napari_sam.engine.annotation.session.AnnotationSession`
whose planes are cut into tiles with halo (:mod:`napari_sam.engine.tiling.grid`). Embedding a
plane encodes its grid tiles (into the on-disk cache when there is one), and each object
is decoded through :class:`~napari_sam.engine.tiling.prompting.TiledPlane`, so objects that
cross tile borders or are larger than a tile still get whole masks. :func:`open_session`
picks plain or tiled from the plane size, so the napari annotator and console users make
sessions the same way.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_sam.engine.annotation.objects import ObjectPrompt, group_prompts
from napari_sam.engine.annotation.projection import SlicePrompt
from napari_sam.engine.annotation.session import (
    AnnotationSession,
    ObjectPreview,
    Preview,
    bounding_box,
)
from napari_sam.engine.model.loading import SamModel
from napari_sam.engine.prediction.planes import PlaneKey, PlaneView, plane_layout
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.engine.prediction.results import Prediction
from napari_sam.engine.tiling.grid import check_upscale, resolve_tiling
from napari_sam.engine.tiling.prompting import TileBackend, TiledPlane

PLANES_KEPT = 3  # the visible plane and the two neighbours prefetched around it
SPARE_WINDOWS = 4  # re-centred windows kept beside a plane's grid tiles
TILE_EMBEDDING_BYTES = 256 * 64 * 64 * 4  # one tile's float32 image embedding: 4 MiB
MEMORY_SHARE = 4  # tiles kept in memory without a cache: at most 1/4 of physical memory

log = logging.getLogger(__name__)


class TiledSession(AnnotationSession):
    """Prompts to masks on the planes of a large image or stack, tile by tile.

    Parameters
    ----------
    model, data, channel_axis, channel, normalization
        As for :class:`~napari_sam.engine.annotation.session.AnnotationSession`.
    capacity : int
        Window embeddings kept in memory per plane when a backend holds the tiles;
        without one, a plane's grid tiles all stay in memory.
    tile, halo, upscale
        Tiling in plane pixels (:func:`~napari_sam.engine.tiling.grid.resolve_tiling`).
    tile_backends : callable, optional
        ``tile_backends(key)`` gives the :class:`TileBackend` of a plane
        (``EmbeddingCache.tiles``), where its tiles persist.
    """

    def __init__(
        self,
        model: str | Path | SamModel | Predictor,
        data,
        channel_axis: bool = False,
        channel: int | None = None,
        normalization: Normalization | None = None,
        capacity: int = 16,
        tile: int | None = None,
        halo: int | None = None,
        upscale: float = 1.0,
        tile_backends: Callable[[PlaneKey], TileBackend] | None = None,
    ) -> None:
        super().__init__(model, data, channel_axis, channel, normalization, capacity)
        self.upscale = check_upscale(upscale)
        self.tile, self.halo = resolve_tiling(self.layout.plane_shape, tile, halo, self.upscale)
        self.tile_backends = tile_backends
        self.capacity = capacity
        self._planes: OrderedDict[PlaneKey, TiledPlane] = OrderedDict()
        self._lock = threading.Lock()

    def plane(self, key: PlaneKey = ()) -> TiledPlane:
        """The :class:`TiledPlane` of one plane (kept for the last few planes used)."""
        key = self.layout.check_key(key)
        with self._lock:
            if key in self._planes:
                self._planes.move_to_end(key)
                return self._planes[key]
        backend = None if self.tile_backends is None else self.tile_backends(key)
        tiled = TiledPlane(
            self.predictor,
            PlaneView(self.data, self.layout, key),
            self.normalization,
            0 if self.tile is None else self.tile,
            self.halo,
            self.capacity,
            upscale=self.upscale,
            backend=backend,
        )
        if backend is None:  # memory is the only store: keep every grid tile that fits
            wanted = len(tiled.tiles) + SPARE_WINDOWS
            tiled.capacity = max(self.capacity, min(wanted, tiles_in_memory()))
            if wanted > tiled.capacity:
                log.warning(
                    "A plane of %d tiles needs %.1f GiB of embeddings, more than a quarter of "
                    "this machine's memory: only %d are kept, the others are encoded again "
                    "when revisited. Attach an embedding cache on disk (napari-sam embed, "
                    "or cache= in Python) to keep them all.",
                    len(tiled.tiles),
                    len(tiled.tiles) * TILE_EMBEDDING_BYTES / 2**30,
                    tiled.capacity,
                )
        with self._lock:
            self._planes[key] = tiled
            while len(self._planes) > PLANES_KEPT:
                self._planes.popitem(last=False)
        return tiled

    def has_embedding(self, key: PlaneKey) -> bool:
        """True when every tile of the plane is encoded (in memory or the cache)."""
        return self.plane(key).ready()

    # A tiled plane has one embedding per tile: embed returns the plane that holds them.
    def embed(  # type: ignore[override]
        self,
        key: PlaneKey = (),
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> TiledPlane:
        """Encode every grid tile of one plane not yet encoded (slow; safe from a worker thread).

        Returns the plane's :class:`TiledPlane` (a plain session returns an Embedding).
        """
        tiled = self.plane(key)
        tiled.encode_tiles(should_stop, progress)
        return tiled

    def preview(
        self,
        key: PlaneKey = (),
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mode: str = "single",
        mask_input: np.ndarray | None = None,
    ) -> Preview:
        """Whole-plane masks for every object described by the prompts (one candidate each).

        ``mask_input`` (rows, cols) bool is used through its bounding box when no other
        prompt is given (SAM's mask prompt is per window; a tiled plane has many).
        """
        tiled = self.plane(key)
        objects = group_prompts(points, point_labels, boxes, mode)
        if mask_input is not None and not objects:
            box = bounding_box(mask_input)
            objects = [] if box is None else [ObjectPrompt(np.zeros((0, 2)), np.zeros(0, int), box)]
        results = []
        for item in objects:
            has_points = len(item.points) > 0
            prediction = tiled.predict(
                item.points if has_points else None, item.labels if has_points else None, item.box
            )
            results.append(ObjectPreview(item, prediction, 0))
        return Preview(self.layout.check_key(key), tuple(results))

    def decode_prompts(self, key: PlaneKey, prompts: Sequence[SlicePrompt]) -> list[Prediction]:
        """Whole-plane masks for object prompts on a tiled plane, one object at a time.

        Each object is decoded on the window where it is most central (see
        :meth:`TiledPlane.predict`); a prompt's mask logits are not used, since SAM's
        mask prompt belongs to one window and a tiled plane has many, so the
        ``*_mask`` projections act as their prompts without the mask here.
        """
        tiled = self.plane(key)
        found = []
        for item in prompts:
            has_points = len(item.points) > 0
            found.append(
                tiled.predict(
                    item.points if has_points else None,
                    item.labels if has_points else None,
                    item.box,
                )
            )
        return found


def open_session(
    model: str | Path | SamModel | Predictor,
    data,
    channel_axis: bool = False,
    channel: int | None = None,
    capacity: int = 16,
    tile: int | None = None,
    halo: int | None = None,
    upscale: float = 1.0,
    normalization: Normalization | None = None,
) -> AnnotationSession:
    """A plain session when planes fit the encoder, a :class:`TiledSession` otherwise.

    ``tile=None`` decides from the plane size and ``upscale``
    (:func:`~napari_sam.engine.tiling.grid.default_tiling`); ``tile=0`` never tiles.
    """
    layout = plane_layout(np.shape(data), channel_axis)
    tile, halo = resolve_tiling(layout.plane_shape, tile, halo, upscale)
    if tile is None:
        return AnnotationSession(model, data, channel_axis, channel, normalization, capacity)
    return TiledSession(
        model,
        data,
        channel_axis,
        channel,
        normalization,
        capacity,
        tile=tile,
        halo=halo,
        upscale=upscale,
    )


def tiles_in_memory() -> int:
    """Tile embeddings that fit in a quarter of physical memory (64 where unknown)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return 64
    return max(16, int(memory // MEMORY_SHARE // TILE_EMBEDDING_BYTES))
