"""The store lock with two real processes: refused at once while held, free once the
holder ends, however it ends (SIGKILL included)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from napari_sam.errors import NapariSamError, StoreInUseError
from napari_sam.io.store_lock import StoreLock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from napari_sam.io.store_lock import StoreLock
    lock = StoreLock(sys.argv[1], "segment-everything store").acquire()
    print("locked", flush=True)
    if sys.argv[2] == "hold":
        time.sleep(600)
    lock.release()
    print("released", flush=True)
    """
)


def start_holder(store, mode="hold"):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    assert line == "locked\n", process.stderr.read()
    return process


@pytest.fixture
def holder(tmp_path):
    process = start_holder(tmp_path / "labels.zarr")
    yield process
    process.kill()
    process.wait()


def test_a_held_lock_refuses_another_process_naming_the_holder(tmp_path, holder):
    lock = StoreLock(tmp_path / "labels.zarr", "segment-everything store")
    with pytest.raises(StoreInUseError) as refused:
        lock.acquire()
    message = str(refused.value)
    assert f"labels.zarr is being written by another napari-sam run (pid {holder.pid} on " in (
        message
    )
    assert socket.gethostname() in message and "-c" in message  # the holder's command
    assert "a stopped or killed run frees the segment-everything store at once" in message
    assert isinstance(refused.value, NapariSamError) and not lock.held
    note = json.loads((tmp_path / ".labels.zarr.lock").read_text())
    assert note["pid"] == holder.pid and len(note["started"]) == 19  # YYYY-MM-DD HH:MM:SS


def test_a_killed_holder_frees_the_lock(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".labels.zarr.lock").exists()  # a dead holder's note stays behind
    with StoreLock(tmp_path / "labels.zarr") as lock:
        assert lock.held
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".labels.zarr.lock").exists()


def test_a_released_lock_is_free_and_its_file_gone(tmp_path):
    process = start_holder(tmp_path / "labels.zarr", mode="release")
    assert process.stdout.readline() == "released\n"
    assert process.wait() == 0
    assert os.listdir(tmp_path) == []
    first = StoreLock(tmp_path / "labels.zarr").acquire()
    with pytest.raises(StoreInUseError, match=f"pid {os.getpid()} on"):
        StoreLock(tmp_path / "labels.zarr").acquire()  # a second holder in this process too
    first.release()
    first.release()  # a second release does nothing
    assert os.listdir(tmp_path) == []


def test_the_lock_names_the_store_however_it_is_written(tmp_path):
    (tmp_path / "data").mkdir()
    with StoreLock(tmp_path / "data" / "labels.zarr"):
        with pytest.raises(StoreInUseError):
            StoreLock(tmp_path / "data" / ".." / "data" / "labels.zarr").acquire()


def test_a_parent_that_cannot_hold_the_lock_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"Cannot create the lock file .*must be writable"):
        StoreLock(blocker / "labels.zarr").acquire()
