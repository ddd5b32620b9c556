"""From a set of prompts on one plane to objects, and from objects to label pixels.

A user's points and boxes describe one or several objects. The rules, shared by the
napari widget, the console and tests:

* every box is one object, refined by the points that lie inside it;
* points outside all boxes form one object together (mode ``"single"``), or each
  positive point starts its own object, with every outside negative point applied to it
  (mode ``"per_point"``);
* negative points alone describe nothing.

Committing never overwrites pixels of other objects unless asked to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_sam.errors import InvalidInputError

MODES = ("single", "per_point")


@dataclass(frozen=True, eq=False)
class ObjectPrompt:
    """The prompts of one object, (row, col) pixels of its plane."""

    points: np.ndarray  # (K, 2) float, may be empty (K = 0)
    labels: np.ndarray  # (K,) int, 1 object / 0 background
    box: np.ndarray | None  # (4,) row0, col0, row1, col1, or None

    @property
    def ambiguous(self) -> bool:
        """A single positive point alone: SAM's three candidates make sense."""
        return self.box is None and len(self.points) == 1 and int(self.labels[0]) == 1

    def signature(self) -> tuple[bool, int]:
        """Objects with the same signature decode together in one batch."""
        return self.box is not None, len(self.points)


def group_prompts(
    points: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
    mode: str = "single",
) -> list[ObjectPrompt]:
    """Split the prompts of one plane into objects (see the module rules).

    Parameters
    ----------
    points : (K, 2) float or None
    labels : (K,) int or None (all positive)
    boxes : (B, 4) float or None
    mode : "single" or "per_point"

    Returns
    -------
    list of ObjectPrompt, boxes first, then point objects in the order of their points.
    """
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}; got {mode!r}.")
    points = np.zeros((0, 2)) if points is None else np.asarray(points, float).reshape(-1, 2)
    labels = np.ones(len(points), int) if labels is None else np.asarray(labels, int).reshape(-1)
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, float).reshape(-1, 4)
    if len(labels) != len(points):
        raise InvalidInputError(f"{len(points)} points but {len(labels)} labels.")
    free = np.ones(len(points), bool)
    objects = []
    for box in boxes:
        inside = (
            (points[:, 0] >= box[0])
            & (points[:, 0] <= box[2])
            & (points[:, 1] >= box[1])
            & (points[:, 1] <= box[3])
            & free
        )
        free &= ~inside
        objects.append(ObjectPrompt(points[inside], labels[inside], box))
    rest, rest_labels = points[free], labels[free]
    positives = rest_labels == 1
    if not positives.any():
        return objects
    if mode == "single":
        objects.append(ObjectPrompt(rest, rest_labels, None))
        return objects
    negatives = rest[~positives]
    for point in rest[positives]:
        objects.append(
            ObjectPrompt(
                np.vstack([point[None], negatives]),
                np.concatenate([[1], np.zeros(len(negatives), int)]),
                None,
            )
        )
    return objects


@dataclass(frozen=True, eq=False)
class CommitPlan:
    """Pixels to write into a label plane: ``labels[rows, cols] = values``."""

    rows: np.ndarray  # (P,) int
    cols: np.ndarray  # (P,) int
    values: np.ndarray  # (P,) int, the new object ids
    ids: tuple[int, ...]  # one id per committed object (0 for an object with no free pixel)
    blocked_pixels: int  # mask pixels left alone because another object owns them


def plan_commit(
    plane_labels: np.ndarray,
    masks: np.ndarray,
    next_id: int,
    overwrite: bool = False,
    ids: list[int] | None = None,
) -> CommitPlan:
    """Decide which pixels each new object gets.

    Parameters
    ----------
    plane_labels : (rows, cols) int
        The current labels of the plane (not modified).
    masks : (N, rows, cols) bool
        The objects to commit, in order; earlier ones win where they overlap.
    next_id : int
        Id of the first new object when ``ids`` is not given; later objects count up.
    overwrite : bool
        Let new objects take pixels of existing objects.
    ids : list of int, optional
        Explicit ids (e.g. to replace an object in place when refining it).
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3 or masks.shape[1:] != plane_labels.shape:
        raise InvalidInputError(
            f"masks of shape {masks.shape} do not fit a label plane of shape {plane_labels.shape}."
        )
    ids = list(range(next_id, next_id + len(masks))) if ids is None else list(ids)
    claimed = np.zeros(plane_labels.shape, bool)
    rows, cols, values, used, blocked = [], [], [], [], 0
    for mask, label in zip(masks, ids):
        free = mask & ~claimed
        if not overwrite:
            owned = (plane_labels != 0) & (plane_labels != label)
            blocked += int(np.count_nonzero(free & owned))
            free &= ~owned
        r, c = np.nonzero(free)
        used.append(label if len(r) else 0)
        claimed |= free
        rows.append(r)
        cols.append(c)
        values.append(np.full(len(r), label, dtype=np.int64))
    return CommitPlan(
        np.concatenate(rows) if rows else np.zeros(0, int),
        np.concatenate(cols) if cols else np.zeros(0, int),
        np.concatenate(values) if values else np.zeros(0, int),
        tuple(used),
        blocked,
    )


def mask_to_logits(
    mask: np.ndarray, input_size: tuple[int, int], frame: int, low: int = 256
) -> np.ndarray:
    """A binary mask as SAM's (256, 256) mask-prompt logits.

    The mask is resized like the image (longest side to the encoder frame), padded, and
    averaged down to 256x256; the fraction of object pixels becomes a logit of +-8 at the
    extremes, the confidence range of SAM's own outputs.
    """
    from PIL import Image

    mask = np.asarray(mask, bool)
    resized = (
        np.asarray(
            Image.fromarray(mask.astype(np.uint8) * 255).resize(
                input_size[::-1], Image.Resampling.BILINEAR
            ),
            np.float32,
        )
        / 255.0
    )
    padded = np.zeros((frame, frame), np.float32)
    padded[: input_size[0], : input_size[1]] = resized
    factor = frame // low
    fraction = padded.reshape(low, factor, low, factor).mean(axis=(1, 3))
    return (fraction * 2.0 - 1.0) * 8.0


def on_plane(coords: np.ndarray, key: tuple[int, ...]) -> np.ndarray:
    """(N, ndim) data coordinates -> (N,) bool: which lie on plane ``key``.

    The leading ``len(key)`` coordinates select the plane (rounded, as napari displays
    them); the last two are (row, col).
    """
    coords = np.asarray(coords, float)
    if coords.ndim != 2:
        coords = coords.reshape(len(coords), -1) if coords.size else np.zeros((0, len(key) + 2))
    if not key:
        return np.ones(len(coords), bool)
    leading = np.rint(coords[:, : len(key)]).astype(int)
    return (leading == np.asarray(key)[None]).all(axis=1)


def boxes_on_plane(rectangles: list[np.ndarray], key: tuple[int, ...]) -> np.ndarray:
    """Rectangles given as (4, ndim) vertex arrays -> (B, 4) boxes on plane ``key``.

    Boxes are (row0, col0, row1, col1) from each rectangle's extent in the last two
    axes; rectangles whose vertices are not all on the plane are skipped.
    """
    boxes = []
    for vertices in rectangles:
        vertices = np.asarray(vertices, float)
        if len(vertices) and on_plane(vertices, key).all():
            spatial = vertices[:, -2:]
            boxes.append([*spatial.min(axis=0), *spatial.max(axis=0)])
    return np.array(boxes, float).reshape(-1, 4)
