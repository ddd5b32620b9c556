"""``napari-sam segment-everything`` end to end with the real engine and default weights."""

import re
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.batch.settings import StackSettings
from napari_sam.cli import build_parser, main
from napari_sam.commands.everything import SETTING_FLAGS, stack_settings
from napari_sam.engine.everything.linking import LinkingSettings, link_slices
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.io.samples import load_dsb2018

SLICES = 2


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    image, _ = load_dsb2018()
    stack = np.stack([np.roll(image[200:296, 200:328], 3 * z, axis=0) for z in range(SLICES)])
    path = tmp_path_factory.mktemp("stack") / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


def test_segments_links_records_and_resumes(stack_file, tmp_path, capsys):
    out = tmp_path / "labels.zarr"
    command = [
        "segment-everything",
        str(stack_file),
        "--out",
        str(out),
        "--workers",
        "0",
        "--points-per-side",
        "4",
        "--min-extent",
        "1",
    ]
    assert main(command) == 0
    captured = capsys.readouterr()
    found = re.search(
        r"(\d+) objects in 2 slices \(2 segmented now, 0 already done\), "
        r"[\d.]+ s, [\d.]+ slices/min "
        r"\(in-process, vit_t@",
        captured.out,
    )
    assert found, captured.out
    assert "segmenting: 100%" in captured.err and "linking: 100%" in captured.err
    group = zarr.open_group(out, mode="r")
    sections, labels = np.asarray(group["sections"][...]), np.asarray(group["labels"][...])
    assert sections.max() > 0 and int(found.group(1)) == labels.max()
    np.testing.assert_array_equal(
        labels, link_slices(sections, LinkingSettings(min_extent=1)).labels
    )
    assert group.attrs["napari_sam"]["settings"]["points_per_side"] == 4
    assert group.attrs["run"]["linking"]["min_extent"] == 1

    assert main(command[:-2] + ["--no-link"]) == 0
    assert "(0 segmented now, 2 already done)" in capsys.readouterr().out
    group = zarr.open_group(out, mode="r")
    assert group["labels"][...].max() == group["objects"][...].sum()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--z-range", "a:b"], r"A z-range is START:STOP \(two integers\); got 'a:b'"),
        (["--z-range", "3:1"], "A z-range START:STOP needs 0 <= START < STOP; got '3:1'"),
        (["--z-range", "2:9"], "z-range 2:9 does not fit slices 0..2"),
        (["--link-iou", "0"], r"iou_threshold must be in \(0, 1\]"),
        (["--points-per-side", "0"], "Invalid segment-everything settings: points_per_side=0"),
        (
            ["--every-point", "--skip-distance", "2"],
            r"--every-point decodes every grid point: drop \['skip_distance'\]",
        ),
        (["--skip-distance", "-1"], "Invalid segment-everything settings: skip_distance=-1.0"),
    ],
)
def test_errors_exit_1_with_a_message(stack_file, tmp_path, capsys, extra, message):
    assert (
        main(["segment-everything", str(stack_file), "--out", str(tmp_path / "x.zarr"), *extra])
        == 1
    )
    assert re.search(message, capsys.readouterr().err)


def test_workers_and_scheduler_exclude_each_other(stack_file, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        main(
            [
                "segment-everything",
                str(stack_file),
                "--out",
                str(tmp_path / "x.zarr"),
                "--workers",
                "1",
                "--scheduler",
                "tcp://127.0.0.1:1",
            ]
        )


def test_every_point_decodes_the_whole_grid(stack_file, tmp_path):
    out = tmp_path / "every.zarr"
    assert (
        main(
            [
                "segment-everything",
                str(stack_file),
                "--out",
                str(out),
                "--workers",
                "0",
                "--z-range",
                "0:1",
                "--points-per-side",
                "3",
                "--every-point",
                "--no-link",
            ]
        )
        == 0
    )
    settings = zarr.open_group(out, mode="r").attrs["napari_sam"]["settings"]
    assert (settings["skip_covered"], settings["stop_after_empty"], settings["skip_distance"]) == (
        False,
        None,
        0.0,
    )


def parse(*flags):
    return build_parser().parse_args(["segment-everything", "in.tif", "--out", "x.zarr", *flags])


def test_no_flags_run_the_engine_defaults(capsys):
    """One source for each default: the dataclasses, also in --help."""
    settings = stack_settings(parse())
    assert settings.settings == EverythingSettings() and settings.linking == LinkingSettings()
    assert replace(settings, settings=None) == StackSettings()
    with pytest.raises(SystemExit):
        parse("--help")
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in SETTING_FLAGS:
        assert f"(default {getattr(EverythingSettings(), name)})" in shown, name
    assert f"(default {LinkingSettings().iou_threshold})" in shown


def test_flags_change_only_their_settings():
    settings = stack_settings(
        parse(
            "--points-per-side",
            "8",
            "--keep-background",
            "--link-iou",
            "0.5",
            "--no-gap-closing",
            "--halo",
            "16",
            "--tile",
            "256",
        )
    )
    expected = replace(EverythingSettings(), points_per_side=8, drop_background=False)
    assert settings.settings == expected
    assert settings.linking == replace(LinkingSettings(), iou_threshold=0.5, gap_closing=False)
    assert (settings.tile, settings.halo) == (256, 16)
    assert stack_settings(parse("--no-link")).linking is None
