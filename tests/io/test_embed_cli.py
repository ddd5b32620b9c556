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
from napari_sam.samples import load_dsb2018

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


def test_killed_run_resumes_to_the_same_cache(stack_file, tmp_path, capsys):
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_sam.cli", "embed", str(stack_file), "--cache", str(killed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300
    while complete(killed) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = complete(killed)
    assert 2 <= done_before < PLANES, "the kill should land mid-run"

    assert main(["embed", str(stack_file), "--cache", str(killed)]) == 0
    report = capsys.readouterr().out
    assert f"{PLANES - done_before} encoded now, {done_before} already cached" in report
    assert main(["embed", str(stack_file), "--cache", str(clean)]) == 0
    a, b = zarr.open_group(killed, mode="r"), zarr.open_group(clean, mode="r")
    for name in ("features", "input_size", "checksum", "complete"):
        np.testing.assert_array_equal(np.asarray(a[name][...]), np.asarray(b[name][...]))

    assert main(["embed", str(stack_file), "--cache", str(clean)]) == 0
    assert f"0 encoded now, {PLANES} already cached" in capsys.readouterr().out


def test_z_range_and_mismatch_errors(stack_file, tmp_path, capsys):
    cache = tmp_path / "part.zarr"
    assert main(["embed", str(stack_file), "--cache", str(cache), "--z-range", "1:3"]) == 0
    assert np.asarray(zarr.open_group(cache, mode="r")["complete"][...]).tolist() == [0, 1, 1, 0, 0]
    assert main(["embed", str(stack_file), "--cache", str(cache), "--float16"]) == 1
    assert "feature_dtype" in capsys.readouterr().err
    assert main(["embed", str(stack_file), "--cache", str(cache), "--z-range", "4:9"]) == 1
    assert "does not fit" in capsys.readouterr().err
