"""Bad inputs and outputs on the command line: exit 1, one ``napari-sam: error:`` line
saying what is wrong, no traceback, and nothing on disk changed (napari-sam issue 13).

``main(argv)`` runs in-process. Inputs that fail when opened need no model; those that
fail later (a TIFF whose page index is whole but whose pages are not), and the prompts
that reach the engine, use the real default weights."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.cli import main
from napari_sam.commands.predict import attach_negative_values

STACK = (np.arange(20 * 48 * 64).reshape(20, 48, 64) % 251).astype(np.uint8)


def snapshot(folder: Path) -> dict[str, str | None]:
    """Every path under ``folder`` with its content's hash (None for folders)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else None
        for p in sorted(folder.rglob("*"))
    }


def refused(argv: list[str], capsys, lines: int | None = 1) -> str:
    """Run ``argv``; check exit 1 and a one-line error; return the error text."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err, err
    shown = err.strip().splitlines()
    if lines is not None:
        assert len(shown) == lines, err
    assert shown[-1].startswith("napari-sam: error: "), err
    return shown[-1]


def write_stack(path: Path, planes: np.ndarray = STACK, **options) -> Path:
    axes = "ZYX"[-planes.ndim :]
    tifffile.imwrite(path, planes, photometric="minisblack", metadata={"axes": axes}, **options)
    return path


def damage_page(path: Path, page: int) -> Path:
    with tifffile.TiffFile(path) as tif:
        spans = list(zip(tif.pages[page].dataoffsets, tif.pages[page].databytecounts))
    data = bytearray(path.read_bytes())
    for offset, count in spans:
        data[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder of inputs that cannot be opened, and one that opens but cannot be read."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "text.tif").write_text("these are my notes, not an image\n")
    (folder / "empty.tif").write_bytes(b"")
    (folder / "garbage.npy").write_bytes(b"\x93NUMPY this is not a numpy header")
    (folder / "broken.zarr").mkdir()
    (folder / "broken.zarr" / "zarr.json").write_text("{not json")
    (folder / "plain").mkdir()
    (folder / "plain" / "notes.txt").write_text("a folder, not a store")
    half = write_stack(folder / "half.tif", STACK[:4])
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])  # page index cut
    tail = write_stack(folder / "tail.tif", STACK[:4], compression="zlib")
    tail.write_bytes(tail.read_bytes()[:-100])  # index whole, the last page cut
    return folder


UNOPENABLE = [
    ("text.tif", "as a TIFF file (not a TIFF file"),
    ("empty.tif", "as a TIFF file (the file is empty, 0 bytes)"),
    ("garbage.npy", "as a numpy .npy file ("),
    ("broken.zarr", "as a zarr store ("),
    ("half.tif", "as a TIFF file (invalid page offset"),
    ("plain", "is not a zarr store"),
]


@pytest.mark.parametrize(("name", "words"), UNOPENABLE)
def test_embed_refuses_an_input_it_cannot_open(inputs, tmp_path, capsys, name, words):
    before = snapshot(tmp_path)
    line = refused(["embed", str(inputs / name), "--cache", str(tmp_path / "c.zarr")], capsys)
    assert words in line and name in line
    assert snapshot(tmp_path) == before  # no cache begun, the input untouched


@pytest.mark.parametrize(("name", "words"), UNOPENABLE)
def test_segment_everything_refuses_an_input_it_cannot_open(inputs, tmp_path, capsys, name, words):
    before = snapshot(tmp_path)
    argv = ["segment-everything", str(inputs / name), "--out", str(tmp_path / "o.zarr")]
    line = refused([*argv, "--workers", "0"], capsys)
    assert words in line and name in line
    assert snapshot(tmp_path) == before


def test_segment_everything_on_a_tiff_cut_in_a_page_fails_when_it_is_read(inputs, tmp_path, capsys):
    before = snapshot(tmp_path)
    argv = ["segment-everything", str(inputs / "tail.tif"), "--out", str(tmp_path / "o.zarr")]
    line = refused([*argv, "--workers", "0"], capsys)
    assert "Cannot read plane 3 of" in line and "tail.tif" in line
    assert "damaged or missing" in line
    assert snapshot(tmp_path) == before  # the normalisation read it before any output


def test_embed_on_a_tiff_cut_in_a_page(inputs, tmp_path, capsys, default_weights):
    before = snapshot(tmp_path)
    line = refused(["embed", str(inputs / "tail.tif"), "--cache", str(tmp_path / "c.zarr")], capsys)
    assert "Cannot read plane 3 of" in line and "tail.tif" in line
    assert snapshot(tmp_path) == before


@pytest.fixture
def damaged_stack(tmp_path) -> Path:
    """20 planes, plane 1's compressed bytes overwritten: neither the normalisation's
    sample (8 planes) nor the fingerprint's (3) reads plane 1, only its own task does."""
    return damage_page(write_stack(tmp_path / "z.tif", compression="zlib"), page=1)


