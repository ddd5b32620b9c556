"""One writing run per store: an exclusive lock that dies with the process holding it.

A run that writes a store (the segment-everything driver, ``napari-sam embed``, opening a
cache to create or replace it) holds :class:`StoreLock` on it; a second run on the same
store stops at once with a :class:`~napari_sam.errors.StoreInUseError` naming the
holder (pid, host, start time, command). Workers of a cluster only write their own
slice's chunks and take no lock: the driver holds it for them.

The lock is ``fcntl.flock`` on a small file beside the store, ``.NAME.lock`` in the
store's parent folder (beside, not inside: zarr would list a foreign file inside the
group, and replacing a store must not delete the lock it is held under). The kernel
frees a flock when its process ends, however it ends, so a killed run never leaves a
stale lock; the file then still names the dead holder, which is harmless (the next run
takes the lock and rewrites it). On release the holder removes the file, checking
first that it is still the file it locked. flock works across processes of one
machine and, on Linux, over NFS (as POSIX locks). Where ``fcntl`` is missing (Windows),
``msvcrt.locking`` on one byte far past the holder's note plays its part (also freed by
the system when the process ends; not exercised by our tests, which run on Linux). On a
file system that refuses locks (``ENOLCK``, ``EOPNOTSUPP``), or a platform with neither
module, the run goes on unlocked and logs a warning saying so.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from types import ModuleType

from napari_sam.errors import StoreAccessError, StoreInUseError

fcntl: ModuleType | None
msvcrt: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everything but Windows
    msvcrt = None

log = logging.getLogger(__name__)

WINDOWS_LOCK_OFFSET = 1 << 30  # the byte msvcrt locks, far past the holder's note
UNLOCKABLE = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
ATTEMPTS = 5  # a releasing holder may remove the file between our open and our lock


class StoreLock:
    """The exclusive right to write the store at ``store`` (a context manager).

    Parameters
    ----------
    store : str or pathlib.Path
        The store's folder (it need not exist yet; its parent is created if needed).
    what : str
        What the store is, for messages (e.g. "segment-everything store").
    """

    def __init__(self, store: str | Path, what: str = "store") -> None:
        self.store = Path(store).resolve()
        self.path = self.store.parent / f".{self.store.name}.lock"
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between :meth:`acquire` and :meth:`release`."""
        return self._fd is not None

    def acquire(self) -> StoreLock:
        """Take the lock now, or fail at once.

        Raises
        ------
        StoreInUseError
            Another process holds it; the message names that run.
        StoreAccessError
            The lock file cannot be created (the store's parent folder is not writable).
        """
        if self._fd is not None:
            return self
        for _ in range(ATTEMPTS):
            fd = self._open()
            try:
                locked = _try_lock(fd, self.path)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                holder = _read_note(fd)
                os.close(fd)
                raise StoreInUseError(self._busy(holder))
            if _names(fd, self.path):
                self._fd = fd
                _write_note(fd)
                return self
            os.close(fd)  # released and removed meanwhile: lock the file there now
        raise StoreInUseError(self._busy(None))

    def release(self) -> None:
        """Give the lock up and remove its file (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _names(fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass  # a file left behind is harmless: the lock itself is the kernel's
        finally:
            os.close(fd)  # frees the lock

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StoreAccessError(
                f"Cannot create the lock file {self.path} of the {self.what} {self.store}: "
                f"{error}. The folder holding the {self.what} must be writable."
            ) from error

    def _busy(self, holder: dict | None) -> str:
        if holder:
            who = (
                f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                f"{holder.get('started', '?')}: {holder.get('command', '?')}"
            )
        else:
            who = "pid not recorded yet"
        return (
            f"The {self.what} {self.store} is being written by another napari-sam run ({who}). "
            "Wait for it to finish or stop it (a stopped or killed run frees the "
            f"{self.what} at once), then rerun; or give this run another path."
        )


def _try_lock(fd: int, path: Path) -> bool:
    """True when this process now holds the lock of ``fd``, False when another does."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno not in UNLOCKABLE:
                raise
            log.warning("%s: this file system refuses locks (%s); running unlocked", path, error)
            return True
    if msvcrt is not None:
        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    log.warning("%s: no file locking on this platform; running unlocked", path)
    return True


def _names(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open as ``fd``."""
    try:
        mine, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def _write_note(fd: int) -> None:
    """Say who holds the lock, for the message of a run that finds it taken."""
    note = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join(sys.argv)[:300],
    }
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(note).encode())
    except OSError as error:  # the lock holds without its note
        log.warning("could not record the lock holder: %s", error)


def _read_note(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        note = json.loads(os.read(fd, 4096).decode())
    except (OSError, ValueError):  # being written, or unreadable
        return None
    return note if isinstance(note, dict) else None
