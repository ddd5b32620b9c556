import numpy as np
import pytest

from napari_sam.engine.tiling.grid import (
    default_tiling,
    most_central_tile,
    resolve_tiling,
    tile_grid,
)
from napari_sam.errors import InvalidInputError


@pytest.mark.parametrize(
    "shape, tile, halo",
    [((1000, 1000), 768, 128), ((2500, 1300), 768, 128), ((100, 37), 16, 5), ((64, 64), 64, 0)],
)
def test_interiors_cover_every_pixel_exactly_once(shape, tile, halo):
    count = np.zeros(shape, int)
    for t in tile_grid(shape, tile, halo):
        count[t.interior] += 1
        rows, cols = t.window
        inner_rows, inner_cols = t.interior
        assert rows.start <= inner_rows.start and inner_rows.stop <= rows.stop
        assert cols.start <= inner_cols.start and inner_cols.stop <= cols.stop
        assert rows.start == max(0, inner_rows.start - halo) and rows.stop == min(
            shape[0], inner_rows.stop + halo
        )
    assert (count == 1).all()


def test_stitching_interiors_rebuilds_the_plane():
    plane = np.arange(300 * 410).reshape(300, 410)
    out = np.full_like(plane, -1)
    for t in tile_grid(plane.shape, 128, 32):
        window = plane[t.window]  # what the tile would be encoded on
        local = (
            slice(t.interior[0].start - t.window[0].start, t.interior[0].stop - t.window[0].start),
            slice(t.interior[1].start - t.window[1].start, t.interior[1].stop - t.window[1].start),
        )
        out[t.interior] = window[local]
    np.testing.assert_array_equal(out, plane)


def test_most_central_tile_is_the_one_with_the_largest_margin():
    tiles = tile_grid((2048, 2048), 768, 128)
    chosen = most_central_tile(tiles, 770, 400)  # just past the first interior's lower edge
    assert chosen.index == (1, 0) and chosen.contains(770, 400)
    assert chosen.margin(770, 400) == 770 - 640  # 125 in tile (0, 0)'s window
    tie = most_central_tile(tiles, 770, 100)  # the column limits both windows to 100
    assert tie.index == (0, 0)


def test_default_tiling():
    assert default_tiling((1024, 1500)) == (None, 0)
    assert default_tiling((4000, 3000)) == (768, 128)
    assert default_tiling((512, 512), upscale=2) == (None, 0)  # the encoder enlarges it 2x whole
    assert default_tiling((600, 400), upscale=2) == (384, 64)  # windows of 512 = 1024 / 2
    assert default_tiling((4000, 4000), upscale=0.5) == (1536, 256)  # windows of 2048, shrunk 2x


def test_resolve_tiling_follows_the_user():
    assert resolve_tiling((4000, 3000)) == (768, 128)
    assert resolve_tiling((4000, 3000), tile=0) == (None, 0)
    assert resolve_tiling((4000, 3000), tile=500, halo=20) == (500, 20)
    assert resolve_tiling((4000, 3000), tile=200) == (200, 50)  # halo at most a quarter tile
    assert resolve_tiling((4000, 3000), tile=384, upscale=2) == (384, 64)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"upscale": 0}, "upscale must be a positive"),
        ({"upscale": "big"}, "upscale must be a positive"),
        ({"tile": -1}, "must be >= 0"),
        ({"tile": 64, "halo": -2}, "must be >= 0"),
        ({"tile": 768, "halo": 128, "upscale": 2}, "would be shrunk back"),
    ],
)
def test_bad_tiling_choices(settings, message):
    with pytest.raises(InvalidInputError, match=message):
        resolve_tiling((4000, 3000), **settings)


@pytest.mark.parametrize(
    "tile, halo, shape", [(0, 0, (10, 10)), (8, -1, (10, 10)), (8, 0, (0, 10))]
)
def test_bad_tiling(tile, halo, shape):
    with pytest.raises(InvalidInputError, match="Tiling needs"):
        tile_grid(shape, tile, halo)
