"""Prompts from a file, replayed on a stack and propagated: the engine of ``predict --prompts``.

Two formats are read:

* the annotator's record (``Save record`` in napari, see
  :mod:`~napari_sam.engine.annotation.records`): each committed object with its plane,
  prompts and id;
* a plain list, written by hand or by a script::

      {"objects": [
        {"id": 1, "plane": [30], "box": [40, 52, 71, 90]},
        {"id": 2, "plane": [12], "points": [[100, 80]], "point_labels": [1]},
        {"id": 2, "plane": [25], "points": [[104, 83]]},
        {"id": 3, "plane": [30], "box": [10, 10, 40, 40], "limits": [25, 35]}
      ]}

  ``plane`` holds the object's plane indices (``[z]``, ``[t]`` or ``[t, z]``, ``[]`` for
  2D); ``point_labels`` default to 1; ``limits`` bounds the slices the object may reach
  when propagated. Entries sharing an id are one object prompted on several slices: they
  are joined in the middle.

Each entry is decoded on its plane (one batched decoder call per plane), then, when asked,
all objects are propagated together along one stack axis and painted with their ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam.engine.annotation.projection import SlicePrompt
from napari_sam.engine.annotation.propagation import PropagationSettings
from napari_sam.errors import InvalidInputError


@dataclass(frozen=True, eq=False)
class PromptEntry:
    """One object's prompts on one plane."""

    id: int
    plane: tuple[int, ...]
    points: np.ndarray  # (K, 2) float (row, col)
    labels: np.ndarray  # (K,) int
    box: np.ndarray | None  # (4,) or None
    limits: tuple[int, int] | None  # slice range when propagated


def read_prompts(path: str | Path) -> list[PromptEntry]:
    """Read a record or a plain prompts file (see the module docstring).

    Raises
    ------
    InvalidInputError
        Not JSON, no objects, or an entry without a prompt, with a bad shape or id.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"Cannot read prompts from {path}: {error}.") from error
    items = payload.get("objects") if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not items:
        raise InvalidInputError(
            f'{path} holds no objects: expected {{"objects": [{{"id": 1, "plane": [z], '
            '"box": [row0, col0, row1, col1]}, ...]}, or an annotator record.'
        )
    return [_entry(item, number, path) for number, item in enumerate(items)]


def _entry(item: dict, number: int, path: Path) -> PromptEntry:
    where = f"{path}, object {number}"
    if not isinstance(item, dict):
        raise InvalidInputError(f"{where}: expected an object with plane and prompts.")
    points = np.asarray(item.get("points") or np.zeros((0, 2)), float)
    box = item.get("box")
    if points.ndim != 2 or points.shape[1] != 2:
        raise InvalidInputError(
            f"{where}: points must be [[row, col], ...]; got {points.tolist()}."
        )
    labels = np.asarray(item.get("point_labels") or [1] * len(points), int)
    if len(labels) != len(points):
        raise InvalidInputError(f"{where}: {len(points)} points but {len(labels)} point_labels.")
    if box is None and not (labels == 1).any():
        raise InvalidInputError(f"{where}: give a box or at least one positive point.")
    if box is not None and len(box) != 4:
        raise InvalidInputError(f"{where}: box must be [row0, col0, row1, col1]; got {box}.")
    try:
        label = int(item.get("id", number + 1))
    except (TypeError, ValueError) as error:
        raise InvalidInputError(
            f"{where}: id must be a whole number; got {item.get('id')!r}."
        ) from error
    if label < 1:
        raise InvalidInputError(f"{where}: id must be at least 1 (0 is background); got {label}.")
    limits = item.get("limits")
    return PromptEntry(
        label,
        tuple(int(k) for k in item.get("plane", ())),
        points,
        labels,
        None if box is None else np.asarray(box, float),
        None if limits is None else (int(limits[0]), int(limits[1])),
    )


def segment_prompts(
    session,
    entries: list[PromptEntry],
    axis: int | None = None,
    settings: PropagationSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """Decode every entry on its plane and, with ``axis``, propagate along that stack axis.

    Parameters
    ----------
    session : AnnotationSession
    entries : list of PromptEntry
    axis : int, optional
        Stack axis to propagate along (index into the plane key); None: only the
        prompted planes are segmented.
    settings, should_stop, progress
        As for :meth:`AnnotationSession.propagate`.

    Returns
    -------
    labels : numpy.ndarray, shape (*stack, rows, cols) int32
        Each object painted with its id; an object never takes another's pixels (the
        earlier id in the file wins).
    extents : dict
        id -> (first, last) slice along ``axis`` (the prompted plane without ``axis``).
    """
    layout = session.layout
    masks = decode_entries(session, entries)
    labels = np.zeros(layout.stack_shape + layout.plane_shape, np.int32)
    ids = list(dict.fromkeys(e.id for e in entries))
    if axis is None:
        from napari_sam.engine.annotation.objects import plan_commit

        for entry, (mask, _) in zip(entries, masks):
            plane = labels[entry.plane]
            plan = plan_commit(plane, mask[None], entry.id, ids=[entry.id])
            plane[plan.rows, plan.cols] = plan.values
        return labels, {e.id: (e.plane[0], e.plane[0]) if e.plane else (0, 0) for e in entries}
    anchors, limits, key = _anchors(entries, masks, ids, axis, layout.stack_shape[axis])
    found = session.propagate(key, anchors, axis, settings, limits, should_stop, progress)
    found.paint(labels, ids)
    return labels, {label: item.extent for label, item in zip(ids, found.objects)}


def decode_entries(session, entries: list[PromptEntry]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask (rows, cols) bool, logits (256, 256)) of each entry, batched per plane."""
    out: list = [None] * len(entries)
    planes: dict[tuple[int, ...], list[int]] = {}
    for index, entry in enumerate(entries):
        planes.setdefault(session.layout.check_key(entry.plane), []).append(index)
    for plane, members in planes.items():
        prompts = [
            SlicePrompt(entries[i].box, entries[i].points, entries[i].labels, None) for i in members
        ]
        for index, prediction in zip(members, session.decode_prompts(plane, prompts)):
            out[index] = (prediction.masks[0], prediction.logits[0])
    return out


def _anchors(entries, masks, ids, axis, length):
    """Per id: {slice: (mask, logits)}, its limits, and one plane key of the stack."""
    by_id: dict[int, dict] = {label: {} for label in ids}
    limits = dict.fromkeys(ids, (0, length - 1))
    key = entries[0].plane
    for entry, anchor in zip(entries, masks):
        if len(entry.plane) != len(key) or any(
            a != b for i, (a, b) in enumerate(zip(entry.plane, key)) if i != axis
        ):
            raise InvalidInputError(
                f"Object {entry.id} is on plane {list(entry.plane)} and object "
                f"{entries[0].id} on {list(key)}: propagating along axis {axis} needs every "
                "prompt on the same line of planes (the same indices on the other axes)."
            )
        if not anchor[0].any():
            raise InvalidInputError(
                f"Object {entry.id}'s prompts on plane {list(entry.plane)} give an empty mask; "
                "move the prompt onto the object."
            )
        by_id[entry.id][entry.plane[axis]] = anchor
        if entry.limits is not None:
            limits[entry.id] = entry.limits
    return [by_id[label] for label in ids], [limits[label] for label in ids], key
