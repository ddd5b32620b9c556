"""Pictures for people: label images drawn over their image as a PNG.

Each label gets a distinct colour (hues spaced by the golden angle), filled
semi-transparently with an opaque outline, so touching objects stay distinguishable.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from napari_sam.errors import InvalidInputError
from napari_sam.io.file_errors import unwritable_file

GOLDEN_ANGLE = 0.381966  # fraction of the hue circle between consecutive labels
OVERLAY_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}  # Pillow writes these


def label_colors(count: int) -> np.ndarray:
    """(count, 3) uint8 distinct colours."""
    hues = (np.arange(count) * GOLDEN_ANGLE) % 1.0
    return np.array(
        [[round(255 * v) for v in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues],
        dtype=np.uint8,
    ).reshape(count, 3)


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """(rows, cols) bool: pixels of an object that touch another value (4-neighbours)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def overlay_labels(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """Blend labels over an image.

    Parameters
    ----------
    rgb : numpy.ndarray, shape (rows, cols, 3), uint8
    labels : numpy.ndarray, shape (rows, cols), int; 0 is background
    alpha : float
        Opacity of the fill; outlines are opaque.

    Returns
    -------
    numpy.ndarray, shape (rows, cols, 3), uint8
    """
    ids, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(labels.shape)
    palette = np.vstack([[0, 0, 0], label_colors(len(ids))]).astype(np.float32)
    colour = palette[np.where(labels > 0, dense + 1, 0)]
    out = rgb.astype(np.float32)
    inside = labels > 0
    out[inside] = (1 - alpha) * out[inside] + alpha * colour[inside]
    edge = label_boundaries(labels)
    out[edge] = colour[edge]
    return np.clip(out, 0, 255).astype(np.uint8)


def check_overlay_path(path: str | Path) -> Path:
    """Refuse, before any work, an overlay whose format cannot be written.

    Raises
    ------
    InvalidInputError
        The suffix is not one of :data:`OVERLAY_SUFFIXES`.
    """
    path = Path(path)
    if path.suffix.lower() not in OVERLAY_SUFFIXES:
        raise InvalidInputError(
            f"Unsupported overlay format {path.suffix!r} for {path}: an overlay is a picture, "
            "written as .png (or .jpg, .tif, .bmp)."
        )
    return path


def save_overlay(path: str | Path, rgb: np.ndarray, labels: np.ndarray) -> Path:
    """Write :func:`overlay_labels` as a PNG (or JPEG, TIFF, BMP by suffix).

    Raises
    ------
    InvalidInputError
        The suffix is not a picture format, or the file cannot be written.
    """
    from PIL import Image

    path = check_overlay_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(overlay_labels(rgb, labels)).save(path)
    except OSError as error:
        raise unwritable_file(path, error) from error
    return path
