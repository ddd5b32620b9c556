"""Planning tiles of a huge plane warns with the count, the cost and the way out.

A 200000 x 200000 plane needs 68,121 tiles of 768: hundreds of GiB of embeddings and
most of a day of encoding. Every tiled path builds its grid with ``tile_grid``, which logs
one warning per plan above ``WARN_TILES``; nothing is refused.
"""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest

from napari_sam.engine.annotation.tiled_session import TiledSession, open_session
from napari_sam.engine.tiling import grid
from napari_sam.engine.tiling.grid import WARN_TILES, plan_tiles, tile_grid

HUGE = 200_000


@pytest.fixture(autouse=True)
def _fresh_warnings(caplog):
    grid._warn_once.cache_clear()  # warnings are logged once per process
    caplog.set_level(logging.WARNING, logger="napari_sam.engine.tiling.grid")
    yield
    grid._warn_once.cache_clear()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "napari_sam.engine.tiling.grid"]


def test_the_plan_of_a_200000_pixel_slide():
    plan = plan_tiles((HUGE, HUGE), 768, 128)
    assert plan.tiles == 261 * 261 == 68_121
    assert plan.embedding_bytes == 68_121 * 4 * 2**20  # 256 x 64 x 64 float32 per tile
    assert plan.seconds == 68_121 * grid.SECONDS_PER_TILE
    assert plan.describe() == (
        "A plane of 200000 x 200000 pixels needs 68,121 tiles of 768 pixels (halo 128): about "
        "266 GiB of embeddings per plane (float32; half with --float16) and about 19 h of "
        "encoding per plane at 1 s per tile (the default model on a CPU; a GPU is faster). "
        "To reduce it: larger tiles (--tile) or a lower --upscale (half the upscale, a "
        "quarter of the tiles), fewer planes (--z-range) or a crop (ROI) of the data, or a "
        "coarser --level of a multiscale (OME-Zarr) image."
    )


@pytest.mark.parametrize(
    "shape, tile, expected", [((1000, 1000), 768, 4), ((1536, 769), 768, 4), ((5, 3), 10, 1)]
)
def test_plan_counts_what_tile_grid_makes(shape, tile, expected):
    assert plan_tiles(shape, tile, 0).tiles == len(tile_grid(shape, tile, 0)) == expected


def test_tile_grid_warns_once_above_the_bound_and_not_at_it(caplog):
    side = 100 * int(np.sqrt(WARN_TILES))  # exactly WARN_TILES tiles of 100
    assert len(tile_grid((side, side), 100, 10)) == WARN_TILES
    assert _warnings(caplog) == []
    tiles = tile_grid((side + 1, side), 100, 10)
    assert len(tiles) == WARN_TILES + 100
    tile_grid((side + 1, side), 100, 10)  # planned again by another part of a session
    assert _warnings(caplog) == [plan_tiles((side + 1, side), 100, 10).describe()]
    assert "10,100 tiles of 100 pixels (halo 10)" in caplog.text


def test_the_annotators_session_on_a_huge_lazy_plane(tiny_model, caplog):
    reads = []

    def block(block_info=None):
        reads.append(block_info[None]["chunk-location"])
        return np.random.default_rng(len(reads)).integers(0, 4000, (4096, 4096), np.uint16)

    plane = da.map_blocks(block, chunks=((4096,) * 48 + (3392,),) * 2, dtype=np.uint16)
    session = open_session(tiny_model, plane)
    assert isinstance(session, TiledSession) and (session.tile, session.halo) == (768, 128)
    assert len(session.plane(()).tiles) == 68_121
    assert len(reads) <= 4 * 16  # the normalisation read the windows of one plane only
    assert _warnings(caplog) == [plan_tiles((HUGE, HUGE), 768, 128).describe()]