def test_segment_everything_reports_a_plane_that_fails_during_the_run(
    damaged_stack, tmp_path, capsys, default_weights
):
    out = tmp_path / "o.zarr"
    argv = ["segment-everything", str(damaged_stack), "--out", str(out), "--workers", "0"]
    line = refused([*argv, "--z-range", "1:2", "--no-link"], capsys, lines=None)
    assert "Cannot read plane 1 of" in line and "z.tif" in line
    assert not zarr.open_group(out, mode="r")["complete"][1]  # resumable: slice 1 not done


def test_embed_reports_a_plane_that_fails_during_the_run(
    damaged_stack, tmp_path, capsys, default_weights
):
    argv = ["embed", str(damaged_stack), "--cache", str(tmp_path / "c.zarr"), "--z-range", "1:2"]
    line = refused(argv, capsys, lines=None)  # after the progress bar's line
    assert "Cannot read plane 1 of" in line and "z.tif" in line


# predict: inputs


def test_predict_names_a_folder_as_a_folder(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    line = refused(
        ["predict", str(folder), "--point", "1,1", "--out", str(tmp_path / "m.tif")], capsys
    )
    assert "is a folder" in line and "not found" not in line
    assert ".tif" in line  # what is expected instead


def test_predict_sends_a_zarr_store_to_embed_and_segment_everything(tmp_path, capsys):
    zarr.create_array(tmp_path / "stack.zarr", shape=(2, 8, 8), dtype="u1")
    before = snapshot(tmp_path)
    argv = ["predict", str(tmp_path / "stack.zarr"), "--point", "1,1", "--out", "m.tif"]
    line = refused(argv, capsys)
    assert "is a zarr store" in line and "predict reads 2D image files" in line
    assert "napari-sam embed" in line and "segment-everything" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("name", "words"), [*UNOPENABLE[:3], UNOPENABLE[4]])
def test_predict_refuses_a_damaged_image(inputs, tmp_path, capsys, name, words):
    before = snapshot(tmp_path)
    argv = ["predict", str(inputs / name), "--point", "1,1", "--out", str(tmp_path / "m.tif")]
    assert words in refused(argv, capsys)
    assert snapshot(tmp_path) == before


# predict: outputs


@pytest.fixture
def image(tmp_path) -> Path:
    return write_stack(tmp_path / "image.tif", STACK[0])


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_predict_refuses_one_file_for_mask_and_overlay(image, tmp_path, capsys, overwrite):
    before = snapshot(tmp_path)
    out = str(tmp_path / "o.tif")
    line = refused(
        ["predict", str(image), "--point", "5,5", "--out", out, "--overlay", out, *overwrite],
        capsys,
    )
    assert "--out and --overlay are the same file" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag", ["--out", "--overlay"])
