"""Segment everything on an n-D image layer: a plane for preview, or the whole stack in 3D.

The state behind the "SAM segment everything" widget, usable the same way from the napari
console. One intensity normalisation serves the whole stack (no contrast jumps between
slices). The expensive decoding of each previewed plane is kept (a few planes), so moving
a threshold slider only re-runs :meth:`AutomaticSegmenter.generate`. A stack run segments
every plane, then links the planes of each z-stack into 3D objects
(:func:`~napari_sam.engine.everything.linking.link_slices`). For stacks larger than memory, use the
batch CLI (``napari-sam segment-everything``), which writes into zarr.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_sam.engine.everything.linking import LinkingSettings, link_slices
from napari_sam.engine.everything.segmenter import AutomaticSegmenter, Candidates, PlaneSegmentation
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.prediction.planes import (
    PlaneKey,
    PlaneView,
    plane_layout,
    stack_normalization,
)
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import InvalidInputError, OperationCancelled

# A plane segmenter used instead of the grid (see EverythingSession.use_method).
PlaneMethod = Callable[..., PlaneSegmentation]

KEPT_PLANES = 4  # decoded planes kept for re-thresholding (50-150 MB each, on the decoder's device)


@dataclass(frozen=True, eq=False)
class StackSegmentation:
    """Labels of a whole stack."""

    labels: np.ndarray  # layer shape without channels, int32; 3D objects when linked
    objects: int  # distinct labels
    planes: int  # planes segmented
    points_decoded: int  # grid points decoded over all planes


class EverythingSession:
    """Segment-everything state for one image (2D, z-stack, or t, z).

    Parameters
    ----------
    predictor : Predictor
    data : array-like, (..., rows, cols) or (..., rows, cols, channels)
        numpy, dask or zarr; read one plane (or tile) at a time.
    channel_axis : bool
        The last axis holds channels (RGB, or multichannel with ``channel``).
    channel : int, optional
        Channel to segment in multichannel data.
    settings : EverythingSettings, optional
    tile, halo : int, optional
        Tiling of large planes (see :mod:`napari_sam.engine.tiling.grid`); none by default.
    linking : LinkingSettings, optional
        How planes of a z-stack are linked into 3D objects.
    """

    def __init__(
        self,
        predictor: Predictor,
        data,
        channel_axis: bool = False,
        channel: int | None = None,
        settings: EverythingSettings | None = None,
        tile: int | None = None,
        halo: int = 0,
        linking: LinkingSettings | None = None,
    ) -> None:
        self.predictor = predictor
        self.data = data
        self.layout = plane_layout(np.shape(data), channel_axis)
        self.normalization = stack_normalization(data, self.layout, channel=channel)
        self.settings = settings or EverythingSettings()
        self.tile, self.halo = tile, halo
        self.linking = linking or LinkingSettings()
        self.embeddings = None  # an AnnotationSession whose (cached) embeddings are reused
        self.method: PlaneMethod | None = None  # None: the point grid; else see use_method
        self._kept: OrderedDict[PlaneKey, Candidates] = OrderedDict()
        self._results: OrderedDict[PlaneKey, PlaneSegmentation] = OrderedDict()

    @classmethod
    def from_session(
        cls,
        session,
        settings: EverythingSettings | None = None,
        linking: LinkingSettings | None = None,
    ) -> EverythingSession:
        """Segment everything on the planes (or tiles) of an annotation session, reusing
        its embeddings: with a session from
        :func:`~napari_sam.batch.embedding.open_cached_session`, the embedding cache made by
        ``napari-sam embed`` or the annotator, so no plane or tile is encoded twice.
        """
        everything = cls.__new__(cls)
        everything.predictor, everything.data = session.predictor, session.data
        everything.layout, everything.normalization = session.layout, session.normalization
        everything.settings = settings or EverythingSettings()
        everything.tile, everything.halo = (
            getattr(session, "tile", None),
            getattr(session, "halo", 0),
        )
        everything.linking = linking or LinkingSettings()
        everything.embeddings = session
        everything.method = None
        everything._kept = OrderedDict()
        everything._results = OrderedDict()
        return everything

    def use_method(self, method: PlaneMethod | None) -> None:
        """Segment planes with ``method`` instead of the point grid (None: the grid again).

        ``method(plane, normalization, tile=, halo=, embed=, should_stop=, progress=)``
        returns a :class:`PlaneSegmentation`, e.g. the ``segment`` of an
        :class:`~napari_sam.engine.instances.segmenter.HeadSegmenter` (an instance head).
        Such a method has no cheap re-threshold: :meth:`generate` returns what
        :meth:`initialise` made, and new thresholds need a new :meth:`initialise`.
        """
        self.method = method
        self._kept.clear()
        self._results.clear()

    def _embedder(self, key: PlaneKey, should_stop):
        """``embed(window)`` from the annotation session, or None to encode directly."""
        session = self.embeddings
        if session is None:
            return None
        if hasattr(session, "plane"):  # a TiledSession: windows come from its TiledPlane
            plane = session.plane(key)
            return lambda window: plane.embedding(window, should_stop)
        return lambda window: session.embed(key, should_stop)

    def initialise(
        self,
        key: PlaneKey = (),
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Candidates | None:
        """Decode one plane (slow) and keep the result for :meth:`generate` (which
        returns None when a method replaces the grid: its labels are kept instead)."""
        key = self.layout.check_key(key)
        if self.method is not None:
            self._results[key] = self._segment_with_method(key, should_stop, progress)
            self._results.move_to_end(key)
            while len(self._results) > KEPT_PLANES:
                self._results.popitem(last=False)
            return None
        segmenter = AutomaticSegmenter(self.predictor, self.settings)
        candidates = segmenter.initialise(
            PlaneView(self.data, self.layout, key),
            self.normalization,
            tile=self.tile,
            halo=self.halo,
            embed=self._embedder(key, should_stop),
            should_stop=should_stop,
            progress=progress,
        )
        self._kept[key] = candidates
        self._kept.move_to_end(key)
        while len(self._kept) > KEPT_PLANES:
            self._kept.popitem(last=False)
        return candidates

    def has_candidates(self, key: PlaneKey) -> bool:
        """Whether :meth:`generate` can run on this plane without decoding."""
        return tuple(key) in (self._kept if self.method is None else self._results)

    def _segment_with_method(self, key: PlaneKey, should_stop, progress) -> PlaneSegmentation:
        assert self.method is not None  # checked by the callers
        return self.method(
            PlaneView(self.data, self.layout, key),
            self.normalization,
            tile=self.tile,
            halo=self.halo,
            embed=self._embedder(key, should_stop),
            should_stop=should_stop,
            progress=progress,
        )

    def generate(
        self, key: PlaneKey = (), settings: EverythingSettings | None = None
    ) -> PlaneSegmentation:
        """Labels of a decoded plane with (new) thresholds; fast.

        Raises
        ------
        InvalidInputError
            The plane was not decoded yet (call :meth:`initialise`).
        """
        key = tuple(key)
        if self.method is not None and key in self._results:
            return self._results[key]
        if key not in self._kept:
            raise InvalidInputError(
                f"Plane {key} has not been decoded yet: run initialise({key}) first."
            )
        if settings is not None:
            self.settings = settings
        return AutomaticSegmenter(self.predictor, self.settings).generate(
            self._kept[key], self.settings
        )

    def segment_stack(
        self,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
        link: bool = True,
    ) -> StackSegmentation:
        """Segment every plane, then link each z-stack (the last stack axis) into 3D objects.

        ``progress(done, total)`` counts planes. Nothing is returned on cancel
        (OperationCancelled), so a partial result can never replace the user's labels.
        """
        layout = self.layout
        keys = (
            [tuple(int(i) for i in k) for k in np.ndindex(*layout.stack_shape)]
            if layout.stack_ndim
            else [()]
        )
        labels = np.zeros(layout.stack_shape + layout.plane_shape, np.int32)
        segmenter = AutomaticSegmenter(self.predictor, self.settings)
        decoded = 0
        for done, key in enumerate(keys):
            if should_stop is not None and should_stop():
                raise OperationCancelled("Segment everything was cancelled.")
            if self.method is not None:
                result = self._segment_with_method(key, should_stop, None)
            else:
                candidates = segmenter.initialise(
                    PlaneView(self.data, layout, key),
                    self.normalization,
                    tile=self.tile,
                    halo=self.halo,
                    embed=self._embedder(key, should_stop),
                    should_stop=should_stop,
                )
                result = segmenter.generate(candidates, self.settings)
            decoded += result.points_decoded
            labels[key] = result.labels
            if progress is not None:
                progress(done + 1, len(keys))
        labels = (
            self._link(labels, should_stop)
            if link and layout.stack_ndim
            else _number_planes(labels, layout.stack_ndim)
        )
        return StackSegmentation(labels, int(len(np.unique(labels)) - 1), len(keys), decoded)

    def _link(self, labels: np.ndarray, should_stop) -> np.ndarray:
        """Link along the last stack axis, separately for each leading index (e.g. time)."""
        stacks = labels.reshape((-1,) + labels.shape[-3:])
        out = np.zeros_like(stacks)
        offset: int = 0
        for i, stack in enumerate(stacks):
            linked = np.asarray(link_slices(stack, self.linking, should_stop=should_stop).labels)
            out[i] = np.where(linked > 0, linked + offset, 0)
            offset = int(out[i].max(initial=offset))
        return out.reshape(labels.shape)


def _number_planes(labels: np.ndarray, stack_ndim: int) -> np.ndarray:
    """Unlinked planes: give each plane's objects ids after the previous plane's."""
    if stack_ndim == 0:
        return labels
    flat = labels.reshape((-1,) + labels.shape[-2:])
    offset = 0
    for plane in flat:
        plane[plane > 0] += offset
        offset = int(plane.max(initial=offset))
    return labels
