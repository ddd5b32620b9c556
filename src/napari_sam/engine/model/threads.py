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

glibc cannot assign an arena to a thread. We start candidate threads until one finds itself
in the main arena (the ``NON_MAIN_ARENA`` bit of a chunk it allocates is clear). Earlier
candidates stay parked meanwhile, each holding its arena, so that the next one is handed
another; they exit once a thread is found. New threads get new arenas until glibc's limit
(8 per core), then reuse existing ones in turn, the main arena first. Capping the arenas at
one (``mallopt(M_ARENA_MAX, 1)``, as ``MALLOC_ARENA_MAX=1``) would find it sooner, but that
cap cannot be undone: glibc ignores a later 0 and keeps the limit it computed, so every
thread of the process would share arenas for good. Measured on 2 cores, the search without
the cap took 16 candidates and 3-7 ms (docs/threading.md), so the cap is only
an option (``cap_arenas=True``). The malloc tuning of
:mod:`~napari_sam.engine.model.runtime` is scoped to the thread: each call runs inside
:func:`~napari_sam.engine.model.runtime.allocator_tuned`, and freed memory is kept for the
next call while the thread lives. Other platforms and C libraries get one plain thread.
Meant for GUI processes; batch code should run torch on its main thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Self

from napari_sam.engine.model.runtime import (
    allocator_tuned,
    release_freed_memory,
    retain_freed_memory,
    scope_allocator_tuning,
)

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter from glibc's malloc.h
_NON_MAIN_ARENA = 0x4  # bit of a chunk's size field: chunk belongs to a thread arena
# Bounds the search: glibc makes up to 8 arenas per core (counted when the limit is first
# reached), then hands them out in turn; twice that, plus arenas of exited threads.
_MAX_CANDIDATES = 16 * (os.cpu_count() or 1) + 64
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
    name : str
        Thread name, shown in debuggers and profilers.
    cap_arenas : bool
        Cap glibc's arenas at one for the rest of the process before the search (faster
        search; every later thread shares arenas). Off by default.

    Attributes
    ----------
    in_main_arena : bool
        Whether the thread allocates from glibc's main arena (False off glibc).
    candidates : int
        Threads started to find it (1 off glibc).

    retains_memory : bool
        Whether freed memory stays in glibc's heap between calls while the thread lives
        (False off glibc or with ``NAPARI_SAM_NO_MALLOC_TUNING`` set).

    Notes
    -----
    Creating a TorchThread marks the process as one we share (napari's): from then on
    :func:`~napari_sam.engine.model.runtime.tune_allocator` tunes nothing for good, and
    malloc is tuned only while calls run (and keeps freed memory while the thread lives).

    Examples
    --------
    >>> with TorchThread() as torch_thread:                           # doctest: +SKIP
    ...     embedding = torch_thread.run(predictor.set_image, image)

    In a napari widget, call :meth:`run` inside a ``thread_worker`` function: the worker
    thread waits without holding the GIL and napari delivers the result on the GUI thread.
    """

    def __init__(
        self,
        num_threads: int | None = None,
        name: str = "napari-sam-torch",
        cap_arenas: bool = False,
    ):
        scope_allocator_tuning()
        self.retains_memory = retain_freed_memory()
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._num_threads = num_threads
        self.candidates = 0
        self._thread, self.in_main_arena = self._start(name, cap_arenas)

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

    def _start(self, name: str, cap_arenas: bool) -> tuple[threading.Thread, bool]:
        libc = _glibc()
        if libc is not None and cap_arenas:
            libc.mallopt(_M_ARENA_MAX, 1)
        release = threading.Event()  # lets parked candidates exit
        try:
            for _ in range(_MAX_CANDIDATES if libc is not None else 1):
                self.candidates += 1
                thread, in_main_arena = self._launch(name, libc, release)
                if in_main_arena is not None:
                    log.debug("torch thread found after %d candidates", self.candidates)
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
        try:
            self._serve_tasks()
        finally:
            if self.retains_memory:
                release_freed_memory()

    def _serve_tasks(self) -> None:
        while (task := self._tasks.get()) is not _STOP:
            future, function, args, kwargs = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with allocator_tuned():
                    result = function(*args, **kwargs)
                future.set_result(result)
            except BaseException as error:
                future.set_exception(error)
