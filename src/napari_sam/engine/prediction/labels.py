"""Turning boolean masks into one label image without overlaps.

Objects are painted in the given order; a pixel already claimed by an earlier object is
kept unless ``overwrite`` is set, so nothing committed earlier is silently replaced.
"""

from __future__ import annotations

import numpy as np

from napari_sam.errors import InvalidInputError


def paint_masks(
    masks: np.ndarray,
    labels: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    overwrite: bool = False,
) -> np.ndarray:
    """Paint masks into a label image.

    Parameters
    ----------
    masks : numpy.ndarray, shape (N, rows, cols), bool
    labels : numpy.ndarray, shape (rows, cols), int, optional
        Existing labels to paint into (a copy is returned); zeros when omitted.
    ids : numpy.ndarray, shape (N,), int, optional
        Label of each mask; default ``max(labels) + 1 ...``.
    overwrite : bool
        Let a mask replace pixels of other objects.

    Returns
    -------
    numpy.ndarray, shape (rows, cols), int32
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise InvalidInputError(f"masks must have shape (N, rows, cols); got {masks.shape}.")
    out = np.zeros(masks.shape[1:], np.int32) if labels is None else np.array(labels, np.int32)
    if out.shape != masks.shape[1:]:
        raise InvalidInputError(
            f"labels of shape {out.shape} do not match masks {masks.shape[1:]}."
        )
    if ids is None:
        ids = np.arange(1, len(masks) + 1) + int(out.max(initial=0))
    for mask, label in zip(masks, np.asarray(ids)):
        target = mask if overwrite else mask & (out == 0)
        out[target] = label
    return out
