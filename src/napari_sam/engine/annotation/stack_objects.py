"""Propagation in an annotation session: objects of one slice carried through the stack.

:class:`~napari_sam.engine.annotation.session.AnnotationSession` exposes these as
``session.propagate(...)`` and ``session.correct(...)``; the napari annotator, the CLI
(``napari-sam predict STACK --prompts FILE --propagate``) and console scripts all come
here. The algorithm lives in :mod:`~napari_sam.engine.annotation.propagation`; this
module turns plane keys and masks into its slices and anchors, decodes on the session's
(cached) embeddings, and paints results into label volumes without overwriting other
objects unless asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.annotation.objects import plan_commit
from napari_sam.engine.annotation.projection import SlicePrompt
from napari_sam.engine.annotation.propagation import (
    PropagatedObject,
    PropagationSettings,
    correct,
    propagate,
)
from napari_sam.errors import InvalidInputError

if TYPE_CHECKING:
    from napari_sam.engine.annotation.previews import Preview

Anchor = tuple[np.ndarray, np.ndarray | None]  # mask (rows, cols) bool, logits or None


@dataclass(frozen=True, eq=False)
class Propagation:
    """Objects carried along one stack axis from a plane key.

    ``key`` is any plane key of the stack; ``axis`` indexes into it (0: the first stack
    axis, e.g. z of a (z, row, col) stack or t of (t, z, row, col)); the other entries of
    ``key`` say which line of slices was followed.
    """

    key: tuple[int, ...]
    axis: int
    length: int  # slices along the axis
    shape: tuple[int, int]  # (rows, cols) of a plane
    objects: tuple[PropagatedObject, ...]

    def plane_key(self, index: int) -> tuple[int, ...]:
        """The plane key of slice ``index`` along the axis."""
        key = list(self.key)
        key[self.axis] = index
        return tuple(key)

    def labels(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """(length, rows, cols) int32: object i painted as ``ids[i]`` (default i + 1).

        Earlier objects win where two overlap.
        """
        ids = list(range(1, len(self.objects) + 1)) if ids is None else list(ids)
        out = np.zeros((self.length, *self.shape), np.int32)
        for item, label in reversed(list(zip(self.objects, ids))):
            for index, footprint in item.slices.items():
                out[index][footprint.paste(self.shape)] = label
        return out

    def changes(
        self, labels, ids: Sequence[int], overwrite: bool = False, clear_outside: bool = False
    ) -> Iterator[SliceChange]:
        """The pixel writes that put the objects into ``labels``, one slice at a time.

        On each slice an object's old pixels are cleared and its new mask written where
        no other object owns the pixels (unless ``overwrite``); earlier objects win
        where two overlap. ``labels`` is read, never written.

        Parameters
        ----------
        labels : array-like, shape (*stack, rows, cols) int
            The current labels of the whole stack (numpy, zarr, a napari layer's data).
        ids : sequence of int
            The id of each object.
        overwrite : bool
            Let the objects take pixels of other objects (never by default).
        clear_outside : bool
            Also clear the objects' ids on the slices of this line that they no longer
            reach (a corrected object that got shorter).

        Yields
        ------
        SliceChange
        """
        if len(ids) != len(self.objects):
            raise InvalidInputError(f"{len(self.objects)} objects but {len(ids)} ids.")
        reached = {i for item in self.objects for i in item.slices}
        for index in range(self.length) if clear_outside else sorted(reached):
            key = self.plane_key(index)
            plane = np.asarray(labels[key])
            if index not in reached:
                rows, cols = np.nonzero(np.isin(plane, list(ids)))
                if len(rows):
                    yield SliceChange(key, rows, cols, np.zeros(len(rows), np.int64), 0)
                continue
            present = [(o, label) for o, label in zip(self.objects, ids) if index in o.slices]
            masks = np.stack([item.slices[index].paste(self.shape) for item, _ in present])
            chosen = [label for _, label in present]
            cleared = np.isin(plane, chosen)
            plan = plan_commit(np.where(cleared, 0, plane), masks, 1, overwrite, ids=chosen)
            new = np.zeros(plane.shape, np.int64)
            new[plan.rows, plan.cols] = plan.values
            rows, cols = np.nonzero(cleared | (new != 0))
            yield SliceChange(key, rows, cols, new[rows, cols], plan.blocked_pixels)

    def paint(self, labels, ids: Sequence[int], overwrite: bool = False) -> dict[int, int]:
        """Write the objects into ``labels`` in place (see :meth:`changes`).

        Returns
        -------
        dict
            Slice index -> pixels left alone because another object owns them.
        """
        blocked = {}
        for change in list(self.changes(labels, ids, overwrite)):
            plane = np.asarray(labels[change.key]).copy()
            plane[change.rows, change.cols] = change.values
            labels[change.key] = plane
            if change.blocked_pixels:
                blocked[change.key[self.axis]] = change.blocked_pixels
        return blocked


@dataclass(frozen=True, eq=False)
class SliceChange:
    """Pixel writes on one plane: ``labels[key][rows, cols] = values``."""

    key: tuple[int, ...]
    rows: np.ndarray  # (P,) int
    cols: np.ndarray  # (P,) int
    values: np.ndarray  # (P,) int64, 0 where an object's old pixels are cleared
    blocked_pixels: int  # mask pixels left alone because another object owns them


def slice_decoder(session: Any, key: tuple[int, ...], axis: int):
    """``decode(slice, prompts)`` on the session's planes along ``axis`` through ``key``."""

    def decode(index: int, prompts: list[SlicePrompt]):
        plane = list(key)
        plane[axis] = index
        found = session.decode_prompts(tuple(plane), prompts)
        return [(p.masks[0], float(p.scores[0]), p.logits[0]) for p in found]

    return decode


def anchors_from(
    objects: Preview | np.ndarray | Sequence[Mapping], index: int
) -> list[dict[int, Anchor]]:
    """Per object, slice -> (mask, logits) from a preview, masks on one slice, or mappings."""
    from napari_sam.engine.annotation.previews import Preview

    if isinstance(objects, Preview):
        return [
            {index: (item.mask, item.prediction.logits[item.chosen])} for item in objects.objects
        ]
    if isinstance(objects, np.ndarray):
        if objects.ndim == 2:
            objects = objects[None]
        if objects.ndim != 3 or objects.dtype != bool:
            raise InvalidInputError(
                f"masks must be (N, rows, cols) bool; got {objects.shape} {objects.dtype}."
            )
        return [{index: (mask, None)} for mask in objects]
    return [{int(k): _anchor(value) for k, value in item.items()} for item in objects]


def _anchor(value) -> Anchor:
    """A mask, or a (mask, logits) pair -> (mask bool, logits or None)."""
    if isinstance(value, tuple):
        mask, logits = value
        return np.asarray(mask, bool), None if logits is None else np.asarray(logits, np.float32)
    return np.asarray(value, bool), None


def propagate_in_session(
    session: Any,
    key: tuple[int, ...],
    objects,
    axis: int = 0,
    settings: PropagationSettings | None = None,
    limits: Sequence[tuple[int, int]] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Propagation:
    """See :meth:`AnnotationSession.propagate`."""
    key = session.layout.check_key(key)
    if not 0 <= axis < len(key):
        raise InvalidInputError(
            f"axis {axis} does not exist: this data has {len(key)} stack axes "
            f"(shape {session.layout.stack_shape}); propagation needs a stack."
        )
    length = session.layout.stack_shape[axis]
    anchors = anchors_from(objects, key[axis])
    found = propagate(
        slice_decoder(session, key, axis), anchors, length, settings, limits, should_stop, progress
    )
    return Propagation(key, axis, length, session.layout.plane_shape, tuple(found))


def correct_in_session(
    session: Any,
    propagation: Propagation,
    item: int,
    index: int,
    mask: np.ndarray,
    logits: np.ndarray | None = None,
    settings: PropagationSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Propagation:
    """See :meth:`AnnotationSession.correct`."""
    if not 0 <= item < len(propagation.objects):
        raise InvalidInputError(
            f"No object {item}: this propagation holds {len(propagation.objects)} objects."
        )
    decode = slice_decoder(session, propagation.key, propagation.axis)
    fixed = correct(
        decode,
        propagation.objects[item],
        index,
        np.asarray(mask, bool),
        logits,
        propagation.length,
        settings,
        should_stop=should_stop,
        progress=progress,
    )
    objects = list(propagation.objects)
    objects[item] = fixed
    return replace(propagation, objects=tuple(objects))
