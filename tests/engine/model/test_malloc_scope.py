"""Malloc settings scoped to our torch work (runtime.allocator_tuned, retain_freed_memory,
TorchThread): tuned inside calls, glibc's behaviour outside them and after shutdown, the
opt-out honoured and reported, and arenas left uncapped unless asked. Each case runs in a
new interpreter, since glibc's settings belong to the process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mallopt and arenas are glibc's"
)

# Helpers shared by the scripts: whether a fresh block of ``size`` bytes is mmapped (glibc's
# default for large blocks, unless free heap can serve it), the main heap's size in MB
# after freeing a 50 MB block (shrinks unless freed memory is retained), and the arena of
# the calling thread.
PRELUDE = """
import ctypes, json, threading
from napari_sam.engine.model import runtime
from napari_sam.engine.model.threads import TorchThread

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
        "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2

def mmapped_block(size):
    pointer = libc.malloc(size)
    flags = ctypes.c_size_t.from_address(pointer - 8).value
    libc.free(pointer)
    return bool(flags & 0x2)  # IS_MMAPPED

def heap_mb_after_free():
    libc.free(libc.malloc(50_000_000))
    return libc.mallinfo2().arena // 1_000_000

def arena():
    pointer = libc.malloc(4096)
    flags = ctypes.c_size_t.from_address(pointer - 8).value
    libc.free(pointer)
    if not flags & 0x4:
        return "main"
    return ctypes.c_size_t.from_address(pointer & ~((64 << 20) - 1)).value  # heap's arena

def live_arenas(count):
    found, barrier = [], threading.Barrier(count)
    def run():
        found.append(arena())
        barrier.wait()  # all alive at once: none can take over another's arena
    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads: thread.start()
    for thread in threads: thread.join()
    return len(set(found))
"""

# 50 MB blocks inside a call; 300 MB outside, more than the free heap a call leaves, so a
# block that big is mmapped again unless M_MMAP_MAX is still 0.
SCOPED = """
report = {"before": mmapped_block(300_000_000)}
worker = TorchThread()
report["retains"] = worker.retains_memory
report["tune_allocator"] = runtime.tune_allocator()  # a shared process: not for good

def call():
    with runtime.allocator_tuned() as tuned:
        return tuned, mmapped_block(50_000_000), heap_mb_after_free()

tuned, mmapped, heap = worker.run(call)
report["inside"] = [tuned, mmapped, heap >= 50]
report["between_calls"] = mmapped_block(300_000_000)
report["kept_between_calls"] = heap_mb_after_free() >= 50
report["running_blocks"] = runtime._calls
worker.shutdown()
report["retainers_after_shutdown"] = runtime._retainers
report["kept_after_shutdown"] = heap_mb_after_free() >= 50
report["after_shutdown"] = mmapped_block(300_000_000)
print(json.dumps(report))
"""

ARENAS = """
worker = TorchThread(cap_arenas=CAP)
print(json.dumps({"in_main": worker.in_main_arena, "candidates": worker.candidates,
                  "arenas": live_arenas(4)}))
"""


def run_script(script: str, opt_out: bool = False) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "NAPARI_SAM_NO_MALLOC_TUNING"}
    if opt_out:
        env["NAPARI_SAM_NO_MALLOC_TUNING"] = "1"
    command = [sys.executable, "-c", PRELUDE + script]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuning_holds_inside_our_calls_only():
    report = run_script(SCOPED)
    assert report == {
        "before": True,  # glibc's default: a 300 MB block is mmapped
        "retains": True,
        "tune_allocator": False,
        "inside": [True, False, True],  # tuned: from the heap, which keeps the freed block
        "between_calls": True,  # other code gets mmap again
        "kept_between_calls": True,  # freed memory waits for the next call
        "running_blocks": 0,
        "retainers_after_shutdown": 0,
        "kept_after_shutdown": False,  # glibc's trim threshold again: the heap shrinks
        "after_shutdown": True,
    }


def test_opt_out_leaves_malloc_alone_and_says_so():
    report = run_script(SCOPED, opt_out=True)
    assert report == {
        "before": True,
        "retains": False,
        "tune_allocator": False,
        "inside": [False, True, False],  # not tuned: mmapped, nothing kept
        "between_calls": True,
        "kept_between_calls": False,
        "running_blocks": 0,
        "retainers_after_shutdown": 0,
        "kept_after_shutdown": False,
        "after_shutdown": True,
    }


def test_arenas_stay_uncapped_unless_asked():
    default = run_script(ARENAS.replace("CAP", "False"))
    capped = run_script(ARENAS.replace("CAP", "True"))
    assert default["in_main"] and capped["in_main"]
    assert default["arenas"] == 4  # four live threads, four arenas: glibc's behaviour
    assert capped["arenas"] == 1  # M_ARENA_MAX=1: every later thread shares one
    assert default["candidates"] <= 16 * (os.cpu_count() or 1) + 64


def test_tune_allocator_still_tunes_a_process_without_torch_threads():
    report = run_script(
        'print(json.dumps({"applied": runtime.tune_allocator(),'
        ' "block": mmapped_block(300_000_000), "kept": heap_mb_after_free() >= 50}))'
    )
    assert report == {"applied": True, "block": False, "kept": True}
