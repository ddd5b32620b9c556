"""One message, two audiences: errors name parameters as Python callers write them
(``channel=INDEX``, ``axes=``, ``architecture=``), and the command line shows the same
message with the flags of the running subcommand (``--channel INDEX``, ``--axes``,
``--architecture``) through one table, ``napari_sam.cli.PARAMETER_FLAGS``."""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam.cli import PARAMETER_FLAGS, build_parser, command_line_words, main
from napari_sam.engine.model.registry import MODELS, get_model_spec
from napari_sam.engine.prediction.preprocess import compute_normalization
from napari_sam.errors import InvalidInputError, UnknownModelError
from napari_sam.io.volumes import open_volume


def error_line(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-sam: error: "), err
    return lines[0]


def api_words(line: str) -> list[str]:
    """Parameters written the Python way that the command line should not show."""
    return re.findall(rf"\b(?:{'|'.join(PARAMETER_FLAGS)})=", line)


# The rewriting itself


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("choose one with channel=INDEX.", "choose one with --channel INDEX."),
        (
            "pass axes= with one letter per axis, e.g. axes='zyx'.",
            "pass --axes with one letter per axis, e.g. --axes zyx.",
        ),
        (
            "Pick the matching model name or pass architecture=.",
            "Pick the matching model name or pass --architecture.",
        ),
        (
            "level=3 does not exist: pass level= an integer",
            "--level 3 does not exist: pass --level an integer",
        ),
        ("leave out key= and level=.", "leave out --key and --level."),
        # names that are not whole parameter names stay as they are
        (
            "points_per_side=0 is invalid; my_axes=1; low=0.5",
            "points_per_side=0 is invalid; my_axes=1; low=0.5",
        ),
    ],
)
def test_parameters_become_the_flags_of_the_command(message, expected):
    assert (
        command_line_words(message, {"channel", "axes", "architecture", "key", "level"}) == expected
    )


def test_a_python_only_parameter_s_sentence_is_left_out():
    message = (
        "The image has 4 channels (last axis of shape (8, 8, 4)); choose one with "
        "channel=INDEX. Only 3 channels are taken as RGB. Or mix them into grey with "
        "channel_weights=(w0, w1, ...), one weight per channel."
    )
    assert command_line_words(message, {"channel"}) == (
        "The image has 4 channels (last axis of shape (8, 8, 4)); choose one with "
        "--channel INDEX. Only 3 channels are taken as RGB."
    )


def test_a_parameter_the_command_lacks_keeps_its_python_words():
    assert command_line_words("pass axes= naming each axis.", {"channel"}) == (
        "pass axes= naming each axis."
    )


def test_every_flag_of_the_table_exists_on_some_subcommand():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    flags = {
        option
        for sub in commands.values()
        for action in sub._actions
        for option in action.option_strings
    }
    for name, dest in PARAMETER_FLAGS.items():
        assert dest is None or "--" + dest.replace("_", "-") in flags, name


# Each message from its one source, read both ways


def test_channel_choice_python_and_command_line(tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 4), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match=r"channel=INDEX.*channel_weights=\(w0, w1"):
        compute_normalization(image)
    np.save(tmp_path / "rgba.npy", image)
    argv = [
        "predict",
        str(tmp_path / "rgba.npy"),
        "--point",
        "3,3",
        "--out",
        str(tmp_path / "m.tif"),
    ]
    line = error_line(argv, capsys)
    assert "choose one with --channel INDEX" in line
    assert "channel_weights" not in line and api_words(line) == []
    with pytest.raises(
        InvalidInputError, match=r"channel 7 does not exist: the image has 4 channels \(0 to 3"
    ):
        compute_normalization(image, channel=7)
    line = error_line([*argv, "--channel", "7"], capsys)
    assert "channel 7 does not exist: the image has 4 channels (0 to 3" in line


def test_axes_python_and_command_line(tmp_path, capsys):
    np.save(tmp_path / "five.npy", np.zeros((2, 2, 2, 8, 8), np.uint8))
    with pytest.raises(InvalidInputError, match=r"pass axes= with one letter.*axes='tczyx'"):
        open_volume(tmp_path / "five.npy")
    line = error_line(
        ["embed", str(tmp_path / "five.npy"), "--cache", str(tmp_path / "c.zarr")], capsys
    )
    assert "pass --axes with one letter per axis" in line and "--axes tczyx" in line
    assert api_words(line) == []


