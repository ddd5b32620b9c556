"""The data-loss cases of napari-sam issue 13 through the command line (real vit_t weights)."""

import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.cli import main
from napari_sam.io.samples import load_dsb2018

PLANES = 4


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    image, _ = load_dsb2018()
    stack = np.stack([np.roll(image[200:296, 200:328], 3 * z, axis=0) for z in range(PLANES)])
    path = tmp_path_factory.mktemp("stack") / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


def tree(folder):
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_embed_overwrite_keeps_a_user_folder(default_weights, stack_file, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep me")
    assert main(["embed", str(stack_file), "--cache", str(precious), "--overwrite"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("napari-sam: error: ") and "keep.txt" in error
    assert tree(precious) == {"keep.txt": b"keep me"}


def test_segment_everything_overwrite_keeps_the_input_folder(
    default_weights, stack_file, tmp_path, capsys
):
    data = tmp_path / "data"
    data.mkdir()
    image = data / "img.tif"
    image.write_bytes(stack_file.read_bytes())
    (data / "neighbour.tif").write_bytes(stack_file.read_bytes()[:1000])
    before = tree(data)
    command = ["segment-everything", str(image), "--out", str(data), "--overwrite"]
    assert main([*command, "--workers", "0", "--points-per-side", "2"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("napari-sam: error: ") and re.search(
        r"(holds|contains) the input", error
    )
    assert tree(data) == before


def test_an_out_that_is_a_file_exits_1_and_is_kept(default_weights, stack_file, tmp_path, capsys):
    out = tmp_path / "labels.zarr"
    out.write_bytes(b"a file")
    command = ["segment-everything", str(stack_file), "--out", str(out), "--overwrite"]
    assert main([*command, "--workers", "0"]) == 1
    assert "labels.zarr is a file, not a folder" in capsys.readouterr().err
    assert main(["embed", str(stack_file), "--cache", str(out), "--overwrite"]) == 1
    assert "labels.zarr is a file, not a folder" in capsys.readouterr().err
    assert out.read_bytes() == b"a file"


def flags(cache) -> int:
    try:
        return int(np.asarray(zarr.open_group(cache, mode="r")["complete"][...]).sum())
    except Exception:  # not created yet
        return 0


def test_a_second_embed_cannot_replace_a_running_one(default_weights, stack_file, tmp_path, capsys):
    cache = tmp_path / "c.zarr"
    first = subprocess.Popen(
        [sys.executable, "-m", "napari_sam.cli", "embed", str(stack_file), "--cache", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while flags(cache) < 1 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if first.poll() is not None:
            pytest.skip("the first run finished before the second could start")
        command = ["embed", str(stack_file), "--cache", str(cache), "--float16", "--overwrite"]
        assert main(command) == 1
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    error = capsys.readouterr().err
    assert f"another napari-sam run (pid {first.pid} on " in error, error
    assert first.returncode == 0, stderr
    assert f"{PLANES} planes" in stdout
    group = zarr.open_group(cache, mode="r")
    assert group["features"].dtype == np.float32  # the first run's cache, whole
    assert np.asarray(group["complete"][...]).tolist() == [1] * PLANES


def test_segment_everything_redoes_a_damaged_slice_and_says_so(
    default_weights, stack_file, tmp_path, capsys
):
    out = tmp_path / "labels.zarr"
    command = [
        "segment-everything",
        str(stack_file),
        "--out",
        str(out),
        "--workers",
        "0",
        "--z-range",
        "0:2",
        "--points-per-side",
        "4",
        "--min-extent",
        "1",
    ]
    assert main(command) == 0
    kept = np.asarray(zarr.open_group(out, mode="r")["sections"][...])
    capsys.readouterr()
    (out / "sections" / "c" / "1" / "0" / "0").unlink()
    assert main(command) == 0
    line = capsys.readouterr().out
    assert "(1 segmented now, 1 already done, 1 damaged slice redone)" in line, line
    np.testing.assert_array_equal(np.asarray(zarr.open_group(out, mode="r")["sections"][...]), kept)
