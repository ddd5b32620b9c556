"""Objects larger than a window: one mask grown across neighbouring tiles.

Re-centring a window on an object (:mod:`napari_sam.engine.tiling.prompting`) cannot
contain an object larger than the window: its mask still touches the window's inner edge.
The object is then followed tile by tile. The next tile is the grid tile whose interior
holds the most mask pixels lying next to plane not decoded yet (the mask's *frontier*);
a frontier pixel in a tile's interior is at least a halo away from that tile's window
edge, so each step sees past the edge where the object was cut. On that tile the prompt is
restricted to the object: positive points deep inside the part of the mask already known
there, the user's points and box clipped to the window. Its mask joins the object only
when both agree on the pixels decoded before (IoU >= 0.5 over that overlap), so a
neighbouring object is never annexed. micro-sam, in contrast, requires every object to fit
inside one tile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from napari_sam.engine.prediction.results import Prediction
    from napari_sam.engine.tiling.grid import Tile

Window = tuple[slice, slice]
# decode(window, points, labels, box, extra) -> Prediction on that window; points, labels
# and box in plane pixels, ``extra`` adds (points (K, 2), labels (K,)) to the prompt.
WindowDecoder = Callable[..., "Prediction"]

AGREEMENT = 0.5  # IoU over the shared pixels above which a tile's mask continues the object
MAX_TILES = 24  # decodes per object at most (about 30 ms each with cached embeddings)
MIN_FRONTIER = 4  # frontier pixels in a tile worth a decode
INNER_POINTS = 3  # positive points given per tile


def grow_across_tiles(
    tiles: list[Tile],
    decode: WindowDecoder,
    mask: np.ndarray,
    explored: np.ndarray,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
) -> np.ndarray:
    """Extend an object's mask over the grid tiles it continues into.

    Parameters
    ----------
    tiles : list of Tile
        The plane's tile grid.
    decode : callable
        ``decode(window, points, labels, box, extra=None) -> Prediction`` on one window
        (:meth:`~napari_sam.engine.tiling.prompting.TiledPlane.decode_window`).
    mask : numpy.ndarray, shape (rows, cols), bool
        The object found so far on the whole plane; updated in place.
    explored : numpy.ndarray, shape (rows, cols), bool
        Pixels of the windows decoded so far; updated in place.
    points, labels, box
        The user's prompt in plane pixels: (K, 2), (K,), (4,) or None.

    Returns
    -------
    numpy.ndarray, shape (rows, cols), bool
        The merged mask (``mask`` itself).
    """
    visited: set[tuple[int, int]] = set()
    for _ in range(MAX_TILES):
        tile = _next_tile(tiles, mask, explored, visited)
        if tile is None:
            break
        visited.add(tile.index)
        part = _decode_part(decode, tile, mask, points, labels, box)
        if _agrees(part, mask[tile.window], explored[tile.window]):
            mask[tile.window] |= part
        explored[tile.window] = True
    return mask


def _next_tile(
    tiles: list[Tile], mask: np.ndarray, explored: np.ndarray, visited: set[tuple[int, int]]
) -> Tile | None:
    """The unvisited tile whose interior holds most frontier pixels (None below MIN_FRONTIER)."""
    frontier = mask & explored & ndimage.binary_dilation(~explored)
    best, most = None, MIN_FRONTIER - 1
    for tile in tiles:
        if tile.index in visited:
            continue
        count = int(frontier[tile.interior].sum())
        if count > most:
            best, most = tile, count
    return best


def _decode_part(
    decode: WindowDecoder, tile: Tile, mask: np.ndarray, points, labels, box
) -> np.ndarray:
    """(window rows, window cols) bool: the object on one tile, prompted by its known part."""
    window = tile.window
    inner = inner_points(mask[window], INNER_POINTS) + [window[0].start, window[1].start]
    extra = (inner, np.ones(len(inner), int))
    negatives = None
    if points is not None and (labels == 0).any():
        negatives = points[labels == 0]
    negative_labels = None if negatives is None else np.zeros(len(negatives), int)
    local = decode(window, negatives, negative_labels, box, extra=extra)
    return local.best_mask


def inner_points(part: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` (row, col) points deep inside ``part``, far from its edges and each other.

    Parameters
    ----------
    part : numpy.ndarray, shape (rows, cols), bool
        Non-empty. The array's own border counts as an edge (a point there has no context).

    Returns
    -------
    numpy.ndarray, shape (K, 2), float, K <= count
    """
    depth = ndimage.distance_transform_edt(np.pad(part, 1))[1:-1, 1:-1]
    chosen = []
    rows, cols = np.indices(part.shape)
    for _ in range(count):
        flat = int(np.argmax(depth))
        if depth.flat[flat] <= 0:
            break
        row, col = divmod(flat, part.shape[1])
        chosen.append((row, col))
        radius = max(depth[row, col], 1.0)  # spread points: clear a disc as wide as the depth
        depth[(rows - row) ** 2 + (cols - col) ** 2 <= (2 * radius) ** 2] = 0
    return np.asarray(chosen, float).reshape(-1, 2)


def _agrees(part: np.ndarray, known: np.ndarray, shared: np.ndarray) -> bool:
    """True when a tile's mask matches the object where both were decoded (IoU >= AGREEMENT)."""
    new, old = part & shared, known & shared
    union = int((new | old).sum())
    return union > 0 and int((new & old).sum()) / union >= AGREEMENT
