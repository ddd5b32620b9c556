"""Pixel writes of a finished propagation, planned off the GUI thread and checked on it.

Working out which pixels each propagated object takes
(:meth:`~napari_sam.engine.annotation.stack_objects.Propagation.changes`) looks at whole
planes per slice and object: about 0.3 ms per slice-object on 256 x 256 planes, seconds for
a large propagation on large planes, too long to freeze napari. The annotator plans the
writes on the torch thread right after propagating, against the labels as they are then;
the GUI thread only checks that none of the planned pixels changed meanwhile (the user may
paint while a propagation runs, and a plain ``layer.data[...] = ...`` sends no event)
before writing them, and plans again if any did. No Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_sam.engine.annotation.propagation import Footprint, PropagatedObject
from napari_sam.engine.annotation.stack_objects import Propagation, SliceChange


@dataclass(frozen=True, eq=False)
class PlannedWrite:
    """The pixel writes that put propagated objects into a labels array, and what they assumed."""

    propagation: Propagation  # the whole result, remembered for later corrections
    objects: Propagation  # what is written: all objects, or a corrected one alone
    ids: tuple[int, ...]  # one per object written
    overwrite: bool  # objects may take other objects' pixels
    only: frozenset[int] | None  # a correction: the slice indices where the object changed
    labels: Any  # the (*stack, rows, cols) labels array planned against
    changes: tuple[SliceChange, ...]
    seen: tuple[np.ndarray, ...]  # per change, (P,) the labels at its pixels when planned

    @property
    def blocked_pixels(self) -> int:
        """Mask pixels left alone because other objects own them."""
        return sum(change.blocked_pixels for change in self.changes)

    def holds(self, labels) -> bool:
        """Whether ``labels`` is the array planned against, unchanged at every planned pixel.

        An edit elsewhere can only keep an object off pixels it could now take, or leave a
        pixel painted with its id outside its new mask: neither touches another object.
        """
        return labels is self.labels and all(
            np.array_equal(np.asarray(labels[change.key])[change.rows, change.cols], seen)
            for change, seen in zip(self.changes, self.seen)
        )

    def again(self, labels) -> PlannedWrite:
        """The same objects and ids planned against ``labels`` as they are now."""
        return plan_write(
            self.propagation, self.objects, self.ids, labels, self.overwrite, self.only
        )


def plan_write(
    propagation: Propagation,
    objects: Propagation,
    ids: tuple[int, ...],
    labels,
    overwrite: bool,
    only: frozenset[int] | None = None,
) -> PlannedWrite:
    """Plan writing ``objects`` as ``ids`` into ``labels`` (read, never written).

    Parameters
    ----------
    propagation : Propagation
        The whole result (kept in the plan).
    objects : Propagation
        The objects to write.
    ids : tuple of int
        One id per object of ``objects``.
    labels : array-like, shape (*stack, rows, cols) int
    overwrite : bool
    only : frozenset of int, optional
        Write only these slice indices, and clear the ids there on slices the objects no
        longer reach (a correction that ends an object sooner).
    """
    changes = tuple(
        change
        for change in objects.changes(labels, ids, overwrite, clear_outside=only is not None)
        if only is None or change.key[objects.axis] in only
    )
    seen = tuple(np.asarray(labels[c.key])[c.rows, c.cols] for c in changes)
    return PlannedWrite(propagation, objects, ids, overwrite, only, labels, changes, seen)


def plan_objects(
    propagation: Propagation, labels, ids: tuple[int, ...] | None, first_id: int, overwrite: bool
) -> PlannedWrite:
    """Plan writing every object of ``propagation``: as ``ids``, or as new ids (:func:`new_ids`)."""
    ids = ids or new_ids(propagation, labels, first_id)
    return plan_write(propagation, propagation, ids, labels, overwrite)


def plan_correction(
    propagation: Propagation, item: int, earlier: Propagation, label: int, labels, overwrite: bool
) -> PlannedWrite:
    """Plan writing object ``item`` of a corrected propagation where it differs from ``earlier``."""
    fixed = propagation.objects[item]
    only = frozenset(changed_slices(earlier.objects[item], fixed))
    return plan_write(
        propagation, replace(propagation, objects=(fixed,)), (label,), labels, overwrite, only
    )


def new_ids(propagation: Propagation, labels, first: int) -> tuple[int, ...]:
    """Ids for new objects: from ``first`` on, above every id on the propagation's slices.

    A new object must not reuse an id found on another slice of its line: writing it there
    would clear that other object's pixels.
    """
    line = max(int(np.max(labels[propagation.plane_key(i)])) for i in range(propagation.length))
    first = max(first, line + 1)
    return tuple(range(first, first + len(propagation.objects)))


def changed_slices(before: PropagatedObject, after: PropagatedObject) -> set[int]:
    """Slice indices where an object's mask differs between two propagations."""
    return {
        index
        for index in before.slices.keys() | after.slices.keys()
        if not _same(before.slices.get(index), after.slices.get(index))
    }


def _same(a: Footprint | None, b: Footprint | None) -> bool:
    if a is b:
        return True
    if a is None or b is None:
        return False
    return a.row == b.row and a.col == b.col and np.array_equal(a.crop, b.crop)


def describe(label: int, item: PropagatedObject) -> str:
    """E.g. "3 (slices 12-41, ended: vanished / grew)"."""
    first, last = item.extent
    return f"{label} (slices {first}-{last}, ended: {item.ends[0]} / {item.ends[1]})"
