"""Training images for an instance head from what the user has open: a stack and labels.

The data-engine loop in napari (segment, correct a few objects, retrain, segment again)
trains on the planes of the image layer where the labels layer holds objects, read with
the stack's own normalisation, the one the head will see when it segments. Planes larger
than the encoder's tiles are cut into tile windows, as segment-everything sees them.
"""

from __future__ import annotations

import numpy as np

from napari_sam.engine.prediction.planes import PlaneLayout, read_plane
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.engine.tiling.grid import tile_grid
from napari_sam.errors import InvalidInputError
from napari_sam.training.datasets import LabelledImage


def labelled_planes(
    data,
    layout: PlaneLayout,
    normalization: Normalization,
    labels,
    *,
    tile: int | None = None,
    name: str = "image",
) -> list[LabelledImage]:
    """The planes (or tile windows) of ``data`` where ``labels`` holds objects.

    Parameters
    ----------
    data : array-like
        The image layer's data, laid out as ``layout`` says.
    layout : PlaneLayout
    normalization : Normalization
        The stack's mapping (e.g. an EverythingSession's).
    labels : array-like, shape ``layout.stack_shape + layout.plane_shape`` integer
    tile : int, optional
        Cut planes into windows of this side (the segmentation's tiling).
    name : str

    Raises
    ------
    InvalidInputError
        The labels' shape differs from the image's planes, or they hold no object.
    """
    expected = tuple(layout.stack_shape) + tuple(layout.plane_shape)
    if tuple(np.shape(labels)) != expected:
        raise InvalidInputError(
            f"The labels have shape {tuple(np.shape(labels))}, but the image's planes need "
            f"{expected}: choose the labels layer made for this image."
        )
    keys = list(np.ndindex(*layout.stack_shape)) if layout.stack_ndim else [()]
    images = []
    for key in keys:
        plane_labels = np.asarray(labels[key]) if key else np.asarray(labels)
        if not plane_labels.any():
            continue
        plane = read_plane(data, layout, key)
        where = f"{name}[{','.join(str(i) for i in key)}]" if key else name
        for window in _windows(plane_labels.shape, tile):
            window_labels = plane_labels[window]
            if window_labels.any():
                images.append(
                    LabelledImage(
                        np.ascontiguousarray(plane[window]),
                        window_labels.astype(np.int64),
                        where if tile is None else f"{where}{_window_name(window)}",
                        normalization,
                        where,
                    )
                )
    if not images:
        raise InvalidInputError(
            "The labels layer holds no object: paint or segment a few objects first, then "
            "learn from them."
        )
    return images


def _windows(shape: tuple[int, int], tile: int | None) -> list[tuple[slice, slice]]:
    if tile is None or max(shape) <= tile:
        return [(slice(0, shape[0]), slice(0, shape[1]))]
    return [t.window for t in tile_grid(shape, tile, 0)]


def _window_name(window: tuple[slice, slice]) -> str:
    return f"[{window[0].start}:{window[0].stop},{window[1].start}:{window[1].stop}]"