def test_predict_never_writes_over_its_input(image, tmp_path, capsys, flag):
    before = snapshot(tmp_path)
    outputs = {"--out": str(tmp_path / "m.tif"), "--overlay": str(tmp_path / "m.png")}
    outputs[flag] = str(tmp_path / "." / "image.tif")  # the same file, written another way
    argv = ["predict", str(image), "--point", "5,5", "--overwrite"]
    line = refused([*argv, "--out", outputs["--out"], "--overlay", outputs["--overlay"]], capsys)
    assert f"{flag} " in line and "is the input itself" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        (["--out", "m.jpg"], "Unsupported output format '.jpg'"),
        (["--out", "m.tif", "--overlay", "o.npy"], "Unsupported overlay format '.npy'"),
    ],
)
def test_predict_refuses_an_output_format_before_writing_anything(
    image, tmp_path, capsys, outputs, words
):
    before = snapshot(tmp_path)
    outputs = [o if o.startswith("--") else str(tmp_path / o) for o in outputs]
    assert words in refused(["predict", str(image), "--point", "5,5", *outputs], capsys)
    assert snapshot(tmp_path) == before  # the mask is not written when the overlay cannot be


@pytest.mark.parametrize("command", ["embed", "segment-everything"])
@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_a_store_output_never_replaces_or_nests_with_its_input(tmp_path, capsys, command, where):
    source = tmp_path / "data" / "in.zarr"
    zarr.create_array(source, shape=(2, 8, 8), dtype="u1")[...] = 7
    output = {
        "same": source,
        "inside": source / "out.zarr",
        "around": tmp_path / "data",  # --overwrite would delete the input with it
    }[where]
    before = snapshot(tmp_path)
    flag = "--cache" if command == "embed" else "--out"
    line = refused([command, str(source), flag, str(output), "--overwrite"], capsys)
    assert (
        flag in line
        and {
            "same": "is the input itself",
            "inside": "lies inside the input",
            "around": "contains the input",
        }[where]
        in line
    )
    assert snapshot(tmp_path) == before


# predict: coordinates written naturally


def test_negative_values_are_attached_to_their_flag():
    argv = ["predict", "a.tif", "--point", "-5,10", "--box", "-3,-3,40,40", "--out", "m.tif"]
    assert attach_negative_values(argv) == [
        "predict",
        "a.tif",
        "--point=-5,10",
        "--box=-3,-3,40,40",
        "--out",
        "m.tif",
    ]
    assert attach_negative_values(["--point", "5,-1", "-v"]) == ["--point", "5,-1", "-v"]
    assert attach_negative_values(["--negative", "-.5,2"]) == ["--negative=-.5,2"]


def test_a_point_off_the_image_is_refused_by_the_engine_in_plain_words(image, tmp_path, capsys):
    before = snapshot(tmp_path)
    argv = ["predict", str(image), "--point", "-5,10", "--out", str(tmp_path / "m.tif")]
    line = refused(argv, capsys)  # argparse no longer takes -5,10 for an option
    assert "point (row, col) = [-5.0, 10.0] lies outside the image of shape (48, 64)" in line
    assert snapshot(tmp_path) == before


def test_a_box_entirely_off_the_image_is_refused(image, tmp_path, capsys):
    argv = ["predict", str(image), "--box", "-30,-30,-10,-10", "--out", str(tmp_path / "m.tif")]
    assert "lies outside the image" in refused(argv, capsys)


def test_a_box_over_the_edge_is_clipped_to_the_image(image, tmp_path, capsys, default_weights):
    out, inside = tmp_path / "m.tif", tmp_path / "inside.tif"
    argv = ["predict", str(image), "--negative", "-0,40"]
    assert main([*argv, "--box", "-3,-3,20,30", "--out", str(out)]) == 0
    assert capsys.readouterr().err == (
        "napari-sam: note: --box -3,-3,20,30 reaches past the image of 48 x 64 pixels: "
        "clipped to 0,0,20,30\n"
    )
    assert main([*argv, "--box", "0,0,20,30", "--out", str(inside)]) == 0
    assert capsys.readouterr().err == ""
    mask = tifffile.imread(out)
    assert mask.shape == (48, 64) and mask.any()
    assert np.array_equal(mask, tifffile.imread(inside))  # the box meant


def test_far_off_coordinates_keep_argparse_s_exit_2_for_malformed_text(image, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(image), "--point", "-5", "--out", str(tmp_path / "m.tif")])
    assert exit_info.value.code == 2
    assert "ROW,COL" in capsys.readouterr().err
