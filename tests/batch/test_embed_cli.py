"""``napari-sam embed`` end to end with the real default model: resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.cli import main
from napari_sam.io.samples import load_dsb2018

PLANES = 5


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    image, _ = load_dsb2018()
    stack = np.stack([np.roll(image[:160, :200], 17 * z, axis=1) for z in range(PLANES)])
    path = tmp_path_factory.mktemp("vol") / "stack.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX"})
    return path


def complete(cache) -> int:
    try:
        return int(np.asarray(zarr.open_group(cache, mode="r")["complete"][...]).sum())
    except Exception:  # not created yet
        return 0


def kill_mid_run(cache, extra=(), at_least=2) -> int:
    """Start ``napari-sam embed`` in a subprocess, SIGKILL it once ``at_least`` units are done."""
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_sam.cli", "embed", *extra, "--cache", str(cache)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300
    while complete(cache) < at_least and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return complete(cache)


def assert_same_cache(first, second):
    a, b = zarr.open_group(first, mode="r"), zarr.open_group(second, mode="r")
    for name in ("features", "input_size", "checksum", "complete"):
        np.testing.assert_array_equal(np.asarray(a[name][...]), np.asarray(b[name][...]))


def test_killed_run_resumes_to_the_same_cache(stack_file, tmp_path, capsys):
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    done_before = kill_mid_run(killed, [str(stack_file)])
    assert 2 <= done_before < PLANES, "the kill should land mid-run"

    assert main(["embed", str(stack_file), "--cache", str(killed)]) == 0
    report = capsys.readouterr().out
    assert f"{PLANES - done_before} encoded now, {done_before} already cached" in report
    assert main(["embed", str(stack_file), "--cache", str(clean)]) == 0
    assert_same_cache(killed, clean)

    assert main(["embed", str(stack_file), "--cache", str(clean)]) == 0
    assert f"0 encoded now, {PLANES} already cached" in capsys.readouterr().out


def test_killed_tiled_run_resumes_to_the_same_cache(stack_file, tmp_path, capsys):
    args = [
        str(stack_file),
        "--tile",
        "128",
        "--halo",
        "16",
        "--z-range",
        "0:3",
    ]  # 2 x 2 tiles, 3 planes
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    done_before = kill_mid_run(killed, args, at_least=3)
    assert 3 <= done_before < 12, "the kill should land mid-run"
    assert zarr.open_group(killed, mode="r")["complete"].shape == (PLANES, 2, 2)

    assert main(["embed", *args, "--cache", str(killed)]) == 0
    report = capsys.readouterr().out
    assert "4 tiles per plane (tile 128, halo 16, upscale 1)" in report
    assert f"{12 - done_before} tiles encoded now, {done_before} tiles already cached" in report
    assert main(["embed", *args, "--cache", str(clean)]) == 0
    assert_same_cache(killed, clean)
    assert main(["embed", str(stack_file), "--cache", str(clean), "--tile", "0"]) == 1
    assert "tile: cache has 128, expected None" in capsys.readouterr().err


def test_z_range_and_mismatch_errors(stack_file, tmp_path, capsys):
    cache = tmp_path / "part.zarr"
    assert main(["embed", str(stack_file), "--cache", str(cache), "--z-range", "1:3"]) == 0
    assert np.asarray(zarr.open_group(cache, mode="r")["complete"][...]).tolist() == [0, 1, 1, 0, 0]
    assert main(["embed", str(stack_file), "--cache", str(cache), "--float16"]) == 1
    assert "feature_dtype" in capsys.readouterr().err
    assert main(["embed", str(stack_file), "--cache", str(cache), "--z-range", "4:9"]) == 1
    assert "does not fit" in capsys.readouterr().err
    assert main(["embed", str(stack_file), "--cache", str(cache), "--z-range", "3:1"]) == 1
    assert "A z-range START:STOP needs 0 <= START < STOP; got '3:1'" in capsys.readouterr().err
