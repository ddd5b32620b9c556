"""``segment-everything --scheduler`` as users run it: a scheduler and workers started by
``dask scheduler`` and ``dask worker`` as separate processes on loopback, no ``--threads``.

The labels must equal those of the in-process run of the same command.
"""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.cli import main
from napari_sam.io.samples import load_dsb2018

DASK = Path(sys.executable).with_name("dask")
SLICES = 3


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    image, _ = load_dsb2018()
    stack = np.stack([np.roll(image[180:308, 180:308], 4 * z, axis=0) for z in range(SLICES)])
    path = tmp_path_factory.mktemp("stack") / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


@pytest.fixture
def scheduler(tmp_path, default_weights):
    """``dask scheduler`` and ``dask worker --nworkers 2`` on loopback; yields the address."""
    file = tmp_path / "scheduler.json"
    environ = dict(os.environ, PYTHONUNBUFFERED="1")
    common = {"env": environ, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [
        subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(file)],
            **common,
        )
    ]
    try:
        address = _wait_for_address(file, processes[0])
        processes.append(
            subprocess.Popen(
                [str(DASK), "worker", address, "--nworkers", "2", "--nthreads", "1"]
                + ["--host", "127.0.0.1", "--no-dashboard"],
                **common,
            )
        )
        _wait_for_workers(address, 2)
        yield address
    finally:
        for process in reversed(processes):  # ours alone, by their ids
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for_address(file: Path, process: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dask scheduler exited with {process.returncode}")
        if file.is_file():
            try:
                return json.loads(file.read_text())["address"]
            except (ValueError, KeyError):
                pass  # still being written
        time.sleep(0.2)
    pytest.fail("dask scheduler did not start within a minute")


def _wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(count, timeout=120)


def test_scheduler_and_local_cluster_runs_equal_the_in_process_run(
    stack_file, scheduler, tmp_path, capsys, caplog
):
    common = ["segment-everything", str(stack_file), "--points-per-side", "8"]
    runs = {
        "in-process": ["--workers", "0"],
        f"scheduler {scheduler}": ["--scheduler", scheduler],
        "2 local workers": ["--workers", "2"],
    }
    labels = {}
    for name, flags in runs.items():
        out = tmp_path / f"{len(labels)}.zarr"
        assert main(common + ["--out", str(out)] + flags) == 0
        assert f"({name}, vit_t@" in capsys.readouterr().out
        labels[name] = np.asarray(zarr.open_group(out, mode="r")["labels"][...])
    assert labels["in-process"].max() > 0
    for name in runs:
        np.testing.assert_array_equal(labels[name], labels["in-process"], err_msg=name)
    # distributed's INFO lines (workers joining, nannies closing) are not the user's business
    chatter = [r for r in caplog.records if r.name.startswith("distributed")]
    assert all(r.levelno >= logging.WARNING for r in chatter), [r.getMessage() for r in chatter]
