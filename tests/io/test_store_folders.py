"""What napari-sam may do with a store's folder (io/stores.py): what counts as ours, what
--overwrite may empty, nesting with the input, and reading flags with damaged chunks."""

import os

import numpy as np
import pytest
import zarr

from napari_sam.errors import CacheMismatchError, InvalidInputError, StoreAccessError
from napari_sam.io.stores import (
    EMBEDDING_CACHE,
    EVERYTHING_STORE,
    check_store_path,
    claim_store,
    read_units,
    replace_store,
)


def make_store(path, version=2, signed=True):
    """A small segment-everything store of ``version`` with two slices flagged."""
    group = zarr.open_group(path, mode="w")
    group.create_array("sections", shape=(3, 8, 8), chunks=(1, 8, 8), dtype="int32")
    for name in ("objects", "complete", "checksum"):
        group.create_array(name, shape=(3,), chunks=(1,), dtype="uint8", fill_value=0)
    group["complete"][:2] = 1
    if signed:
        group.attrs["napari_sam"] = {"format": EVERYTHING_STORE.format, "version": version}
    return path


def test_a_signed_store_of_ours_gives_its_signature(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    assert claim_store(store, EVERYTHING_STORE, overwrite=False)["version"] == 2
    assert claim_store(tmp_path / "absent.zarr", EVERYTHING_STORE, overwrite=True) is None
    (tmp_path / "empty").mkdir()
    assert claim_store(tmp_path / "empty", EVERYTHING_STORE, overwrite=False) is None


def test_an_unsigned_store_needs_overwrite_and_is_then_emptied(tmp_path):
    store = make_store(tmp_path / "s.zarr", signed=False)
    with pytest.raises(CacheMismatchError, match=r"no napari-sam signature .*overwrite=True"):
        claim_store(store, EVERYTHING_STORE, overwrite=False)
    assert claim_store(store, EVERYTHING_STORE, overwrite=True) is None
    assert store.is_dir() and os.listdir(store) == []


def test_a_newer_format_is_refused_with_the_remedy(tmp_path):
    store = make_store(tmp_path / "s.zarr", version=3)
    with pytest.raises(CacheMismatchError, match=r"format version 3, newer .*\(versions 1, 2\)"):
        claim_store(store, EVERYTHING_STORE, overwrite=False)
    assert (store / "sections").is_dir()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("notes.txt", "notes.txt"),
        ("sections/notes.txt", "sections/notes.txt"),
        ("sections/c/0/0/notes.txt", "sections/c/0/0/notes.txt"),
        ("cells.tif", "cells.tif"),
    ],
)
def test_a_user_file_anywhere_stops_the_replacement(tmp_path, extra, named):
    store = make_store(tmp_path / "s.zarr")
    (store / extra).parent.mkdir(parents=True, exist_ok=True)
    (store / extra).write_text("mine")
    with pytest.raises(CacheMismatchError, match=rf"it holds {named}, .*not even with --overwrite"):
        replace_store(store, EVERYTHING_STORE)
    assert (store / extra).read_text() == "mine" and (store / "zarr.json").is_file()


def test_zarr_temporaries_are_ours_and_long_lists_are_cut(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    (store / "complete" / "c" / ("1." + "0" * 32 + ".partial")).write_bytes(b"")
    (store / ("zarr." + "a" * 32 + ".partial")).write_bytes(b"")
    replace_store(store, EVERYTHING_STORE)
    assert os.listdir(store) == []
    for index in range(8):
        (store / f"image{index}.tif").write_bytes(b"")
    with pytest.raises(CacheMismatchError, match=r"image4\.tif and 3 more, which"):
        replace_store(store, EVERYTHING_STORE)


def test_a_symlink_inside_is_not_ours_and_a_symlinked_store_stays_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    store = make_store(tmp_path / "s.zarr")
    os.symlink(outside, store / "labels")
    with pytest.raises(CacheMismatchError, match="it holds labels/"):
        replace_store(store, EVERYTHING_STORE)
    os.unlink(store / "labels")
    link = tmp_path / "link.zarr"
    os.symlink(store, link)
    replace_store(link, EVERYTHING_STORE)
    assert link.is_symlink() and os.listdir(store) == []
    assert (outside / "precious.txt").read_text() == "keep"


def test_one_kind_never_replaces_the_other(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    with pytest.raises(
        CacheMismatchError, match="holds a napari-sam segment-everything store, not"
    ):
        claim_store(store, EMBEDDING_CACHE, overwrite=True)
    assert (store / "sections").is_dir()


def test_store_paths_are_checked_against_the_input(tmp_path):
    image = tmp_path / "data" / "img.tif"
    image.parent.mkdir()
    image.write_bytes(b"tif")
    assert check_store_path(tmp_path / "out.zarr", EVERYTHING_STORE, image) == tmp_path / "out.zarr"
    for folder in (tmp_path / "data", tmp_path):
        with pytest.raises(InvalidInputError, match=r"contains the input .*e\.g\. .*img_out\.zarr"):
            check_store_path(folder, EVERYTHING_STORE, image)
    with pytest.raises(InvalidInputError, match=r"--cache .*img\.tif is a file, not a folder"):
        check_store_path(image, EMBEDDING_CACHE)
    zarr_input = tmp_path / "raw.zarr"
    zarr_input.mkdir()
    with pytest.raises(InvalidInputError, match=r"lies inside the input .*raw\.zarr"):
        check_store_path(zarr_input / "labels.zarr", EMBEDDING_CACHE, zarr_input)
    with pytest.raises(InvalidInputError, match=r"--cache .*raw\.zarr is the input itself"):
        check_store_path(zarr_input, EMBEDDING_CACHE, zarr_input)


def test_flags_with_a_damaged_chunk_read_as_not_done(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    (store / "complete" / "c" / "1").write_bytes(b"garbage")
    group = zarr.open_group(store, mode="r")
    values, unreadable = read_units(group["complete"], store, EVERYTHING_STORE, "flags")
    assert values.tolist() == [1, 0, 0] and unreadable.tolist() == [False, True, False]


def test_a_disk_error_while_reading_flags_is_not_damage(tmp_path):
    class Refusing:
        shape, dtype = (2,), np.dtype("uint8")

        def __getitem__(self, where):
            raise PermissionError(13, "Permission denied")

    with pytest.raises(StoreAccessError, match="Cannot read flags of the embedding cache"):
        read_units(Refusing(), tmp_path, EMBEDDING_CACHE, "flags")
