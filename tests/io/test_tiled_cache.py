"""The embedding cache with tiles: round trip, signature, damage, write order, lazy reads."""

import numpy as np
import pytest
import zarr

from napari_sam.batch.embedding import embed_volume, open_cached_session
from napari_sam.engine.annotation.tiled_session import TiledSession
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.tiling.grid import tile_grid
from napari_sam.engine.tiling.prompting import TiledPlane
from napari_sam.errors import CacheMismatchError, InvalidInputError
from napari_sam.io.embedding_cache import CacheSignature

TILE, HALO = 96, 16  # a 200 x 260 plane: a 3 x 3 grid of windows up to 128 x 128


@pytest.fixture(scope="module")
def volume(make_image):
    return np.stack([make_image((200, 260), seed=s) for s in range(2)])


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model)


def counting(predictor):
    calls = []
    original = predictor.encode
    predictor.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    return calls


def open_tiled(volume, path, predictor, **settings):
    return open_cached_session(
        volume, path, model=predictor, **{"tile": TILE, "halo": HALO, **settings}
    )


def test_tiled_round_trip_equals_direct_encoding_of_each_window(tmp_path, volume, predictor):
    session = open_tiled(volume, tmp_path / "t.zarr", predictor)
    assert isinstance(session, TiledSession)
    summary = embed_volume(session)
    assert (summary.planes, summary.tiles_per_plane, summary.encoded, summary.reused) == (
        2,
        9,
        18,
        0,
    )
    reopened = open_tiled(volume, tmp_path / "t.zarr", Predictor(predictor.model))
    calls = counting(reopened.predictor)
    assert embed_volume(reopened).reused == 18 and calls == []
    assert reopened.has_embedding((1,)) and calls == []
    cache = reopened.cache
    assert cache.group["features"].shape == (2, 3, 3, 256, 64, 64)
    for z in range(2):
        for tile in tile_grid((200, 260), TILE, HALO):
            stored = cache.load((z,), tile=tile.index)
            direct = predictor.encode(volume[z][tile.window], session.normalization)
            np.testing.assert_array_equal(stored.features.numpy(), direct.features.numpy())
            assert stored.input_size == direct.input_size
            assert stored.original_size == volume[z][tile.window].shape


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"tile": 64}, "tile"),
        ({"halo": 8}, "halo"),
        ({"tile": 0}, "tile"),
        ({"upscale": 1.5}, "upscale"),
    ],
)
def test_other_tile_settings_are_refused_with_the_remedy(
    tmp_path, volume, predictor, settings, field
):
    open_tiled(volume, tmp_path / "t.zarr", predictor)
    with pytest.raises(
        CacheMismatchError, match=rf"(?s){field}: cache has .*--tile/--halo/--upscale.*overwrite"
    ):
        open_tiled(volume, tmp_path / "t.zarr", predictor, **settings)
    fresh = open_tiled(volume, tmp_path / "t.zarr", predictor, overwrite=True, **settings)
    assert fresh.cache.completed() == []


def test_a_damaged_tile_chunk_is_recomputed_alone(tmp_path, volume, predictor):
    path = tmp_path / "t.zarr"
    embed_volume(open_tiled(volume, path, predictor))
    chunk = path / "features" / "c" / "1" / "2" / "1" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    reopened = open_tiled(volume, path, Predictor(predictor.model))
    assert reopened.cache.load((1,), tile=(2, 1)) is None
    assert reopened.cache.is_complete((1,), tile=(2, 1))  # flagged, but its checksum fails
    calls = counting(reopened.predictor)
    summary = embed_volume(reopened)
    assert (summary.encoded, summary.reused, len(calls)) == (1, 17, 1)
    window = tile_grid((200, 260), TILE, HALO)[7].window
    np.testing.assert_array_equal(
        reopened.cache.load((1,), tile=(2, 1)).features.numpy(),
        predictor.encode(volume[1][window], reopened.normalization).features.numpy(),
    )


