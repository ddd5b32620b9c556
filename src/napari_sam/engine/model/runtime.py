"""Process-level settings that make PyTorch fast on a CPU: device choice and malloc.

The encoder allocates and frees feature maps of tens of MB on every call. glibc serves
blocks that large with fresh ``mmap`` pages and returns them on free, so every call pays
for page faults and zeroing. Keeping freed memory in the heap (``mallopt``) halved the
encoder's time on our 2-core machines (2.2 s -> 1.1 s for MobileSAM). This changes a
process-wide setting, so it is done once, on first model load, and can be disabled with
``NAPARI_SAM_NO_MALLOC_TUNING=1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_tuned = False


def tune_allocator() -> bool:
    """Keep large freed blocks in glibc's heap instead of unmapping them.

    Returns
    -------
    bool
        True if the settings were applied now or earlier; False on other platforms or
        when disabled by the environment.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("NAPARI_SAM_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = (
            libc.mallopt(_M_MMAP_MAX, 0)
            and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
            and libc.mallopt(_M_TOP_PAD, 64 << 20)
        )
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    _tuned = bool(ok)
    log.debug("malloc tuning %s", "applied" if _tuned else "refused")
    return _tuned


def resolve_device(device: str | None = None) -> str:
    """The torch device to run on: the one asked for, else cuda, then mps, then cpu."""
    import torch

    if device is not None:
        return str(torch.device(device))
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
