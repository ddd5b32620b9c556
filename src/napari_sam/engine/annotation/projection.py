"""From an object's mask on one slice to the prompts that find it on the next slice.

Propagating an object through a stack (``napari_sam.engine.annotation.propagation``)
prompts each new slice from the mask of the slice before it. The *projection* says which
prompts carry the object over:

==================  ================================================================
``box``             the mask's bounding box, enlarged by ``margin`` of its size
``box_mask``        the box, and the previous slice's low-resolution logits as SAM's
                    dense mask prompt (its own output, so no conversion is needed)
``points``          a positive point at the interior maximum of the mask's distance
                    transform, and four negative points on an enlarged box around it
``box_point``       the box and the positive point
``box_point_mask``  the box, the positive point and the logits
==================  ================================================================

The choice among them is measured on labelled volumes (``benchmarks/eval_propagation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_sam.errors import InvalidInputError

PROJECTIONS = ("box", "box_mask", "points", "box_point", "box_point_mask")
NEGATIVE_REACH = 0.5  # negative points sit this fraction of the box size outside the box


@dataclass(frozen=True, eq=False)
class SlicePrompt:
    """The prompts of one object on one slice, (row, col) pixels of that slice."""

    box: np.ndarray | None  # (4,) row0, col0, row1, col1, or None
    points: np.ndarray  # (K, 2) float, K may be 0
    labels: np.ndarray  # (K,) int, 1 object / 0 background
    logits: np.ndarray | None  # (256, 256) float32 mask prompt, or None


def check_projection(projection: str) -> str:
    """Return ``projection`` if known, else raise :class:`InvalidInputError`."""
    if projection not in PROJECTIONS:
        raise InvalidInputError(
            f"Unknown projection {projection!r}; choose one of {', '.join(PROJECTIONS)}."
        )
    return projection


def project(
    mask: np.ndarray, logits: np.ndarray | None, projection: str, margin: float
) -> SlicePrompt:
    """The prompts that carry ``mask`` to the next slice.

    Parameters
    ----------
    mask : numpy.ndarray, shape (rows, cols) bool
        The object on the slice before; not empty.
    logits : numpy.ndarray, shape (256, 256) float32, optional
        SAM's low-resolution logits of that mask; needed by the ``*_mask`` projections
        (without them those projections fall back to their prompts without a mask).
    projection : str
        One of :data:`PROJECTIONS`.
    margin : float
        The box grows by this fraction of its height and width on each side.

    Returns
    -------
    SlicePrompt
    """
    check_projection(projection)
    rows, cols = mask.shape
    box = enlarged_box(mask, margin, (rows, cols))
    points = np.zeros((0, 2))
    labels = np.zeros(0, np.int64)
    if "point" in projection:
        points = interior_point(mask)[None]
        labels = np.ones(1, np.int64)
    if projection == "points":
        outside = corner_points(enlarged_box(mask, NEGATIVE_REACH, (rows, cols)))
        points = np.concatenate([points, outside])
        labels = np.concatenate([labels, np.zeros(len(outside), np.int64)])
    return SlicePrompt(
        box=None if projection == "points" else box,
        points=points,
        labels=labels,
        logits=logits if projection.endswith("mask") else None,
    )


def enlarged_box(mask: np.ndarray, margin: float, shape: tuple[int, int]) -> np.ndarray:
    """(row0, col0, row1, col1) of ``mask``, grown by ``margin`` of its size, inside ``shape``."""
    rows, cols = np.nonzero(mask)
    row0, row1, col0, col1 = rows.min(), rows.max(), cols.min(), cols.max()
    grow_rows, grow_cols = margin * (row1 - row0 + 1), margin * (col1 - col0 + 1)
    return np.array(
        [
            max(0.0, row0 - grow_rows),
            max(0.0, col0 - grow_cols),
            min(shape[0] - 1.0, row1 + grow_rows),
            min(shape[1] - 1.0, col1 + grow_cols),
        ]
    )


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(2,) float (row, col): the mask pixel farthest from its border.

    Computed on the mask's bounding box (padded by one), so it costs the object's size,
    not the slice's.
    """
    from scipy.ndimage import distance_transform_edt

    rows, cols = np.nonzero(mask)
    row0, col0 = rows.min(), cols.min()
    crop = np.pad(mask[row0 : rows.max() + 1, col0 : cols.max() + 1], 1)
    distance = distance_transform_edt(crop)
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([row0 + row - 1, col0 + col - 1], float)


def corner_points(box: np.ndarray) -> np.ndarray:
    """(4, 2) float: the corners of a (row0, col0, row1, col1) box."""
    row0, col0, row1, col1 = box
    return np.array([[row0, col0], [row0, col1], [row1, col0], [row1, col1]], float)
