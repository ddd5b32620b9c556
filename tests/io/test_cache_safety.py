"""The embedding cache never loses data: what overwrite may remove, damage, disk errors,
and caches written by earlier releases (napari-sam issue 13)."""

import zlib

import numpy as np
import pytest
import zarr

import napari_sam
from napari_sam.batch.embedding import embed_volume, open_cached_session
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import CacheMismatchError, InvalidInputError, NapariSamError


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


def tree(folder):
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_overwrite_refuses_a_folder_with_a_user_file(tmp_path, volume, predictor):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep me")
    with pytest.raises(NapariSamError, match=r"keep\.txt.*not even with --overwrite"):
        open_cached_session(volume, precious, model=predictor, overwrite=True)
    assert tree(precious) == {"keep.txt": b"keep me"}


def test_a_cache_path_that_is_a_regular_file_is_refused_and_kept(tmp_path, volume, predictor):
    path = tmp_path / "cache.zarr"
    path.write_bytes(b"not a folder")
    for overwrite in (False, True):
        with pytest.raises(InvalidInputError, match=r"cache\.zarr is a file, not a folder"):
            open_cached_session(volume, path, model=predictor, overwrite=overwrite)
    assert path.read_bytes() == b"not a folder"


def test_overwrite_never_replaces_a_segment_everything_store(tmp_path, volume, predictor):
    path = tmp_path / "labels.zarr"
    group = zarr.open_group(path, mode="w")
    group.create_array("complete", shape=(3,), chunks=(1,), dtype="uint8", fill_value=0)
    group.attrs["napari_sam"] = {"format": "napari-sam segment-everything", "version": 2}
    before = tree(path)
    with pytest.raises(CacheMismatchError, match="holds a napari-sam segment-everything store"):
        open_cached_session(volume, path, model=predictor, overwrite=True)
    assert tree(path) == before


@pytest.mark.parametrize("damaged", ["zarr.json", "complete/zarr.json", "features/zarr.json"])
def test_damaged_metadata_names_the_cache_and_the_remedy(tmp_path, volume, predictor, damaged):
    path = tmp_path / "c.zarr"
    embed_volume(open_cached_session(volume, path, model=predictor), planes=[(0,)])
    (path / damaged).write_text("{not json")
    with pytest.raises(CacheMismatchError, match=r"c\.zarr is damaged.*overwrite=True"):
        open_cached_session(volume, path, model=predictor)
    fresh = open_cached_session(volume, path, model=predictor, overwrite=True)
    assert fresh.cache.completed() == []


def test_a_damaged_flag_or_checksum_chunk_re_encodes_only_its_plane(tmp_path, volume, predictor):
    path = tmp_path / "c.zarr"
    embed_volume(open_cached_session(volume, path, model=predictor))
    (path / "complete" / "c" / "1").write_bytes(b"garbage")
    (path / "checksum" / "c" / "2").write_bytes(b"garbage")
    reopened = open_cached_session(volume, path, model=predictor)
    assert reopened.cache.completed() == [(0,), (2,)]  # the flag of plane 1 is unreadable
    calls = counting(reopened)
    summary = embed_volume(reopened)
    assert (summary.encoded, summary.reused, len(calls)) == (2, 1, 2)
    assert reopened.cache.completed() == [(0,), (1,), (2,)]


def test_a_disk_error_is_not_a_silent_re_encode(tmp_path, volume, predictor, monkeypatch):
    path = tmp_path / "c.zarr"
    session = open_cached_session(volume, path, model=predictor)
    embed_volume(session, planes=[(0,)])
    array_type = type(session.cache.group["features"])
    read = array_type.__getitem__

    def refuse_features(array, where):
        if array.path == "features":
            raise PermissionError(13, "Permission denied", str(path / "features" / "c" / "0"))
        return read(array, where)

    monkeypatch.setattr(array_type, "__getitem__", refuse_features)
    with pytest.raises(OSError, match=r"Cannot read plane \(0,\) of the embedding cache .*c\.zarr"):
        session.cache.load((0,))
    with pytest.raises(NapariSamError, match="Permission denied"):
        session.cache.load((0,))


def release_0_0_1_cache(path, signature: dict, features, planes):
    """A cache as format version 1 wrote it (signature with the package version)."""
    group = zarr.open_group(path, mode="w")
    stack = (features.shape[0],)
    group.create_array(
        "features",
        shape=stack + (256, 64, 64),
        chunks=(1, 256, 64, 64),
        dtype="float32",
        fill_value=0,
    )
    group.create_array("input_size", shape=stack + (2,), chunks=(1, 2), dtype="int32", fill_value=0)
    for name, kind in (("checksum", "uint32"), ("complete", "uint8")):
        group.create_array(name, shape=stack, chunks=(1,), dtype=kind, fill_value=0)
    fields = {k: v for k, v in signature.items() if k not in ("format", "version", "upscale")}
    group.attrs["napari_sam"] = {
        "format": signature["format"],
        "version": 1,
        **fields,
        "package_version": "0.0.1",
        "upscale": signature["upscale"],
    }
    for z in planes:
        group["features"][z] = features[z]
        group["input_size"][z] = np.array([96, 128], np.int32)
        group["checksum"][z] = zlib.crc32(np.ascontiguousarray(features[z]).tobytes())
        group["complete"][z] = 1


def test_a_cache_of_an_earlier_release_is_reused(tmp_path, volume, predictor):
    scratch = open_cached_session(volume, tmp_path / "now.zarr", model=predictor)
    embed_volume(scratch)
    current = dict(scratch.cache.group.attrs["napari_sam"])
    features = np.asarray(scratch.cache.group["features"][...])
    old = tmp_path / "old.zarr"
    release_0_0_1_cache(old, current, features, planes=(0, 2))

    reopened = open_cached_session(volume, old, model=predictor)
    calls = counting(reopened)
    summary = embed_volume(reopened)
    assert (summary.encoded, summary.reused, len(calls)) == (1, 2, 1)
    for z in range(3):
        np.testing.assert_array_equal(reopened.cache.load((z,)).features.numpy()[0], features[z])


def test_a_new_release_reuses_the_caches_of_the_last(tmp_path, volume, predictor, monkeypatch):
    path = tmp_path / "c.zarr"
    embed_volume(open_cached_session(volume, path, model=predictor))
    monkeypatch.setattr(napari_sam, "__version__", "9.9.9")
    reopened = open_cached_session(volume, path, model=predictor)
    calls = counting(reopened)
    assert embed_volume(reopened).reused == 3 and calls == []