def test_level_python_and_command_line(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(InvalidInputError, match=r"level=2 does not exist.*pass level= an integer"):
        open_volume(tmp_path / "a.tif", level=2)
    argv = ["embed", str(tmp_path / "a.tif"), "--cache", str(tmp_path / "c.zarr"), "--level", "2"]
    line = error_line(argv, capsys)
    assert "--level 2 does not exist" in line and "pass --level an integer from 0 to 0" in line


def test_a_time_and_z_stack_is_refused_in_the_words_of_each(tmp_path, capsys):
    from napari_sam.batch.tasks import StackSource

    np.save(tmp_path / "tz.npy", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(InvalidInputError, match=r"axes 'tzyx'.*pass axes="):
        StackSource(str(tmp_path / "tz.npy")).open()
    argv = ["segment-everything", str(tmp_path / "tz.npy"), "--out", str(tmp_path / "o.zarr")]
    line = error_line([*argv, "--workers", "0"], capsys)
    assert "--axes" in line and api_words(line) == []


def test_a_channel_for_data_without_channels_is_refused(tmp_path, capsys):
    from napari_sam.batch.tasks import StackSource

    np.save(tmp_path / "z.npy", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InvalidInputError, match=r"channel=1 was given but .* no channel axis"):
        StackSource(str(tmp_path / "z.npy"), channel=1).open()
    argv = ["segment-everything", str(tmp_path / "z.npy"), "--out", str(tmp_path / "o.zarr")]
    line = error_line([*argv, "--workers", "0", "--channel", "1"], capsys)
    assert "--channel 1 was given" in line and "(e.g. --axes cyx)" in line
    assert not (tmp_path / "o.zarr").exists()


# architecture: predict takes --architecture; the registry's and the loader's messages


@pytest.fixture
def unnamed_checkpoint(tmp_path) -> Path:
    path = tmp_path / "finetuned.pt"  # no registry name in it: the architecture is unknown
    path.write_bytes(b"weights would be here")
    return path


def test_an_unknown_architecture_python_and_command_line(unnamed_checkpoint, tmp_path, capsys):
    with pytest.raises(UnknownModelError, match="pass architecture= one of vit_t"):
        get_model_spec(unnamed_checkpoint)
    tifffile.imwrite(tmp_path / "a.tif", np.arange(64, dtype=np.uint8).reshape(8, 8))
    argv = ["predict", str(tmp_path / "a.tif"), "--point", "1,1", "--out", str(tmp_path / "m.tif")]
    line = error_line([*argv, "--model", str(unnamed_checkpoint)], capsys)
    assert "pass --architecture one of vit_t" in line and api_words(line) == []


def test_architecture_is_for_files_and_must_be_registered(unnamed_checkpoint):
    with pytest.raises(
        UnknownModelError,
        match=r"Cannot tell .*: architecture='vit_q' is not a registered model; pass architecture=",
    ):
        get_model_spec(unnamed_checkpoint, architecture="vit_q")
    with pytest.raises(
        UnknownModelError, match=r"'vit_b' is a registered model.*leave out architecture="
    ):
        get_model_spec("vit_b", architecture="vit_t")
    assert get_model_spec("vit_b", architecture="vit_b") == MODELS["vit_b"]
    assert (
        get_model_spec(unnamed_checkpoint, architecture="vit_b").architecture
        == MODELS["vit_b"].architecture
    )


def test_predict_loads_a_checkpoint_with_the_architecture_flag(default_weights, tmp_path, capsys):
    checkpoint = tmp_path / "finetuned.pt"
    checkpoint.symlink_to(default_weights)
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, (np.arange(48 * 64).reshape(48, 64) % 200).astype(np.uint8))
    argv = ["predict", str(image), "--box", "5,5,30,40", "--out", str(tmp_path / "m.tif")]
    assert main([*argv, "--model", str(checkpoint), "--architecture", "vit_t"]) == 0
    assert "(finetuned@" in capsys.readouterr().out
    assert tifffile.imread(tmp_path / "m.tif").shape == (48, 64)


def test_a_checkpoint_of_another_architecture_names_the_flag(default_weights, tmp_path, capsys):
    checkpoint = tmp_path / "mine_vit_b.pt"  # guessed vit_b, holds vit_t weights
    checkpoint.symlink_to(default_weights)
    tifffile.imwrite(tmp_path / "a.tif", np.arange(64, dtype=np.uint8).reshape(8, 8))
    argv = ["predict", str(tmp_path / "a.tif"), "--point", "1,1", "--out", str(tmp_path / "m.tif")]
    line = error_line([*argv, "--model", str(checkpoint)], capsys)
    assert "does not fit the architecture of 'mine_vit_b'" in line
    assert line.endswith("Pick the matching model name or pass --architecture.")
    assert not (tmp_path / "m.tif").exists()


def test_overwrite_reads_as_a_switch_on_the_command_line(tmp_path, capsys):
    from napari_sam.cli import command_line_words

    message = "The cache c.zarr is damaged (x): pass overwrite=True to replace it."
    assert command_line_words(message, {"overwrite"}) == (
        "The cache c.zarr is damaged (x): pass --overwrite to replace it."
    )
    store = tmp_path / "l.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{")  # our store's name, its metadata damaged
    tifffile.imwrite(tmp_path / "a.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    line = error_line(["segment-everything", str(tmp_path / "a.tif"), "--out", str(store)], capsys)
    assert "is damaged" in line and "pass --overwrite to replace it" in line
    assert api_words(line) == []
