"""Interactive annotation of a 2D image or a stack: the engine behind the napari widget.

An :class:`AnnotationSession` owns a predictor, the data (numpy, memory-mapped or dask;
2D, or a stack of planes), one intensity normalisation for the whole stack, and a
bounded store of plane embeddings. The widget (or a console user) asks it to embed a
plane, usually from a worker thread, then to preview objects for the prompts on that
plane (tens of milliseconds), and to plan commits into a label image. Nothing here knows
about Qt or napari.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.annotation.embedding_store import EmbeddingBackend, EmbeddingStore
from napari_sam.engine.annotation.objects import ObjectPrompt, group_prompts, mask_to_logits
from napari_sam.engine.annotation.previews import ObjectPreview, Preview
from napari_sam.engine.annotation.projection import SlicePrompt
from napari_sam.engine.annotation.propagation import PropagationSettings
from napari_sam.engine.annotation.stack_objects import (
    Propagation,
    correct_in_session,
    propagate_in_session,
)
from napari_sam.engine.model.loading import SamModel
from napari_sam.engine.prediction.planes import (
    PlaneKey,
    plane_layout,
    read_plane,
    stack_normalization,
)
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.engine.prediction.results import Embedding, Prediction


class AnnotationSession:
    """Prompts to masks on the planes of one image or stack.

    Parameters
    ----------
    model : str, pathlib.Path, SamModel or Predictor
        As for :class:`~napari_sam.engine.prediction.predictor.Predictor`, or a predictor
        to use as it is (with its device and precision).
    data : array-like
        (rows, cols), (..., rows, cols), or with a trailing channel axis.
    channel_axis : bool
        The last axis holds channels (RGB, or multichannel with ``channel`` chosen).
    channel : int, optional
        Channel to segment in multichannel data.
    normalization : Normalization, optional
        Default: computed once from a few planes of ``data``.
    capacity : int
        Embeddings kept in memory (4 MB each for the default model).
    backend : EmbeddingBackend, optional
        Persistent embedding cache consulted before encoding.
    """

    def __init__(
        self,
        model: str | Path | SamModel | Predictor,
        data,
        channel_axis: bool = False,
        channel: int | None = None,
        normalization: Normalization | None = None,
        capacity: int = 16,
        backend: EmbeddingBackend | None = None,
    ) -> None:
        self.predictor = model if isinstance(model, Predictor) else Predictor(model)
        self.data = data
        self.layout = plane_layout(np.shape(data), channel_axis)
        self.normalization = normalization or stack_normalization(data, self.layout, channel)
        self.store = EmbeddingStore(capacity, backend)
        # The persistent store behind the embeddings when one is attached (an io
        # EmbeddingCache, see napari_sam.batch.embedding.open_cached_session); None otherwise.
        self.cache: Any = None
        self._current: PlaneKey | None = None

    @property
    def model_id(self) -> str:
        """Identity of the weights in use."""
        return self.predictor.model.model_id

    def has_embedding(self, key: PlaneKey) -> bool:
        """True when ``key`` can be previewed without running the encoder."""
        return self.store.get(tuple(key)) is not None

    def embed(self, key: PlaneKey = (), should_stop: Callable[[], bool] | None = None) -> Embedding:
        """The embedding of one plane, computed on first use (safe from a worker thread)."""
        key = self.layout.check_key(key)
        found = self.store.get(key)
        if found is not None:
            return found
        plane = read_plane(self.data, self.layout, key)
        embedding = self.predictor.encode(plane, self.normalization, should_stop)
        self.store.put(key, embedding)
        return embedding

    def neighbours(self, key: PlaneKey, reach: int = 1) -> list[PlaneKey]:
        """Planes next to ``key`` along the first stack axis, nearest first, to prefetch."""
        if not key:
            return []
        found = []
        for step in range(1, reach + 1):
            for sign in (1, -1):
                z = key[0] + sign * step
                if 0 <= z < self.layout.stack_shape[0]:
                    found.append((z, *key[1:]))
        return found

    def preview(
        self,
        key: PlaneKey = (),
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mode: str = "single",
        mask_input: np.ndarray | None = None,
    ) -> Preview:
        """Masks for every object described by the prompts on one plane.

        Objects with the same prompt structure are decoded together in one batched call.
        ``mask_input`` (rows, cols) bool refines the first object (e.g. an existing
        label being corrected). Embeds the plane first if needed (slow).
        """
        key = self.layout.check_key(key)
        self._activate(key)
        objects = group_prompts(points, point_labels, boxes, mode)
        logits = None
        if mask_input is not None:
            embedding = self.predictor.embedding
            logits = mask_to_logits(
                mask_input, embedding.input_size, self.predictor.model.input_size
            )
            if not objects:
                objects = [
                    ObjectPrompt(np.zeros((0, 2)), np.zeros(0, int), bounding_box(mask_input))
                ]
        results: list[ObjectPreview | None] = [None] * len(objects)
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(objects):
            signature = (item.signature(), item.ambiguous, logits is not None and index == 0)
            groups.setdefault(signature, []).append(index)
        for (_, ambiguous, refine), members in groups.items():
            batch = self._decode(
                [objects[i] for i in members], ambiguous, logits if refine else None
            )
            for i, prediction in zip(members, batch):
                results[i] = ObjectPreview(objects[i], prediction, prediction.best)
        return Preview(key, tuple(r for r in results if r is not None))

    def decode_prompts(self, key: PlaneKey, prompts: Sequence[SlicePrompt]) -> list[Prediction]:
        """One mask per object prompt on plane ``key``, objects decoded in batches.

        Prompts with the same structure (box or not, point count, mask prompt or not)
        share one decoder call. Embeds the plane first if needed (slow).
        """
        key = self.layout.check_key(key)
        self._activate(key)
        results: list[Prediction | None] = [None] * len(prompts)
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(prompts):
            signature = (item.box is not None, len(item.points), item.logits is not None)
            groups.setdefault(signature, []).append(index)
        for (has_box, count, has_logits), members in groups.items():
            chosen = [prompts[i] for i in members]
            batch = self.predictor.predict_batch(
                points=np.stack([p.points for p in chosen]) if count else None,
                point_labels=np.stack([p.labels for p in chosen]) if count else None,
                boxes=np.stack([p.box for p in chosen]) if has_box else None,  # type: ignore[misc]
                mask_input=np.stack([p.logits for p in chosen]) if has_logits else None,  # type: ignore[misc]
                multimask=False,
            )
            for i, position in enumerate(members):
                results[position] = batch[i]
        return [r for r in results if r is not None]

    def propagate(
        self,
        key: PlaneKey,
        objects,
        axis: int = 0,
        settings: PropagationSettings | None = None,
        limits: Sequence[tuple[int, int]] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Propagation:
        """Carry objects of plane ``key`` through the stack along one axis.

        Parameters
        ----------
        key : tuple of int
            The plane where the objects are given.
        objects : Preview, numpy.ndarray or sequence of mappings
            A :class:`Preview` of that plane (its chosen masks and their logits), masks
            (N, rows, cols) bool on that plane, or per object a mapping slice index ->
            (rows, cols) bool mask for several prompted slices (joined in the middle).
        axis : int
            Which stack axis to follow (0: the first, z of a z-stack, t of a t-stack).
        settings : PropagationSettings, optional
            Projection and stop rule; the defaults were chosen on labelled volumes.
        limits : sequence of (first, last), optional
            Per object, the inclusive slice range it may reach (the user's marks).
        should_stop, progress : callable, optional
            Cancel (raises OperationCancelled) and ``progress(done, total)``.

        Returns
        -------
        Propagation
            Per object its mask on each slice it reaches; ``labels()`` and ``paint()``.
        """
        return propagate_in_session(
            self, key, objects, axis, settings, limits, should_stop, progress
        )

    def correct(
        self,
        propagation: Propagation,
        item: int,
        index: int,
        mask: np.ndarray,
        logits: np.ndarray | None = None,
        settings: PropagationSettings | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Propagation:
        """Replace object ``item``'s mask on slice ``index`` and re-propagate from there.

        Only the slices on the far side of ``index`` (from the anchor that had produced
        it) change; see :func:`~napari_sam.engine.annotation.propagation.correct`.
        """
        return correct_in_session(
            self, propagation, item, index, mask, logits, settings, should_stop, progress
        )

    def _activate(self, key: PlaneKey) -> None:
        if self._current != key or self.predictor.current_embedding is None:
            self.predictor.set_embedding(self.embed(key))
            self._current = key

    def _decode(self, objects: list[ObjectPrompt], multimask: bool, logits) -> list[Prediction]:
        first = objects[0]
        points = np.stack([o.points for o in objects]) if len(first.points) else None
        labels = np.stack([o.labels for o in objects]) if len(first.points) else None
        boxes = (
            np.stack([o.box for o in objects if o.box is not None])
            if first.box is not None
            else None
        )
        masks = None if logits is None else np.repeat(logits[None], len(objects), axis=0)
        batch = self.predictor.predict_batch(
            points=points, point_labels=labels, boxes=boxes, mask_input=masks, multimask=multimask
        )
        return [batch[i] for i in range(len(batch))]


def bounding_box(mask: np.ndarray) -> np.ndarray | None:
    """(row0, col0, row1, col1) float, inclusive, of a mask's pixels; None when empty."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    return np.array([rows.min(), cols.min(), rows.max(), cols.max()], float)
