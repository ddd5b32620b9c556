"""Tiles with halo: how a large plane is cut into encoder-sized windows.

SAM's encoder sees at most 1024x1024 pixels; a larger plane would be shrunk and small
cells lost. A plane is therefore cut into a grid of *interiors* that cover every pixel
exactly once; each tile is encoded on its *window*, the interior grown by a halo on every
side (clipped at the plane's border), so an object near an interior's edge still has
context. Results are stitched from interiors only, which leaves no seams or double counts.

Choosing the sizes: the window should be the encoder's native 1024 pixels (no resampling),
the halo at least the radius of the largest object you expect (so an object centred in an
interior fits in that tile's window), and tiles are used only when the plane is larger
than about 1.5x the window.

Upscaling: SAM's encoder always resizes its input so the longest side is 1024 pixels.
A window of ``1024 / upscale`` plane pixels is therefore enlarged ``upscale`` times before
encoding (bilinear, inside
:func:`~napari_sam.engine.prediction.preprocess.resize_longest_side`), and every prompt and
mask is mapped between plane pixels and encoder pixels by the predictor.
``upscale=2`` gives small cells four times as many encoder pixels, at four times the tiles.

Huge planes: the number of tiles grows with the plane's area (a 200000 x 200000 slide needs
68,121 tiles of 768). :func:`tile_grid`, which every tiled path goes through, logs a
warning when a plane needs more than :data:`WARN_TILES` tiles, with the embeddings' size,
the encoding time and how to reduce them (:func:`plan_tiles` gives the same numbers to a
caller before it starts). Nothing is refused: planning stays cheap, the work is resumable
and cancellable, and only the caller knows whether a whole slide is what the user wants.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

from napari_sam.errors import InvalidInputError

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 1024  # the encoder's native input side
DEFAULT_HALO = 128  # context on each side; objects up to ~256 px across fit a window
WARN_TILES = 10_000  # tiles per plane above which planning warns (40 GiB of embeddings)
TILE_EMBEDDING_BYTES = 256 * 64 * 64 * 4  # one tile's float32 embedding (every SAM variant)
SECONDS_PER_TILE = 1.0  # encoder time per tile, the default model on a CPU, about


@dataclass(frozen=True)
class Tile:
    """One tile of a plane; slices are (rows, cols) of the plane."""

    index: tuple[int, int]  # (tile row, tile column) in the grid
    interior: tuple[slice, slice]  # the pixels this tile owns
    window: tuple[slice, slice]  # the pixels it is encoded on (interior + halo, clipped)

    def contains(self, row: float, col: float) -> bool:
        """True when (row, col) lies in the interior."""
        rows, cols = self.interior
        return rows.start <= row < rows.stop and cols.start <= col < cols.stop

    def margin(self, row: float, col: float) -> float:
        """Distance from (row, col) to the nearest window edge (negative outside)."""
        rows, cols = self.window
        return min(row - rows.start, rows.stop - 1 - row, col - cols.start, cols.stop - 1 - col)


def default_tiling(
    shape: tuple[int, int],
    window: int = DEFAULT_WINDOW,
    upscale: float = 1.0,
) -> tuple[int | None, int]:
    """(interior side, halo) in plane pixels; (None, 0) when the plane is encoded whole.

    Windows cover ``window / upscale`` plane pixels. Without upscaling a plane up to 1.5x
    the window is shrunk a little rather than cut into four tiles; with ``upscale > 1`` the
    enlargement was asked for, so any plane larger than one window is tiled.

    Raises
    ------
    InvalidInputError
        ``upscale`` is not a positive finite number.
    """
    check_upscale(upscale)
    side = window / upscale
    limit = side * 3 / 2 if upscale <= 1 else side
    if max(shape) <= limit:
        return None, 0
    halo = round(DEFAULT_HALO / upscale)
    return int(side) - 2 * halo, halo


def resolve_tiling(
    shape: tuple[int, int],
    tile: int | None = None,
    halo: int | None = None,
    upscale: float = 1.0,
    window: int = DEFAULT_WINDOW,
) -> tuple[int | None, int]:
    """(interior side, halo) from a user's choice: ``tile=None`` automatic, ``0`` no tiles.

    Parameters
    ----------
    shape : (int, int)
        (rows, cols) of one plane.
    tile : int, optional
        Interior side in plane pixels; None picks :func:`default_tiling`, 0 disables tiling.
    halo : int, optional
        Overlap in plane pixels; None picks ``128 / upscale`` (at most a quarter tile).
    upscale : float
        Encoder pixels per plane pixel, at least (see the module notes).

    Raises
    ------
    InvalidInputError
        A negative tile or halo, a bad upscale, or a window that upscaled exceeds the
        encoder's input (the encoder would shrink it back and the upscale would be lost).
    """
    check_upscale(upscale)
    if tile is None:
        return default_tiling(shape, window, upscale)
    if tile < 0 or (halo is not None and halo < 0):
        raise InvalidInputError(
            f"tile and halo must be >= 0 (0 = no tiling); got tile={tile}, halo={halo}."
        )
    if tile == 0:
        return None, 0
    if halo is None:
        halo = min(round(DEFAULT_HALO / upscale), tile // 4)
    side = tile + 2 * halo
    if upscale > 1 and side * upscale > window + 1:
        raise InvalidInputError(
            f"A window of {side} pixels (tile {tile} + 2 x halo {halo}) upscaled {upscale:g}x is "
            f"{side * upscale:.0f} pixels, more than the encoder's {window}: "
            "it would be shrunk back. "
            f"Choose tile <= {int(window / upscale) - 2 * halo}, or leave tile automatic."
        )
    return tile, halo


@dataclass(frozen=True)
class TilePlan:
    """How much work tiling one plane means, before any of it is done."""

    shape: tuple[int, int]  # (rows, cols) of the plane
    tile: int  # interior side in plane pixels
    halo: int  # overlap in plane pixels
    tiles: int  # tiles of the plane

    @property
    def embedding_bytes(self) -> int:
        """Size of the plane's tile embeddings in float32 (half with float16)."""
        return self.tiles * TILE_EMBEDDING_BYTES

    @property
    def seconds(self) -> float:
        """Encoding time of the plane at :data:`SECONDS_PER_TILE`."""
        return self.tiles * SECONDS_PER_TILE

    def describe(self) -> str:
        """One paragraph: the tiles, their cost, and how to reduce them."""
        rows, cols = self.shape
        return (
            f"A plane of {rows} x {cols} pixels needs {self.tiles:,} tiles of {self.tile} "
            f"pixels (halo {self.halo}): about {self.embedding_bytes / 2**30:,.0f} GiB of "
            "embeddings per plane (float32; half with --float16) and about "
            f"{_duration(self.seconds)} of encoding per plane at {SECONDS_PER_TILE:g} s per "
            "tile (the default model on a CPU; a GPU is faster). To reduce it: larger tiles "
            "(--tile) or a lower --upscale (half the upscale, a quarter of the tiles), fewer "
            "planes (--z-range) or a crop (ROI) of the data, or a coarser --level of a "
            "multiscale (OME-Zarr) image."
        )


