"""Checking prompts given in (row, col) and converting them to SAM's encoder frame.

The public API speaks numpy's and napari's (row, col); SAM's prompt encoder wants
(x, y) = (col, row) in the pixels of the resized encoder input. This module is the only
place where that swap and scaling happen.
"""

from __future__ import annotations

import numpy as np

from napari_sam.errors import InvalidInputError

LOW_RES = 256  # side of SAM's low-resolution mask logits


def check_points(
    points: np.ndarray | None, labels: np.ndarray | None, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Validate one object's points.

    Parameters
    ----------
    points : array-like, shape (K, 2), (row, col) pixels, or None
    labels : array-like, shape (K,), 1 = foreground, 0 = background; None = all 1
    shape : (rows, cols) of the image

    Returns
    -------
    (points (K, 2) float64, labels (K,) int64) or None when there are no points
    """
    if points is None:
        if labels is not None:
            raise InvalidInputError("point_labels were given without points.")
        return None
    coords = np.asarray(points, dtype=np.float64)
    if coords.ndim == 1 and coords.size == 2:
        coords = coords[None]
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
        raise InvalidInputError(
            f"points must have shape (K, 2) as (row, col); got {np.shape(points)}."
        )
    _check_inside(coords, shape, "point")
    if labels is None:
        flags = np.ones(len(coords), dtype=np.int64)
    else:
        flags = np.asarray(labels).astype(np.int64).reshape(-1)
        if flags.shape != (len(coords),) or not np.isin(flags, (0, 1)).all():
            raise InvalidInputError(
                f"point_labels must be {len(coords)} values of 1 (object) or 0 "
                f"(background); got {np.asarray(labels).tolist()}."
            )
    return coords, flags


def check_box(box: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Validate a box (row0, col0, row1, col1), corners inclusive -> (4,) float64."""
    if box is None:
        return None
    corners = np.asarray(box, dtype=np.float64).reshape(-1)
    if corners.shape != (4,):
        raise InvalidInputError(
            f"A box is 4 numbers (row0, col0, row1, col1); got shape {np.shape(box)}."
        )
    if corners[2] < corners[0] or corners[3] < corners[1]:
        raise InvalidInputError(
            f"Box {corners.tolist()} has inverted corners: expected row0 <= row1 and "
            "col0 <= col1 (top-left first, then bottom-right)."
        )
    _check_inside(corners.reshape(2, 2), shape, "box corner")
    return corners


def check_mask_input(mask_input: np.ndarray | None) -> np.ndarray | None:
    """Validate low-resolution mask logits (e.g. a previous Prediction.logits[i])."""
    if mask_input is None:
        return None
    logits = np.asarray(mask_input, dtype=np.float32)
    if logits.shape not in ((LOW_RES, LOW_RES), (1, LOW_RES, LOW_RES)):
        raise InvalidInputError(
            f"mask_input must be ({LOW_RES}, {LOW_RES}) low-resolution logits, such as "
            f"a previous prediction's logits[i]; got shape {logits.shape}."
        )
    return logits.reshape(LOW_RES, LOW_RES)


def to_encoder_xy(
    coords_rc: np.ndarray, original: tuple[int, int], resized: tuple[int, int]
) -> np.ndarray:
    """(..., 2) (row, col) in the original image -> (..., 2) (x, y) in the encoder input."""
    scale = np.array([resized[1] / original[1], resized[0] / original[0]])
    return coords_rc[..., ::-1] * scale


def _check_inside(coords: np.ndarray, shape: tuple[int, int], what: str) -> None:
    if not np.isfinite(coords).all():
        raise InvalidInputError(f"A {what} has a NaN or infinite coordinate: {coords.tolist()}.")
    rows, cols = coords[:, 0], coords[:, 1]
    outside = (rows < 0) | (rows > shape[0] - 1) | (cols < 0) | (cols > shape[1] - 1)
    if outside.any():
        bad = coords[outside][0].tolist()
        raise InvalidInputError(
            f"The {what} (row, col) = {bad} lies outside the image of shape {shape} "
            f"(rows 0..{shape[0] - 1}, cols 0..{shape[1] - 1}). Coordinates are (row, col) "
            "in pixels of the image."
        )