class WriteLog:
    """A zarr group stand-in that records the order in which arrays are written."""

    def __init__(self, group, log):
        self.group, self.log = group, log

    def __getitem__(self, name):
        array, log = self.group[name], self.log

        class Recorder:
            def __getitem__(self, index):
                return array[index]

            def __setitem__(self, index, value):
                log.append(name)
                array[index] = value

        return Recorder()


def test_completion_flag_is_written_last(tmp_path, volume, predictor):
    session = open_tiled(volume, tmp_path / "t.zarr", predictor)
    cache, log = session.cache, []
    embedding = predictor.encode(
        volume[0][tile_grid((200, 260), TILE, HALO)[4].window], session.normalization
    )
    cache.group = WriteLog(cache.group, log)
    cache.save((0,), embedding, tile=(1, 1))
    assert log == ["features", "input_size", "checksum", "complete"]


def test_tiles_of_a_zarr_volume_read_only_their_chunks(tmp_path, volume, predictor):
    from tests.io.test_volumes import CountingStore

    zarr.create_array(tmp_path / "v.zarr", data=volume, chunks=(1, 50, 65))
    store = CountingStore(zarr.storage.LocalStore(tmp_path / "v.zarr", read_only=True))
    data = zarr.open_array(store, mode="r")
    session = open_tiled(data, tmp_path / "t.zarr", predictor)
    store.reads.clear()
    embed_volume(session, planes=[(1,)])
    expected = 0
    for tile in tile_grid((200, 260), TILE, HALO):
        rows, cols = tile.window
        expected += len(range(rows.start // 50, (rows.stop - 1) // 50 + 1)) * len(
            range(cols.start // 65, (cols.stop - 1) // 65 + 1)
        )
    assert len(store.reads) == expected  # 36 chunk reads, never the 16 chunks of a plane at once
    assert all(key.startswith("c/1/") for key in store.reads)


def test_tiled_plane_takes_grid_tiles_from_the_cache_and_keeps_moved_windows_in_memory(
    tmp_path, volume, predictor
):
    session = open_tiled(volume, tmp_path / "t.zarr", predictor)
    embed_volume(session, planes=[(0,)])
    fresh = Predictor(predictor.model)
    calls = counting(fresh)
    plane = TiledPlane(
        fresh, volume[0], session.normalization, TILE, HALO, backend=session.cache.tiles((0,))
    )
    grid = plane.embedding(plane.tiles[4])  # the old call form with a Tile
    assert calls == [] and plane.encoder_calls == 0 and plane.ready()
    np.testing.assert_array_equal(
        grid.features.numpy(), session.cache.load((0,), tile=(1, 1)).features.numpy()
    )
    moved = (slice(30, 158), slice(50, 178))  # not a grid window
    first = plane.embedding(moved)
    assert plane.embedding(moved) is first and len(calls) == 1
    assert len(session.cache.completed()) == 9  # on-demand windows stay out of the cache


def test_tile_indices_are_checked(tmp_path, volume, predictor):
    tiled = open_tiled(volume, tmp_path / "t.zarr", predictor).cache
    plain = open_cached_session(volume, tmp_path / "p.zarr", model=predictor, tile=0).cache
    embedding = predictor.encode(volume[0], tiled.normalization)
    with pytest.raises(InvalidInputError, match="stores tiles"):
        tiled.load((0,))
    with pytest.raises(InvalidInputError, match="stores whole planes"):
        plain.load((0,), tile=(0, 0))
    with pytest.raises(InvalidInputError, match="outside the cache's"):
        tiled.load((0,), tile=(3, 0))
    with pytest.raises(InvalidInputError, match="cannot be stored"):
        tiled.save((0,), embedding, tile=(0, 0))
    with pytest.raises(InvalidInputError, match="open it with a tile size"):
        plain.tiles((0,))


def test_signatures_written_before_tiles_read_as_upscale_one(tmp_path, volume, predictor):
    signature = open_tiled(volume, tmp_path / "t.zarr", predictor, tile=0).cache.signature
    payload = signature.to_dict()
    del payload["upscale"]
    assert CacheSignature.from_dict(payload) == signature
