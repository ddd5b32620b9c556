"""Damaged, empty and mistaken inputs give an InvalidInputError naming the file, whether
they fail when opened (``open_volume``, ``read_image``) or later, when a plane is read
through ``Volume.planes_view()``; outputs of a format we cannot write are refused before
anything is written."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.errors import InvalidInputError
from napari_sam.io.images import check_label_path, read_image, write_labels
from napari_sam.io.overlay import check_overlay_path, save_overlay
from napari_sam.io.volumes import TransposedArray, open_volume

STACK = (np.arange(4 * 32 * 40).reshape(4, 32, 40) % 251).astype(np.uint8)


def write_stack(path: Path, planes: np.ndarray = STACK, **options) -> Path:
    tifffile.imwrite(path, planes, photometric="minisblack", metadata={"axes": "ZYX"}, **options)
    return path


def cut_in_half(path: Path) -> Path:
    """The file with its second half missing: the header and page index stay whole."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def damage_page(path: Path, page: int) -> Path:
    """Overwrite one page's (compressed) bytes: the file keeps its size and index."""
    with tifffile.TiffFile(path) as tif:
        spans = list(zip(tif.pages[page].dataoffsets, tif.pages[page].databytecounts))
    data = bytearray(path.read_bytes())
    for offset, count in spans:
        data[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))
    return path


def bad_file(tmp_path: Path, name: str) -> Path:
    """Files that cannot be opened at all."""
    path = tmp_path / name
    if name == "text.tif":
        path.write_text("these are my notes, not an image\n")
    elif name == "empty.tif":
        path.write_bytes(b"")
    elif name == "garbage.npy":
        path.write_bytes(b"\x93NUMPY this is not a numpy header")
    elif name == "empty.npy":
        path.write_bytes(b"")
    elif name == "broken.zarr":
        path.mkdir()
        (path / "zarr.json").write_text("{not json")
    return path


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("text.tif", r"Cannot read .*text\.tif as a TIFF file \(not a TIFF file"),
        ("empty.tif", r"Cannot read .*empty\.tif as a TIFF file \(the file is empty, 0 bytes\)"),
        ("garbage.npy", r"Cannot read .*garbage\.npy as a numpy \.npy file \("),
        ("empty.npy", r"Cannot read .*empty\.npy as a numpy \.npy file \(the file is empty"),
        ("broken.zarr", r"Cannot read .*broken\.zarr as a zarr store \("),
    ],
)
def test_a_file_that_cannot_be_opened_is_named_with_the_reason(tmp_path, name, words):
    path = bad_file(tmp_path, name)
    with pytest.raises(InvalidInputError, match=words) as error:
        open_volume(path)
    assert "truncated" in str(error.value)  # what to check
    assert error.value.__cause__ is not None  # the decoder's own error stays attached


def test_a_folder_that_is_no_zarr_store_is_named():
    with pytest.raises(InvalidInputError, match="is not a zarr store"):
        open_volume(Path(__file__).parent)


def test_a_tiff_whose_page_index_is_cut_short_is_refused_when_opened(tmp_path, caplog):
    path = cut_in_half(write_stack(tmp_path / "half.tif"))
    with pytest.raises(InvalidInputError, match=r"half\.tif as a TIFF file \(invalid page offset"):
        open_volume(path)
    with pytest.raises(InvalidInputError, match=r"half\.tif as a TIFF file \(invalid page offset"):
        read_image(path)
    assert not [r for r in caplog.records if r.name == "tifffile"]  # said once, in the error


def test_a_cut_imagej_stack_is_refused_rather_than_read_as_one_plane(tmp_path):
    stack = np.repeat(STACK, 5, axis=0)  # 20 planes
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    assert open_volume(path).shape == (20, 32, 40)
    cut_in_half(path)  # tifffile alone would now open it as a single (32, 40) plane
    with pytest.raises(InvalidInputError, match=r"ImageJ series metadata invalid or corrupted"):
        open_volume(path)


def test_a_tiff_cut_in_its_last_page_opens_and_fails_on_that_plane(tmp_path):
    path = write_stack(tmp_path / "tail.tif", compression="zlib")  # index before each page
    path.write_bytes(path.read_bytes()[:-100])
    view = open_volume(path).planes_view()  # the page index is whole: opening works
    assert view.shape == (4, 32, 40)
    assert np.array_equal(view[2], STACK[2])  # the planes before are still there
    with pytest.raises(InvalidInputError, match=r"Cannot read plane 3 of .*tail\.tif") as error:
        view[3]
    assert "damaged or missing" in str(error.value)
    with pytest.raises(InvalidInputError, match=r"Cannot read the data of .*tail\.tif"):
        np.asarray(view)  # the whole stack, as training reads it


