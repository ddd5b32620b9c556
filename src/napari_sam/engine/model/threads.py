"""A background thread for torch work that runs as fast as the main thread.

On Linux, glibc gives each new thread its own malloc arena, which grows in heaps of at
most 64 MiB. A larger block (MobileSAM's encoder allocates and frees sixteen 64 MiB
feature maps per 1024x1024 image) cannot fit in such a heap, so glibc ``mmap``-s it and
``munmap``-s it on free whatever ``mallopt`` says, and the kernel zero-fills every page
again on the next call. Only the main arena keeps those blocks (see
:mod:`napari_sam.engine.model.runtime`). Measured in a shown napari viewer on 2 cores
(``benchmarks/bench_worker.py``, ``docs/threading.md``): the encoder took 1.2 s on the
main thread and 1.7-1.9 s in napari's ``thread_worker`` or a ``threading.Thread``, with
about 262,000 page faults per image against none; with or without a Qt event loop, and
whatever ``OMP_WAIT_POLICY`` says. :class:`TorchThread` runs work on a thread that
allocates from the main arena: 1.1-1.2 s, no page faults.

glibc cannot assign an arena to a thread. We cap the number of arenas at one
(``mallopt(M_ARENA_MAX, 1)``: from then on, new threads share existing arenas instead of
making new ones, as with ``MALLOC_ARENA_MAX=1``), then start candidate threads until one
finds itself in the main arena (the ``NON_MAIN_ARENA`` bit of a chunk it allocates is
clear). Earlier candidates stay parked meanwhile, so that each new one is handed another
arena; they exit once a thread is found. Other platforms and C libraries get one plain
thread. Meant for GUI processes; batch code should run torch on its main thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Self

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter from glibc's malloc.h
_NON_MAIN_ARENA = 0x4  # bit of a chunk's size field: chunk belongs to a thread arena
_MAX_CANDIDATES = 256  # bounds the arenas to cycle through: far more than a GUI makes
_STOP = object()


def _glibc() -> ctypes.CDLL | None:
    """glibc, or None on other platforms and C libraries (musl has no arenas)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it
    except (OSError, AttributeError):
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _in_main_arena(libc: ctypes.CDLL) -> bool:
    """Whether the calling thread allocates from glibc's main arena."""
    pointer = libc.malloc(4096)  # above tcache sizes, below the mmap threshold
    header = ctypes.c_size_t.from_address(pointer - ctypes.sizeof(ctypes.c_size_t))
    in_main = not header.value & _NON_MAIN_ARENA
    libc.free(pointer)
    return in_main


class TorchThread:
    """One long-lived thread that runs torch calls in order, off the caller's thread.

    Parameters
    ----------
    num_threads : int, optional
        Intra-op threads for torch inside this thread only; by default the process
        setting, which new threads inherit. (1 was slower than 2 on 2 cores in every
        case we measured, GUI idle or busy.)

    Attributes
    ----------
    in_main_arena : bool
        Whether the thread allocates from glibc's main arena (False off glibc).
    name : str
        Thread name, shown in debuggers and profilers.

    Examples
    --------
    >>> with TorchThread() as torch_thread:                           # doctest: +SKIP
    ...     embedding = torch_thread.run(predictor.set_image, image)

    In a napari widget, call :meth:`run` inside a ``thread_worker`` function: the worker
    thread waits without holding the GIL and napari delivers the result on the GUI thread.
    """

    def __init__(self, num_threads: int | None = None, name: str = "napari-sam-torch"):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._num_threads = num_threads
        self._thread, self.in_main_arena = self._start(name)

    def submit(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``function(*args, **kwargs)``; calls run one at a time, in order.

        Returns
        -------
        concurrent.futures.Future
            Holds the call's result, or the exception it raised.

        Raises
        ------
        RuntimeError
            After :meth:`shutdown`.
        """
        if not self._thread.is_alive():
            raise RuntimeError("This TorchThread was shut down; create a new one.")
        future: Future = Future()
        self._tasks.put((future, function, args, kwargs))
        return future

    def run(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` on this thread and wait for its result."""
        return self.submit(function, *args, **kwargs).result()

    def shutdown(self, wait: bool = True) -> None:
        """Stop after the queued calls; the object cannot be used afterwards."""
        self._tasks.put(_STOP)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _start(self, name: str) -> tuple[threading.Thread, bool]:
        libc = _glibc()
        if libc is not None:
            libc.mallopt(_M_ARENA_MAX, 1)
        release = threading.Event()  # lets parked candidates exit
        try:
            for candidate in range(_MAX_CANDIDATES if libc is not None else 1):
                thread, in_main_arena = self._launch(name, libc, release)
                if in_main_arena is not None:
                    log.debug("torch thread found after %d candidates", candidate + 1)
                    return thread, in_main_arena
            log.warning("no thread in glibc's main arena: torch work may run slower")
            thread, _ = self._launch(name, None, release)
            return thread, False
        finally:
            release.set()

    def _launch(self, name, libc, release) -> tuple[threading.Thread, bool | None]:
        """Start a candidate; None if it parked in a thread arena."""
        found: queue.SimpleQueue = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._candidate, args=(libc, release, found), name=name, daemon=True
        )
        thread.start()
        in_main_arena, torch_default = found.get()
        if torch_default is not None:
            import torch

            # set_num_threads also changed the default every later thread starts with.
            torch.set_num_threads(torch_default)
        return thread, in_main_arena

    def _candidate(self, libc, release, found) -> None:
        in_main_arena = libc is not None and _in_main_arena(libc)
        if libc is not None and not in_main_arena:
            found.put((None, None))
            release.wait()  # hold this arena so that the next candidate gets another
            return
        torch_default = None
        if self._num_threads is not None:
            import torch

            torch_default = torch.get_num_threads()
            torch.set_num_threads(self._num_threads)
        found.put((in_main_arena, torch_default))
        self._serve()

    def _serve(self) -> None:
        while (task := self._tasks.get()) is not _STOP:
            future, function, args, kwargs = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args, **kwargs))
            except BaseException as error:
                future.set_exception(error)
