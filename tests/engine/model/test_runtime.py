import os
import subprocess
import sys

import pytest

# resolve_device (the device policy) is tested in tests/engine/test_gpu_policy.py.


# Allocates and frees a 50 MB block (above glibc's largest mmap threshold, 32 MB) a few
# times, then prints what tune_allocator returned and the page faults of five more rounds.
REALLOCATE = """
import resource
import numpy as np
from napari_sam.engine.model.runtime import tune_allocator

applied = tune_allocator() and tune_allocator()  # a second call finds it done
for _ in range(2):
    block = np.ones(50_000_000 // 8)
    del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block = np.ones(50_000_000 // 8)  # writes every page
    del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def reallocation(disabled: bool) -> tuple[str, int]:
    """(what tune_allocator returned, page faults re-allocating freed blocks), in a new process."""
    env = {key: value for key, value in os.environ.items() if key != "NAPARI_SAM_NO_MALLOC_TUNING"}
    if disabled:
        env["NAPARI_SAM_NO_MALLOC_TUNING"] = "1"
    command = [sys.executable, "-c", REALLOCATE]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_allocator_reuses_freed_memory_and_can_be_disabled():
    applied, tuned = reallocation(disabled=False)
    refused, untuned = reallocation(disabled=True)
    assert (applied, refused) == ("True", "False")
    assert untuned > 100  # glibc maps fresh pages for every large block
    assert tuned * 10 < untuned