def plan_tiles(shape: tuple[int, int], tile: int, halo: int) -> TilePlan:
    """Count the tiles of a plane without making them (cheap for any plane size).

    Parameters
    ----------
    shape : (int, int)
        (rows, cols) of one plane.
    tile, halo : int
        Interior side and overlap in plane pixels; ``tile`` at least 1.
    """
    count = math.ceil(shape[0] / tile) * math.ceil(shape[1] / tile)
    return TilePlan((int(shape[0]), int(shape[1])), int(tile), int(halo), count)


@functools.lru_cache(maxsize=32)
def _warn_once(message: str) -> None:
    """Log a warning once per process: a session plans the same plane several times."""
    log.warning(message)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def check_upscale(upscale: float) -> float:
    """The upscale factor as a float; raises InvalidInputError unless positive and finite."""
    try:
        value = float(upscale)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value < float("inf"):
        raise InvalidInputError(
            f"upscale must be a positive number such as 1 or 2; got {upscale!r}."
        )
    return value


def tile_grid(shape: tuple[int, int], tile: int, halo: int) -> list[Tile]:
    """Cut a (rows, cols) plane into tiles of ``tile`` x ``tile`` interiors plus ``halo``.

    Logs a warning (once per plan and process) when the plane needs more than
    :data:`WARN_TILES` tiles: their number, embedding size, encoding time, and how to
    reduce them (see :class:`TilePlan`).

    Raises
    ------
    InvalidInputError
        Non-positive tile, negative halo, or an empty plane.
    """
    if tile < 1 or halo < 0 or min(shape) < 1:
        raise InvalidInputError(
            f"Tiling needs tile >= 1 and halo >= 0 on a non-empty plane; got tile={tile}, "
            f"halo={halo}, plane {shape}."
        )
    plan = plan_tiles(shape, tile, halo)
    if plan.tiles > WARN_TILES:
        _warn_once(plan.describe())
    tiles = []
    for ty, r0 in enumerate(range(0, shape[0], tile)):
        for tx, c0 in enumerate(range(0, shape[1], tile)):
            r1, c1 = min(r0 + tile, shape[0]), min(c0 + tile, shape[1])
            window = (
                slice(max(0, r0 - halo), min(shape[0], r1 + halo)),
                slice(max(0, c0 - halo), min(shape[1], c1 + halo)),
            )
            tiles.append(Tile((ty, tx), (slice(r0, r1), slice(c0, c1)), window))
    return tiles


def most_central_tile(tiles: list[Tile], row: float, col: float) -> Tile:
    """The tile whose window has (row, col) farthest from its edges (ties: lowest index)."""
    if not tiles:
        raise InvalidInputError("No tiles to choose from.")
    return max(tiles, key=lambda t: (t.margin(row, col), -t.index[0], -t.index[1]))
