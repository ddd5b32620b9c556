"""Encode every plane of a volume into an embedding cache, resumably.

One code path for the CLI (``napari-sam embed``), the napari widgets and the console:
planes already complete in the cache are skipped, the rest are encoded one at a time (so
memory stays flat whatever the number of planes) and written as they finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam.engine.annotation import AnnotationSession
from napari_sam.io.embedding_cache import EmbeddingCache, cache_signature


@dataclass(frozen=True)
class EmbedSummary:
    """What an embedding run did."""

    cache: str  # path of the zarr group
    planes: int  # planes asked for
    encoded: int  # planes the encoder ran on in this run
    reused: int  # planes already complete in the cache
    seconds: float  # wall time of this run


def open_cached_session(
    data, cache_path: str | Path, model="vit_t", channel_axis: bool = False,
    channel: int | None = None, feature_dtype: str = "float32", overwrite: bool = False,
    capacity: int = 16,
) -> AnnotationSession:
    """An :class:`AnnotationSession` whose embeddings persist in ``cache_path``.

    If the cache already exists for this data and model, its normalisation is reused and
    no plane that it holds is ever encoded again.
    """
    session = AnnotationSession(model, data, channel_axis=channel_axis, channel=channel, capacity=capacity)
    signature = cache_signature(data, session.layout, session.model_id, session.normalization, feature_dtype)
    cache = EmbeddingCache.open(cache_path, signature, session.layout, overwrite=overwrite)
    session.store.backend = cache
    return session


def embed_volume(
    session: AnnotationSession, planes: Sequence[tuple[int, ...]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EmbedSummary:
    """Encode the given planes (default: all) of a session backed by an embedding cache.

    Parameters
    ----------
    session : AnnotationSession
        From :func:`open_cached_session`.
    planes : sequence of plane keys, optional
    progress : callable, optional
        ``progress(done, total)`` after each plane.
    should_stop : callable, optional
        Polled inside the encoder; raises OperationCancelled. Completed planes stay.
    """
    cache = session.store.backend
    layout = session.layout
    if planes is None:
        planes = [tuple(int(i) for i in k) for k in np.ndindex(*layout.stack_shape)] if layout.stack_ndim else [()]
    start = time.perf_counter()
    encoded = reused = 0
    for done, key in enumerate(planes, start=1):
        if cache.load(key) is not None:
            reused += 1
        else:
            session.embed(key, should_stop=should_stop)
            encoded += 1
        if progress is not None:
            progress(done, len(planes))
    return EmbedSummary(
        cache=str(cache.group.store.root) if hasattr(cache.group.store, "root") else "",
        planes=len(planes), encoded=encoded, reused=reused,
        seconds=round(time.perf_counter() - start, 3),
    )
