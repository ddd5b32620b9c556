"""Process-level settings: which device runs the model, and malloc tuning for the CPU.

Device: the CPU unless the user asks for another (``device="cuda"``, ``"auto"``,
``--device``), until an accelerator type has passed the GPU tests and is listed in
:data:`VERIFIED_DEVICE_TYPES` (see docs/devices.md).

Malloc: the encoder allocates and frees feature maps of tens of MB on every call. glibc
serves blocks that large with fresh ``mmap`` pages and returns them on free, so every call
pays for page faults and zeroing. Keeping freed memory in the heap (``mallopt``) halved the
encoder's time on our 2-core machines (2.2 s -> 1.1 s for MobileSAM). ``mallopt`` acts on
the whole process, so there are two scopes. :func:`tune_allocator` sets everything for
good; the first model load calls it, for processes that are ours (the CLI, scripts, batch
jobs). In napari's process (once a :class:`~napari_sam.engine.model.threads.TorchThread`
exists) it does nothing, and the settings are scoped instead: never ``mmap`` and grow the
heap 64 MiB at a time only while one of our calls runs (:func:`allocator_tuned`), and keep
up to 1 GiB of freed heap only while a TorchThread is alive (:func:`retain_freed_memory`):
restoring that one after each call gave the memory back and cost the whole gain (measured
in docs/threading.md). ``NAPARI_SAM_NO_MALLOC_TUNING=1`` turns all of it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

from napari_sam.errors import InvalidInputError

log = logging.getLogger(__name__)

OPT_OUT = "NAPARI_SAM_NO_MALLOC_TUNING"  # set (to anything) to keep glibc's settings
_M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's malloc.h
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
# (parameter, our value, glibc's default). The defaults are glibc's compiled-in values; its
# DEFAULT_TOP_PAD is 128 KiB (Debian's glibc 2.36, measured as the heap's first growth).
_MMAP = (_M_MMAP_MAX, 0, 65536)  # never mmap, so large blocks come from the heap
_PAD = (_M_TOP_PAD, 64 << 20, 128 * 1024)  # grow the heap 64 MiB at a time
_TRIM = (_M_TRIM_THRESHOLD, 1 << 30, 128 * 1024)  # keep up to 1 GiB free at the heap's top
_lock = threading.Lock()
_tuned = False  # applied for good by tune_allocator
_scoped_only = False  # a TorchThread exists: no tuning for good from now on
_calls = 0  # allocator_tuned blocks running now, in any thread
_retainers = 0  # retain_freed_memory calls not yet released


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None when opted out, off Linux, or under another libc."""
    if os.environ.get(OPT_OUT) or not sys.platform.startswith("linux"):
        return None
    return _libc_mallopt()


