"""The embedding cache records the encoder's precision: fp32 and bf16 planes never mix, and
caches written before the precision was recorded open as the fp32 caches they are.

The bf16 predictors here record bf16 but compute in fp32 (``encoder_autocast`` is
replaced by a no-op): these tests are about what the cache records and refuses, and a
real bf16 encode takes seconds on CPUs without native bf16. The arithmetic itself is
tested in tests/engine/prediction/.
"""

from contextlib import nullcontext

import numpy as np
import pytest

from napari_sam.batch.embedding import embed_volume, open_cached_session
from napari_sam.engine.prediction import predictor as predictor_module
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import CacheMismatchError, InvalidInputError
from napari_sam.io.embedding_cache import CacheSignature, cache_signature


@pytest.fixture(scope="module")
def volume(make_image):
    return np.stack([make_image((96, 128), seed=s) for s in range(2)])


@pytest.fixture
def bf16(tiny_model, monkeypatch):
    monkeypatch.setattr(predictor_module, "encoder_autocast", lambda *_: nullcontext())
    return Predictor(tiny_model, precision="bf16")


@pytest.fixture(scope="module")
def fp32(tiny_model):
    return Predictor(tiny_model, precision="fp32")


def written_before_precision(path):
    """Make the cache at ``path`` look as a release before precision was recorded wrote it."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    attributes = dict(group.attrs["napari_sam"])
    del attributes["precision"]
    group.attrs["napari_sam"] = attributes


def test_a_cache_records_the_precision_and_its_embeddings_carry_it(tmp_path, volume, bf16):
    session = open_cached_session(volume, tmp_path / "b.zarr", model=bf16)
    embed_volume(session)
    assert session.cache.group.attrs["napari_sam"]["precision"] == "bf16"
    assert session.cache.signature.precision == "bf16"
    assert session.cache.load((1,)).precision == "bf16"


def test_a_cache_from_before_precision_opens_as_fp32(tmp_path, volume, fp32):
    path = tmp_path / "old.zarr"
    embed_volume(open_cached_session(volume, path, model=fp32))
    written_before_precision(path)
    reopened = open_cached_session(volume, path, model=fp32)
    assert reopened.cache.signature.precision == "fp32"
    assert embed_volume(reopened).reused == 2
    assert reopened.cache.load((0,)).precision == "fp32"


def test_a_bf16_run_on_an_fp32_cache_is_a_mismatch_that_says_the_fix(tmp_path, volume, fp32, bf16):
    path = tmp_path / "old.zarr"
    embed_volume(open_cached_session(volume, path, model=fp32))
    written_before_precision(path)
    with pytest.raises(
        CacheMismatchError, match=r"(?s)precision: cache has 'fp32', expected 'bf16'.*--precision"
    ):
        open_cached_session(volume, path, model=bf16)
    replaced = open_cached_session(volume, path, model=bf16, overwrite=True)
    assert replaced.cache.signature.precision == "bf16"


def test_the_precision_argument_reaches_a_model_given_by_name(tmp_path, volume, tiny_model):
    session = open_cached_session(volume, tmp_path / "c.zarr", model=tiny_model, precision="fp32")
    assert session.predictor.precision == session.cache.signature.precision == "fp32"


def test_an_embedding_of_the_other_precision_is_never_saved(tmp_path, volume, fp32, bf16):
    session = open_cached_session(volume, tmp_path / "c.zarr", model=fp32)
    embedding = bf16.encode(volume[0], session.normalization)
    with pytest.raises(CacheMismatchError, match=r"computed in bf16 .* fp32 embeddings"):
        session.cache.save((0,), embedding)
    assert not session.cache.is_complete((0,))


def test_a_signature_needs_a_resolved_precision(volume, fp32):
    from napari_sam.engine.prediction.planes import plane_layout

    layout = plane_layout(volume.shape)
    normalization = fp32.encode(volume[0]).normalization
    with pytest.raises(InvalidInputError, match=r"'fp32' or 'bf16'; got 'auto'"):
        cache_signature(volume, layout, fp32.model.model_id, normalization, precision="auto")
    signature = cache_signature(volume, layout, fp32.model.model_id, normalization)
    payload = signature.to_dict()
    del payload["precision"]
    assert CacheSignature.from_dict(payload) == signature  # no field: fp32


def test_auto_takes_the_precision_an_existing_cache_records(tmp_path, volume, tiny_model, bf16):
    """A cache made where auto means bf16 opens where it means fp32 (this suite's auto),
    and its planes are reused; fp32 asked for by name is still a mismatch."""
    from napari_sam.batch.embedding import cache_precision

    path = tmp_path / "made_on_amx.zarr"
    assert cache_precision(path) == "auto"  # nothing there yet
    embed_volume(open_cached_session(volume, path, model=bf16))
    assert cache_precision(path) == "bf16"
    assert cache_precision(path, "fp32") == "fp32"
    session = open_cached_session(volume, path, model=tiny_model)  # precision="auto"
    assert session.predictor.precision == session.cache.signature.precision == "bf16"
    assert embed_volume(session).reused == 2
    with pytest.raises(CacheMismatchError, match=r"precision: cache has 'bf16', expected 'fp32'"):
        open_cached_session(volume, path, model=tiny_model, precision="fp32")


def test_auto_where_it_means_bf16_opens_an_fp32_cache(
    tmp_path, volume, tiny_model, fp32, monkeypatch
):
    from napari_sam.engine.model import precision
    from napari_sam.engine.model.precision import CpuCapability

    path = tmp_path / "made_on_avx2.zarr"
    embed_volume(open_cached_session(volume, path, model=fp32))
    monkeypatch.delenv(precision.NO_AUTO_BF16)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(precision, "cpu_capability", lambda: CpuCapability(True, "amx_bf16"))
    assert Predictor(tiny_model).precision == "bf16"  # auto on this faked CPU
    session = open_cached_session(volume, path, model=tiny_model)
    assert session.predictor.precision == "fp32"
    assert embed_volume(session).reused == 2


def test_a_damaged_cache_records_no_precision(tmp_path):
    from napari_sam.io.embedding_cache import recorded_precision

    folder = tmp_path / "not_a_cache.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert recorded_precision(folder) is None
    assert recorded_precision(tmp_path / "missing.zarr") is None
