"""The segment-everything store never loses data: what --overwrite may remove, the lock,
damage found on resume, and 2D images or short stacks that keep their objects.

Each data-loss case of napari-sam issue 13 has a test here; they use a model-free
stand-in segmenter (tests/batch/blob_segmenter.py) so that object counts are exact.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from blob_segmenter import (
    BlobSettings,
    run_blobs,
    subprocess_environment,
    write_stack,
)

from napari_sam.engine.everything.linking import LinkingSettings, label_sections
from napari_sam.errors import CacheMismatchError, InvalidInputError, NapariSamError

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


def tree(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --- --overwrite deletes only what is ours -------------------------------------------------


def test_overwrite_never_removes_the_folder_holding_the_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    image = write_stack(data / "img.tif", 2)
    (data / "neighbour.txt").write_text("a colleague's notes")
    before = tree(data)
    with pytest.raises(NapariSamError, match=r"contains the input .*img\.tif"):
        run_blobs(image, data, overwrite=True)
    assert tree(data) == before


def test_overwrite_refuses_a_folder_with_a_user_file(stack_file, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep me")
    with pytest.raises(NapariSamError, match=r"keep\.txt.*not even with --overwrite"):
        run_blobs(stack_file, precious, overwrite=True)
    assert tree(precious) == {"keep.txt": b"keep me"}


def test_overwrite_refuses_a_user_file_inside_our_store(stack_file, tmp_path):
    out = tmp_path / "labels.zarr"
    run_blobs(stack_file, out, z_range=(0, 1))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(NapariSamError, match=r"notes\.txt"):
        run_blobs(stack_file, out, BlobSettings(threshold=120), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert read(out, "complete").tolist() == [1, 0, 0, 0]  # the store is untouched too


def test_an_out_that_is_a_regular_file_is_refused_and_kept(stack_file, tmp_path):
    out = tmp_path / "labels.zarr"
    out.write_bytes(b"not a folder")
    for overwrite in (False, True):
        with pytest.raises(InvalidInputError, match=r"labels\.zarr is a file, not a folder"):
            run_blobs(stack_file, out, overwrite=overwrite)
    assert out.read_bytes() == b"not a folder"


def test_an_output_inside_a_zarr_input_is_refused_before_writing(tmp_path):
    source = tmp_path / "raw.zarr"
    array = zarr.create_array(source, shape=(2, 32, 32), chunks=(1, 32, 32), dtype="uint16")
    array[...] = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    before = tree(source)
    with pytest.raises(NapariSamError, match=r"inside the input .*raw\.zarr"):
        run_blobs(source, source / "labels.zarr")
    with pytest.raises(NapariSamError, match=r"raw\.zarr is the input itself"):
        run_blobs(source, source, overwrite=True)
    assert tree(source) == before


# --- one writing run per store -------------------------------------------------------------


def start_slow_run(stack_file, out, delay=1.0):
    """A child process running the stand-in over the stack, ``delay`` seconds per slice."""
    script = (
        "import sys; from blob_segmenter import run_blobs; "
        "s = run_blobs(sys.argv[1], sys.argv[2]); print(s.objects, s.sections)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(stack_file), str(out)],
        env=subprocess_environment(delay),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_slices(out, process, count):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if read(out, "complete").sum() >= count:
                return
        except (FileNotFoundError, KeyError, ValueError, RuntimeError):
            pass  # the store is being created
        time.sleep(0.05)
    raise AssertionError(f"the child wrote fewer than {count} slices: {process.communicate()}")


def test_a_second_run_cannot_take_over_a_running_store(stack_file, reference, tmp_path):
    out = tmp_path / "shared.zarr"
    first = start_slow_run(stack_file, out)
    try:
        wait_for_slices(out, first, 1)
        with pytest.raises(NapariSamError, match=rf"another napari-sam run \(pid {first.pid} on "):
            run_blobs(stack_file, out, BlobSettings(threshold=120), overwrite=True)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    objects, sections = (int(v) for v in stdout.split())
    assert (objects, sections) == (reference[1].objects, reference[1].sections)
    np.testing.assert_array_equal(read(out, "labels"), read(reference[0], "labels"))
    assert zarr.open_group(out, mode="r").attrs["napari_sam"]["settings"] == {"threshold": 100}


def test_a_killed_run_leaves_the_store_free(stack_file, reference, tmp_path):
    out = tmp_path / "killed.zarr"
    first = start_slow_run(stack_file, out)
    try:
        wait_for_slices(out, first, 1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = int(read(out, "complete").sum())
    summary = run_blobs(stack_file, out)
    assert (summary.segmented, summary.reused) == (SLICES - done, done)
    np.testing.assert_array_equal(read(out, "labels"), read(reference[0], "labels"))


# --- resume checks what it keeps -----------------------------------------------------------


def test_a_missing_sections_chunk_is_segmented_again(stack_file, reference, tmp_path):
    out = tmp_path / "labels.zarr"
    run_blobs(stack_file, out)
    (out / "sections" / "c" / "2" / "0" / "0").unlink()
    summary = run_blobs(stack_file, out)
    assert (summary.segmented, summary.reused, summary.repaired) == (1, SLICES - 1, 1)
    for name in ("sections", "objects", "labels"):
        np.testing.assert_array_equal(read(out, name), read(reference[0], name))
    assert summary.objects == reference[1].objects


def test_a_damaged_flag_chunk_redoes_only_its_slice(stack_file, reference, tmp_path):
    out = tmp_path / "labels.zarr"
    run_blobs(stack_file, out)
    (out / "complete" / "c" / "1").write_bytes(b"garbage")
    (out / "objects" / "c" / "3").write_bytes(b"garbage")
    summary = run_blobs(stack_file, out)
    assert (summary.segmented, summary.reused, summary.repaired) == (2, SLICES - 2, 2)
    for name in ("sections", "objects", "complete", "labels"):
        np.testing.assert_array_equal(read(out, name), read(reference[0], name))


@pytest.mark.parametrize("damaged", ["zarr.json", "objects/zarr.json", "sections/zarr.json"])
def test_damaged_metadata_names_the_store_and_the_remedy(stack_file, reference, tmp_path, damaged):
    out = tmp_path / "labels.zarr"
    run_blobs(stack_file, out, z_range=(0, 2))
    (out / damaged).write_text("{not json")
    with pytest.raises(CacheMismatchError, match=r"labels\.zarr is damaged.*overwrite=True"):
        run_blobs(stack_file, out)
    summary = run_blobs(stack_file, out, overwrite=True)  # ours, so --overwrite may replace it
    assert (summary.segmented, summary.reused) == (SLICES, 0)
    np.testing.assert_array_equal(read(out, "labels"), read(reference[0], "labels"))


# --- 2D images and short stacks keep their objects -----------------------------------------


def test_a_2d_image_keeps_every_object(tmp_path):
    image = write_stack(tmp_path / "plane.tif", 0)
    summary = run_blobs(image, tmp_path / "plane.zarr", linking=LinkingSettings(min_extent=2))
    sections = read(tmp_path / "plane.zarr", "sections")
    assert sections.shape == (1, 64, 80) and summary.sections == int(sections.max()) > 3
    assert summary.objects == summary.sections and summary.removed == 0
    np.testing.assert_array_equal(read(tmp_path / "plane.zarr", "labels"), sections)


@pytest.mark.parametrize(
    ("z_range", "linking"),
    [((2, 3), LinkingSettings()), (None, LinkingSettings(min_extent=SLICES + 3))],
)
def test_fewer_slices_than_min_extent_drop_nothing(stack_file, tmp_path, z_range, linking):
    out = tmp_path / "short.zarr"
    summary = run_blobs(stack_file, out, linking=linking, z_range=z_range)
    first, stop = z_range or (0, SLICES)
    counts = read(out, "objects")[first:stop]
    assert summary.sections == int(counts.sum()) > 3 and summary.removed == 0
    if stop - first == 1:
        assert summary.objects == summary.sections
        np.testing.assert_array_equal(read(out, "labels")[first], read(out, "sections")[first])
    else:  # every track spans at most the whole stack, so none is removed
        assert summary.objects == int(read(out, "labels").max()) > 0
    assert zarr.open_group(out, mode="r").attrs["run"]["min_extent_applied"] == min(
        linking.min_extent, stop - first
    )


def test_no_link_numbers_a_single_slice_like_label_sections(stack_file, tmp_path):
    out = tmp_path / "apart.zarr"
    summary = run_blobs(stack_file, out, linking=None, z_range=(1, 2))
    expected = label_sections(read(out, "sections")[1:2]).labels
    np.testing.assert_array_equal(read(out, "labels")[1:2], expected)
    assert summary.objects == summary.sections


def test_a_finished_run_leaves_no_lock_file_behind(tmp_path, stack_file):
    out = tmp_path / "labels.zarr"
    run_blobs(stack_file, out, z_range=(0, 1))
    assert sorted(os.listdir(tmp_path)) == ["labels.zarr"]