@cache  # find_library runs ldconfig: once per process
def _libc_mallopt() -> Callable[[int, int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return None


def _apply(mallopt: Callable[[int, int], int], settings: tuple, tuned: bool) -> bool:
    """Set each of ``settings`` to our value or glibc's default; True if all were taken."""
    taken = [mallopt(key, ours if tuned else default) for key, ours, default in settings]
    return all(taken)  # every one is set, even after a refusal


def tune_allocator() -> bool:
    """Keep large freed blocks in glibc's heap for the rest of the process.

    Returns
    -------
    bool
        True if the settings were applied now or earlier; False on other platforms, when
        ``NAPARI_SAM_NO_MALLOC_TUNING`` is set, or once a TorchThread exists (its calls are
        tuned by :func:`allocator_tuned` and :func:`retain_freed_memory` instead).
    """
    global _tuned
    with _lock:
        if _tuned or _scoped_only:
            return _tuned
        mallopt = _mallopt()
        _tuned = mallopt is not None and _apply(mallopt, (_MMAP, _PAD, _TRIM), tuned=True)
    log.debug("malloc tuning for the process %s", "applied" if _tuned else "not applied")
    return _tuned


def scope_allocator_tuning() -> None:
    """From now on :func:`tune_allocator` applies nothing (a process shared with others).

    Settings it applied earlier stay: glibc cannot tell what they were before.
    """
    global _scoped_only
    with _lock:
        _scoped_only = True


@contextmanager
def allocator_tuned() -> Iterator[bool]:
    """Serve large blocks from the heap while the block runs; glibc's defaults after.

    Blocks may run at once in several threads: the first sets ``M_MMAP_MAX`` to 0 and
    ``M_TOP_PAD`` to 64 MiB, the last to end puts glibc's compiled-in defaults back (it
    keeps no record of earlier values). One lasting change remains after the first block,
    as after any ``mallopt`` call: glibc stops adapting its mmap threshold to the blocks a
    program frees. Freed memory stays in the heap for the next call only while
    :func:`retain_freed_memory` holds it.

    Yields
    ------
    bool
        Whether the block runs tuned (here, or for good by :func:`tune_allocator`); False
        on other platforms or when ``NAPARI_SAM_NO_MALLOC_TUNING`` is set.
    """
    global _calls
    with _lock:
        mallopt = None if _tuned else _mallopt()
        if mallopt is not None:
            _calls += 1
            if _calls == 1:
                _apply(mallopt, (_MMAP, _PAD), tuned=True)
    try:
        yield _tuned or mallopt is not None
    finally:
        if mallopt is not None:
            with _lock:
                _calls -= 1
                if _calls == 0:
                    _apply(mallopt, (_MMAP, _PAD), tuned=False)


def retain_freed_memory() -> bool:
    """Keep up to 1 GiB of freed heap (``M_TRIM_THRESHOLD``) until the matching release.

    Calls nest: the first raises the threshold, the last :func:`release_freed_memory`
    puts glibc's default (128 KiB) back, and the next ``free`` gives the memory back.

    Returns
    -------
    bool
        Whether freed memory is kept (here, or for good by :func:`tune_allocator`); False
        on other platforms or when ``NAPARI_SAM_NO_MALLOC_TUNING`` is set. Call
        :func:`release_freed_memory` only after a True.
    """
    global _retainers
    with _lock:
        if _tuned:
            return True
        mallopt = _mallopt()
        if mallopt is None:
            return False
        _retainers += 1
        if _retainers == 1:
            _apply(mallopt, (_TRIM,), tuned=True)
    return True


def release_freed_memory() -> None:
    """End one :func:`retain_freed_memory` (that returned True)."""
    global _retainers
    with _lock:
        mallopt = None if _tuned else _mallopt()
        if mallopt is None or _retainers == 0:
            return
        _retainers -= 1
        if _retainers == 0:
            _apply(mallopt, (_TRIM,), tuned=False)


# Accelerator types chosen without being asked for: only those whose GPU tests
# (tests/engine/test_gpu_parity.py) have passed on a real device, named in docs/devices.md.
# Any other accelerator runs only when asked for (device="cuda", "auto", --device).
VERIFIED_DEVICE_TYPES: tuple[str, ...] = ()
AUTO = "auto"  # the first available of cuda, mps and cpu, verified or not


def resolve_device(device: str | None = None) -> str:
    """The torch device to run on.

    Parameters
    ----------
    device : str, optional
        ``None``: the first available accelerator (cuda, then mps) whose type is in
        :data:`VERIFIED_DEVICE_TYPES`, else ``"cpu"``. ``"auto"``: the first available of
        cuda, mps and cpu, verified or not. Anything else (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, ``"mps"``) is used as given once this machine is known to have it.

    Returns
    -------
    str
        A torch device string, e.g. ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.

    Raises
    ------
    InvalidInputError
        ``device`` is not a torch device, or names one this machine does not have.
    """
    import torch

    if device is None:
        verified = [kind for kind in _accelerators(torch) if kind in VERIFIED_DEVICE_TYPES]
        return verified[0] if verified else "cpu"
    text = str(device).strip()
    if text.lower() == AUTO:
        return next(iter(_accelerators(torch)), "cpu")
    try:
        chosen = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise InvalidInputError(
            f"Unknown device {text!r}: expected cpu, cuda, cuda:N, mps or auto ({error})."
        ) from None
    _check_available(torch, chosen)
    return str(chosen)


def _accelerators(torch) -> list[str]:
    """The accelerator types this machine has, in order of preference."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def _check_available(torch, chosen) -> None:
    """Raise InvalidInputError unless this machine has the device ``chosen``."""
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"{str(chosen)!r} was asked for, but there is no CUDA device: "
                "torch.cuda.is_available() is False; drop --device or install a CUDA build "
                "of torch."
            )
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise InvalidInputError(
                f"{str(chosen)!r} was asked for, but this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}: pick one of them, or 'cuda'."
            )
    elif chosen.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InvalidInputError(
                "'mps' was asked for, but there is no MPS device: "
                "torch.backends.mps.is_available() is False; drop --device, or run on a Mac "
                "with Apple silicon and a torch build with MPS."
            )
