"""The zarr embedding cache: round trip, signature, damage detection, resume."""

import numpy as np
import pytest

from napari_sam.batch.embedding import embed_volume, open_cached_session
from napari_sam.engine.annotation.session import AnnotationSession
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import CacheMismatchError
from napari_sam.io.embedding_cache import EmbeddingCache, cache_signature


@pytest.fixture(scope="module")
def volume(make_image):
    return np.stack([make_image((96, 128), seed=s) for s in range(3)])


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model)


def counting(session):
    calls = []
    original = session.predictor.encode
    session.predictor.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    return calls


def test_cache_round_trip_equals_direct_encoding(tmp_path, volume, predictor):
    session = open_cached_session(volume, tmp_path / "c.zarr", model=predictor)
    summary = embed_volume(session)
    assert (summary.planes, summary.encoded, summary.reused) == (3, 3, 0)
    reopened = open_cached_session(volume, tmp_path / "c.zarr", model=predictor)
    calls = counting(reopened)
    assert embed_volume(reopened).reused == 3 and calls == []
    for z in range(3):
        stored = reopened.embed((z,))
        direct = predictor.encode(volume[z], session.normalization)
        np.testing.assert_array_equal(stored.features.numpy(), direct.features.numpy())
        assert stored.input_size == direct.input_size and stored.original_size == (96, 128)


def test_float16_features_keep_masks(tmp_path, volume, predictor):
    session = open_cached_session(
        volume, tmp_path / "h.zarr", model=predictor, feature_dtype="float16"
    )
    embed_volume(session, planes=[(1,)])
    half = session.store.backend.load((1,))
    full = predictor.encode(volume[1], session.normalization)
    assert np.abs(half.features.numpy() - full.features.numpy()).max() < 1e-2


def test_other_data_or_settings_are_refused(tmp_path, volume, predictor):
    open_cached_session(volume, tmp_path / "c.zarr", model=predictor)
    changed = volume.copy()
    changed[0, ::7, ::7] += 1  # a different image of the same shape
    with pytest.raises(CacheMismatchError, match="fingerprint"):
        open_cached_session(changed, tmp_path / "c.zarr", model=predictor)
    with pytest.raises(CacheMismatchError, match="feature_dtype"):
        open_cached_session(volume, tmp_path / "c.zarr", model=predictor, feature_dtype="float16")
    fresh = open_cached_session(changed, tmp_path / "c.zarr", model=predictor, overwrite=True)
    assert fresh.store.backend.completed() == []


def test_a_folder_that_is_not_a_cache_is_left_alone(tmp_path, volume, predictor):
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "precious.txt").write_text("keep me")
    with pytest.raises(CacheMismatchError, match="not a napari-sam embedding cache"):
        open_cached_session(volume, tmp_path / "mine.zarr", model=predictor)
    assert (tmp_path / "mine.zarr" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_damaged_or_missing_chunks_are_recomputed(tmp_path, volume, predictor, damage):
    path = tmp_path / "c.zarr"
    session = open_cached_session(volume, path, model=predictor)
    embed_volume(session)
    chunk = path / "features" / "c" / "1" / "0" / "0" / "0"
    assert chunk.is_file()
    if damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:100])
    elif damage == "delete":
        chunk.unlink()
    else:
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))
    reopened = open_cached_session(volume, path, model=predictor)
    assert reopened.store.backend.load((1,)) is None
    calls = counting(reopened)
    summary = embed_volume(reopened)
    assert (summary.encoded, summary.reused, len(calls)) == (1, 2, 1)
    np.testing.assert_array_equal(
        reopened.store.backend.load((1,)).features.numpy(),
        predictor.encode(volume[1], session.normalization).features.numpy(),
    )


def test_annotation_session_uses_the_cache_as_backend(tmp_path, volume, predictor):
    session = open_cached_session(volume, tmp_path / "c.zarr", model=predictor)
    embed_volume(session, planes=[(2,)])
    plain = AnnotationSession(predictor, volume, normalization=session.normalization)
    plain.store.backend = EmbeddingCache.open(
        tmp_path / "c.zarr",
        cache_signature(
            volume,
            plain.layout,
            plain.model_id,
            plain.normalization,
            precision=plain.predictor.precision,
        ),
        plain.layout,
    )
    calls = counting(plain)
    preview = plain.preview((2,), points=[(40, 60)])
    assert calls == [] and len(preview.objects) == 1
