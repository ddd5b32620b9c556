"""What the instance head learns to predict, computed from instance labels.

For each object: its pixels are foreground; the *boundary distance* is the Euclidean
distance to the nearest pixel outside the object, divided by the object's largest (1 at
its deepest pixel, falling to 0 at the rim); the *centre distance* is the distance to that
deepest pixel, divided by the object's largest (0 at the centre, 1 at the far rim).
Background has boundary distance 0 and centre distance 1. Normalising per object makes
small and large objects equally easy to cut, as in micro-sam's distance targets.

The maps are computed at the labels' own pixels, then sampled at the centres of the
decoder's low-resolution cells (256 x 256 over the padded encoder frame), which is where
:class:`~napari_sam.engine.instances.head.InstanceHead` predicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential

LOW_RES = 256  # the decoder's low-resolution grid side
DOWNSCALE = 4  # encoder-frame pixels per low-resolution cell


@dataclass(frozen=True, eq=False)
class HeadTargets:
    """Training targets of one image on the low-resolution grid."""

    maps: np.ndarray  # (3, 256, 256) float32: foreground, centre distance, boundary distance
    valid: np.ndarray  # (256, 256) bool, cells inside the image (not padding)
    objects: int


def distance_maps(labels: np.ndarray) -> np.ndarray:
    """Per-object normalised distances at the labels' pixels.

    Parameters
    ----------
    labels : numpy.ndarray, shape (rows, cols) integer, 0 = background

    Returns
    -------
    numpy.ndarray, shape (3, rows, cols) float32
        Foreground (0 or 1), centre distance, boundary distance.
    """
    labels = relabel_sequential(np.asarray(labels))[0]
    out = np.zeros((3,) + labels.shape, np.float32)
    out[1] = 1.0
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        rows = slice(max(found[0].start - 1, 0), found[0].stop + 1)
        cols = slice(max(found[1].start - 1, 0), found[1].stop + 1)
        inside = labels[rows, cols] == index
        padded = np.pad(inside, 1)  # the image edge counts as outside
        depth = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
        deepest = np.unravel_index(np.argmax(depth), depth.shape)
        grid_r, grid_c = np.indices(inside.shape)
        centre = np.hypot(grid_r - deepest[0], grid_c - deepest[1])
        far = max(float(centre[inside].max()), 1.0)
        out[0, rows, cols][inside] = 1.0
        out[1, rows, cols][inside] = centre[inside] / far
        out[2, rows, cols][inside] = depth[inside] / max(float(depth.max()), 1.0)
    return out


def head_targets(labels: np.ndarray, input_size: tuple[int, int], frame: int) -> HeadTargets:
    """Targets of one image on the low-resolution grid of its embedding.

    Parameters
    ----------
    labels : numpy.ndarray, shape (rows, cols) integer
    input_size : (rows, cols)
        The image's size once resized into the encoder frame.
    frame : int
        The encoder frame's side (1024).
    """
    labels = np.asarray(labels)
    maps = distance_maps(labels)
    low = LOW_RES * frame // 1024
    step = frame / low
    scale = np.array(input_size, float) / np.array(labels.shape, float)
    valid_rows, valid_cols = (int(np.ceil(s / step)) for s in input_size)
    # Cell centres in the encoder frame, then in label pixels (pixel centres to centres).
    rows = ((np.arange(valid_rows) + 0.5) * step) / scale[0] - 0.5
    cols = ((np.arange(valid_cols) + 0.5) * step) / scale[1] - 0.5
    rows = np.clip(rows, 0, labels.shape[0] - 1)
    cols = np.clip(cols, 0, labels.shape[1] - 1)
    grid = np.meshgrid(rows, cols, indexing="ij")
    sampled = np.stack([ndimage.map_coordinates(m, grid, order=1, mode="nearest") for m in maps])
    nearest = labels[np.rint(grid[0]).astype(int), np.rint(grid[1]).astype(int)]
    sampled[0] = nearest > 0
    out = np.zeros((3, low, low), np.float32)
    out[1] = 1.0
    out[:, :valid_rows, :valid_cols] = sampled
    valid = np.zeros((low, low), bool)
    valid[:valid_rows, :valid_cols] = True
    return HeadTargets(out, valid, int(len(np.unique(labels)) - 1))
