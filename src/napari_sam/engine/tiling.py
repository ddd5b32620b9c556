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
"""

from __future__ import annotations

from dataclasses import dataclass

from napari_sam.errors import InvalidInputError

DEFAULT_WINDOW = 1024  # the encoder's native input side
DEFAULT_HALO = 128  # context on each side; objects up to ~256 px across fit a window


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


def default_tiling(shape: tuple[int, int], window: int = DEFAULT_WINDOW) -> tuple[int | None, int]:
    """(interior side, halo) for a plane: (None, 0) when it fits the encoder as a whole."""
    if max(shape) <= window * 3 // 2:
        return None, 0
    return window - 2 * DEFAULT_HALO, DEFAULT_HALO


def tile_grid(shape: tuple[int, int], tile: int, halo: int) -> list[Tile]:
    """Cut a (rows, cols) plane into tiles of ``tile`` x ``tile`` interiors plus ``halo``.

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
    tiles = []
    for ty, r0 in enumerate(range(0, shape[0], tile)):
        for tx, c0 in enumerate(range(0, shape[1], tile)):
            r1, c1 = min(r0 + tile, shape[0]), min(c0 + tile, shape[1])
            window = (slice(max(0, r0 - halo), min(shape[0], r1 + halo)),
                      slice(max(0, c0 - halo), min(shape[1], c1 + halo)))
            tiles.append(Tile((ty, tx), (slice(r0, r1), slice(c0, c1)), window))
    return tiles


def most_central_tile(tiles: list[Tile], row: float, col: float) -> Tile:
    """The tile whose window has (row, col) farthest from its edges (ties: lowest index)."""
    if not tiles:
        raise InvalidInputError("No tiles to choose from.")
    return max(tiles, key=lambda t: (t.margin(row, col), -t.index[0], -t.index[1]))