def test_a_damaged_tiff_page_fails_when_read_and_only_then(tmp_path):
    path = damage_page(write_stack(tmp_path / "z.tif", compression="zlib"), page=1)
    view = open_volume(path).planes_view()
    assert np.array_equal(view[0], STACK[0]) and np.array_equal(view[2], STACK[2])
    with pytest.raises(InvalidInputError, match=r"Cannot read plane 1 of .*z\.tif"):
        view[1]


def test_a_damaged_zarr_chunk_fails_when_read(tmp_path):
    array = zarr.create_array(
        tmp_path / "a.zarr", shape=STACK.shape, dtype="u1", chunks=(1, 32, 40)
    )
    array[...] = STACK
    (tmp_path / "a.zarr" / "c" / "2" / "0" / "0").write_bytes(b"not zstd")
    view = open_volume(tmp_path / "a.zarr").planes_view()
    assert isinstance(view, TransposedArray)  # read through the guard even in file order
    assert np.array_equal(view[1], STACK[1])
    with pytest.raises(InvalidInputError, match=r"Cannot read plane 2 of zarr array .*a\.zarr"):
        view[2]


def test_index_errors_are_not_taken_for_damage(tmp_path):
    view = open_volume(write_stack(tmp_path / "ok.tif")).planes_view()
    with pytest.raises(IndexError):
        view[7]


def test_png_and_jpeg_open_as_volumes(tmp_path):
    from PIL import Image

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:10, 5:15] = (200, 100, 50)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    volume = open_volume(tmp_path / "a.png")
    assert volume.axes == "yxc" and np.array_equal(np.asarray(volume.planes_view()), rgb)


def test_an_unknown_suffix_lists_the_formats_in_neutral_words(tmp_path):
    (tmp_path / "a.czi").write_bytes(b"\x00" * 10)
    with pytest.raises(InvalidInputError, match=r"Unknown format '\.czi'") as error:
        open_volume(tmp_path / "a.czi")
    assert ".png" in str(error.value) and "read_image" not in str(error.value)


# read_image: predict's reader


def test_read_image_names_a_folder_as_a_folder(tmp_path):
    with pytest.raises(InvalidInputError, match=r"is a folder, not an image file") as error:
        read_image(tmp_path)
    assert "not found" not in str(error.value) and "open_volume" in str(error.value)


def test_read_image_of_a_missing_file_says_not_found(tmp_path):
    with pytest.raises(InvalidInputError, match=r"Image file not found: .*none\.tif"):
        read_image(tmp_path / "none.tif")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("empty.tif", r"as a TIFF file \(the file is empty, 0 bytes\)"),
        ("text.tif", r"as a TIFF file \(not a TIFF file"),
        ("garbage.npy", r"as a numpy \.npy file"),
    ],
)
def test_read_image_of_a_damaged_file(tmp_path, name, words):
    with pytest.raises(InvalidInputError, match=words):
        read_image(bad_file(tmp_path, name))


# Outputs


@pytest.mark.parametrize("name", ["mask.jpg", "mask", "mask.zarr"])
def test_label_outputs_of_unknown_format_are_refused_before_writing(tmp_path, name):
    with pytest.raises(InvalidInputError, match=r"Unsupported output format .*: use \.tif"):
        check_label_path(tmp_path / name)
    with pytest.raises(InvalidInputError, match="Unsupported output format"):
        write_labels(tmp_path / name, np.ones((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_overlays_of_unknown_format_are_refused_before_writing(tmp_path):
    with pytest.raises(InvalidInputError, match=r"Unsupported overlay format '\.npy'.*\.png"):
        check_overlay_path(tmp_path / "o.npy")
    rgb = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="Unsupported overlay format"):
        save_overlay(tmp_path / "o.npy", rgb, np.ones((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
    assert save_overlay(tmp_path / "o.PNG", rgb, np.ones((4, 4), np.uint8)).stat().st_size > 0


def test_an_unwritable_output_is_an_input_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(InvalidInputError, match=r"Cannot write .*mask\.tif"):
        write_labels(blocker / "mask.tif", np.ones((4, 4), np.uint8))
    with pytest.raises(InvalidInputError, match=r"Cannot write .*o\.png"):
        save_overlay(blocker / "o.png", np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.uint8))
