"""Encode every plane (or every tile of every plane) of a volume into an embedding cache.

One code path for the CLI (``napari-sam embed``), the napari widgets and the console:
planes or tiles already complete (and intact) in the cache are skipped, the rest are
encoded one at a time (so memory stays flat whatever the number of planes) and written
as they finish.
Large planes are cut into tiles with halo (:mod:`napari_sam.engine.tiling.grid`), chosen
automatically unless the caller sets ``tile``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam.engine.annotation.session import AnnotationSession
from napari_sam.engine.annotation.tiled_session import TiledSession, open_session
from napari_sam.engine.model.precision import AUTO, check_precision, resolve_precision
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import InvalidInputError
from napari_sam.io.embedding_cache import EmbeddingCache, cache_signature, recorded_precision
from napari_sam.io.store_lock import StoreLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedSummary:
    """What an embedding run did; counts are of tiles when the planes are tiled."""

    cache: str  # path of the zarr group
    planes: int  # planes asked for
    encoded: int  # planes (tiles) the encoder ran on in this run
    reused: int  # planes (tiles) already complete in the cache
    seconds: float  # wall time of this run
    tiles_per_plane: int = 1  # 1 for whole planes


def open_cached_session(
    data,
    cache_path: str | Path,
    model="vit_t",
    channel_axis: bool = False,
    channel: int | None = None,
    feature_dtype: str = "float32",
    overwrite: bool = False,
    capacity: int = 16,
    tile: int | None = None,
    halo: int | None = None,
    upscale: float = 1.0,
    lock: StoreLock | None = None,
    precision: str = AUTO,
) -> AnnotationSession:
    """A session whose embeddings persist in ``cache_path`` (tiled for large planes).

    ``tile=None`` tiles only planes too large for the encoder (see
    :func:`~napari_sam.engine.tiling.grid.resolve_tiling`), ``tile=0`` never tiles. If the
    cache already exists for this data, model and tiling, no plane or tile that it holds
    is ever encoded again. ``overwrite`` replaces a cache made for other data or
    settings, or a damaged one, but never a folder holding anything else. ``lock``, the
    cache's :class:`~napari_sam.io.store_lock.StoreLock` held by the caller, keeps other
    runs from creating or replacing the cache for as long as the caller holds it (as
    ``napari-sam embed`` does for its whole run); without it the lock is taken only while
    the cache is created or replaced. ``model`` is a registry name, checkpoint file,
    :class:`~napari_sam.engine.model.loading.SamModel` or a ready
    :class:`~napari_sam.engine.prediction.predictor.Predictor` (which keeps its own
    precision); ``precision`` (auto, fp32, bf16) is the encoder's for the others. The
    cache records the resolved precision: a cache of the other one is a mismatch, except
    under ``"auto"``, which takes an existing cache's precision (see
    :func:`cache_precision`).

    Raises
    ------
    CacheMismatchError
        ``cache_path`` holds a cache for other data or settings and ``overwrite`` is
        False, is damaged, or holds files that are not a cache's.
    InvalidInputError
        ``cache_path`` is a file.
    StoreInUseError
        The cache must be created or replaced while another run writes it.
    """
    if isinstance(model, Predictor):
        predictor = model
    else:
        predictor = Predictor(model, precision=cache_precision(cache_path, precision))
    session = open_session(predictor, data, channel_axis, channel, capacity, tile, halo, upscale)
    tiling = (
        (session.tile, session.halo, session.upscale)
        if isinstance(session, TiledSession)
        else (None, 0, 1.0)
    )
    signature = cache_signature(
        data,
        session.layout,
        session.model_id,
        session.normalization,
        feature_dtype,
        tile=tiling[0],
        halo=tiling[1],
        upscale=tiling[2],
        precision=predictor.precision,
    )
    cache = EmbeddingCache.open(
        cache_path, signature, session.layout, overwrite=overwrite, lock=lock
    )
    if isinstance(session, TiledSession):
        session.tile_backends = cache.tiles
    else:
        session.store.backend = cache
    session.cache = cache
    return session


def cache_precision(cache_path: str | Path, precision: str = AUTO) -> str:
    """The precision to open the embedding cache at ``cache_path`` with.

    ``"auto"`` resolves per machine (bf16 on CPUs with AMX, fp32 elsewhere), so a cache
    made under auto on one machine would not open under auto on another. Under
    ``"auto"`` an existing cache's recorded precision is taken instead: its planes are
    read as they are, and planes still to encode are encoded in the same precision (on a
    CPU without native bf16, slowly: logged). ``"fp32"`` and ``"bf16"`` are kept as asked.

    Raises
    ------
    InvalidInputError
        ``precision`` is not auto, fp32 or bf16.
    """
    if check_precision(precision) != AUTO:
        return precision
    recorded = recorded_precision(cache_path)
    if recorded is None:
        return AUTO
    if recorded != resolve_precision(AUTO, "cpu"):
        log.warning(
            "The cache %s holds %s embeddings: planes still to encode are encoded in %s "
            "too (on this CPU auto means otherwise; %s). Use another cache path to encode "
            "in this CPU's best precision.",
            cache_path,
            recorded,
            recorded,
            "bf16 is slower than fp32 here" if recorded == "bf16" else "bf16 is faster here",
        )
    return recorded


def embed_volume(
    session: AnnotationSession,
    planes: Sequence[tuple[int, ...]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EmbedSummary:
    """Encode the given planes (default: all) of a session backed by an embedding cache.

    Parameters
    ----------
    session : AnnotationSession
        From :func:`open_cached_session` (a plain or tiled session).
    planes : sequence of plane keys, optional
    progress : callable, optional
        ``progress(done, total)`` after each plane, or each tile of a tiled session.
    should_stop : callable, optional
        Polled inside the encoder; raises OperationCancelled. Completed planes stay.
    """
    layout = session.layout
    if planes is None:
        planes = (
            [tuple(int(i) for i in k) for k in np.ndindex(*layout.stack_shape)]
            if layout.stack_ndim
            else [()]
        )
    start = time.perf_counter()
    if isinstance(session, TiledSession):
        encoded, units, per_plane = _embed_tiles(session, planes, progress, should_stop)
    else:
        encoded, units, per_plane = (
            _embed_planes(session, planes, progress, should_stop),
            len(planes),
            1,
        )
    group = _cache_of(session).group
    return EmbedSummary(
        cache=str(group.store.root) if hasattr(group.store, "root") else "",
        planes=len(planes),
        encoded=encoded,
        reused=units - encoded,
        seconds=round(time.perf_counter() - start, 3),
        tiles_per_plane=per_plane,
    )


def _embed_planes(session: AnnotationSession, planes, progress, should_stop) -> int:
    encoded = 0
    for done, key in enumerate(planes, start=1):
        if _cache_of(session).load(key) is None:
            session.embed(key, should_stop=should_stop)
            encoded += 1
        if progress is not None:
            progress(done, len(planes))
    return encoded


def _embed_tiles(session: TiledSession, planes, progress, should_stop) -> tuple[int, int, int]:
    encoded, per_plane = 0, len(session.cache.grid)
    total = per_plane * len(planes)
    for count, key in enumerate(planes):
        report = (
            None
            if progress is None
            else (lambda done, _, base=count * per_plane: progress(base + done, total))
        )
        encoded += session.plane(key).encode_tiles(should_stop, report)
    return encoded, total, per_plane


def _cache_of(session: AnnotationSession) -> EmbeddingCache:
    """The cache behind a session from :func:`open_cached_session` (or given as backend)."""
    cache = session.cache or session.store.backend
    if not isinstance(cache, EmbeddingCache):
        raise InvalidInputError(
            "This session keeps no embedding cache: open it with open_cached_session."
        )
    return cache
