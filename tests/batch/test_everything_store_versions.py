"""Segment-everything stores written by earlier releases open, migrate and resume.

An "old release" store is built here exactly as release 0.1.0 wrote it (format version 1:
``sections``, ``labels``, ``objects`` and ``complete``, no checksums, and a signature that
held the package version, here "0.0.1"). A newer release must resume it, keeping its
finished slices, never discard it.
"""

import zlib

import numpy as np
import pytest
import zarr
from blob_segmenter import run_blobs, write_stack

import napari_sam

SLICES = 4


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    return write_stack(tmp_path_factory.mktemp("stack") / "stack.tif", SLICES)


@pytest.fixture(scope="module")
def reference(stack_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "labels.zarr"
    return out, run_blobs(stack_file, out)


def read(out, name):
    return np.asarray(zarr.open_group(out, mode="r")[name][...])


def release_0_0_1_signature(current: dict) -> dict:
    """The signature a 0.0.1 release wrote for the same run: version 1, package version last."""
    fields = {k: v for k, v in current.items() if k not in ("format", "version")}
    return {"format": current["format"], "version": 1, **fields, "package_version": "0.0.1"}


def write_release_0_0_1_store(path, signature: dict, sections: np.ndarray, done, counts=None):
    """A store as format version 1 wrote it, with slices ``done`` finished."""
    group = zarr.open_group(path, mode="w")
    slices, rows, cols = sections.shape
    chunks = (1, min(rows, 2048), min(cols, 2048))
    for name in ("sections", "labels"):
        group.create_array(name, shape=sections.shape, chunks=chunks, dtype="int32", fill_value=0)
    group.create_array("objects", shape=(slices,), chunks=(1,), dtype="int32", fill_value=0)
    group.create_array("complete", shape=(slices,), chunks=(1,), dtype="uint8", fill_value=0)
    group.attrs["napari_sam"] = signature
    for z in done:
        group["sections"][z] = sections[z]
        group["objects"][z] = int(sections[z].max()) if counts is None else counts[z]
        group["complete"][z] = 1


def renumbered(sections: np.ndarray) -> np.ndarray:
    """The same objects with their ids reversed in each slice (as another release might)."""
    out = sections.copy()
    for z, plane in enumerate(sections):
        n = int(plane.max())
        out[z][plane > 0] = n + 1 - plane[plane > 0]
    return out


def test_a_store_of_an_earlier_release_resumes_with_its_finished_slices(
    stack_file, reference, tmp_path
):
    current = dict(zarr.open_group(reference[0], mode="r").attrs["napari_sam"])
    old_sections = renumbered(read(reference[0], "sections"))
    out = tmp_path / "old.zarr"
    write_release_0_0_1_store(out, release_0_0_1_signature(current), old_sections, done=(0, 1))

    summary = run_blobs(stack_file, out)

    assert (summary.segmented, summary.reused, summary.repaired) == (2, 2, 0)
    sections = read(out, "sections")
    np.testing.assert_array_equal(sections[:2], old_sections[:2])  # kept, not redone
    np.testing.assert_array_equal(sections[2:], read(reference[0], "sections")[2:])
    attrs = zarr.open_group(out, mode="r").attrs
    assert attrs["napari_sam"] == current  # format version 2, no package version
    assert attrs["migrated_from"] == {"version": 1, "package_version": "0.0.1"}
    assert read(out, "checksum").tolist() == [
        zlib.crc32(np.ascontiguousarray(plane, np.int32).tobytes()) for plane in sections
    ]
    assert summary.sections == reference[1].sections


def test_old_slices_that_disagree_with_their_count_are_segmented_again(
    stack_file, reference, tmp_path
):
    current = dict(zarr.open_group(reference[0], mode="r").attrs["napari_sam"])
    sections = read(reference[0], "sections")
    counts = [int(plane.max()) for plane in sections]
    counts[1] += 1  # the count says one object more than the slice holds
    out = tmp_path / "old.zarr"
    write_release_0_0_1_store(
        out, release_0_0_1_signature(current), sections, done=(0, 1, 2), counts=counts
    )
    summary = run_blobs(stack_file, out)
    assert (summary.segmented, summary.reused, summary.repaired) == (2, 2, 1)
    for name in ("sections", "objects", "labels"):
        np.testing.assert_array_equal(read(out, name), read(reference[0], name))


def test_a_new_release_resumes_the_stores_of_the_last(stack_file, tmp_path, monkeypatch):
    out = tmp_path / "labels.zarr"
    run_blobs(stack_file, out, z_range=(0, 3))
    monkeypatch.setattr(napari_sam, "__version__", "9.9.9")
    summary = run_blobs(stack_file, out)
    assert (summary.segmented, summary.reused) == (1, 3)
    attrs = zarr.open_group(out, mode="r").attrs
    assert attrs["run"]["package_version"] == "9.9.9"
    assert "package_version" not in attrs["napari_sam"]
