"""Does the encoder's speed in a background thread need process-wide malloc settings?

Each variant runs in its own process (glibc's settings cannot all be undone), variants are
interleaved over rounds, and every process times the MobileSAM embedding of the bundled
512x512 image a few times after a warm-up. Between two embeddings the main thread churns
memory as a GUI would (allocates and frees a few arrays of 0.1-8 MB), which is when
restored glibc defaults trim the heap again. Variants:

``main``       the main thread, malloc tuned for the whole process (the baseline);
``wide``       a TorchThread (arenas capped at one), malloc tuned for the whole process:
               what napari-sam did before scoping;
``per_call``   a TorchThread found without capping arenas; all three settings applied for
               each call and glibc's defaults put back after it;
``scoped``     what napari-sam does now: a TorchThread without the arena cap, no mmap and a
               64 MiB top pad only during each call, freed memory kept while it lives;
``untuned``    a TorchThread without the arena cap, malloc never tuned;
``thread``     a plain ``threading.Thread`` per call, malloc tuned for the whole process.

Besides seconds, each call's page faults (the mechanism, independent of machine load) and
CPU seconds of the process are recorded, and the resident memory after the last call.

Run: ``python benchmarks/bench_malloc_scope.py`` (prints one JSON line; ``ROUNDS`` and
``CALLS`` environment variables trim it).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

ROUNDS = int(os.environ.get("ROUNDS", "5"))
CALLS = int(os.environ.get("CALLS", "3"))
VARIANTS = ("main", "wide", "per_call", "scoped", "untuned", "thread")
# mallopt (parameter, tuned value, glibc default): M_MMAP_MAX, M_TRIM_THRESHOLD, M_TOP_PAD
SETTINGS = ((-4, 0, 65536), (-1, 1 << 30, 128 * 1024), (-2, 64 << 20, 128 * 1024))


def child(variant: str) -> dict:
    """Time ``CALLS`` embeddings in this process the way ``variant`` says."""
    if variant in ("per_call", "untuned"):
        os.environ["NAPARI_SAM_NO_MALLOC_TUNING"] = "1"  # napari-sam's own tuning off
    import ctypes
    import ctypes.util

    import numpy as np
    import torch

    from napari_sam.engine.model import runtime, threads
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.io.samples import load_dsb2018

    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    image, _ = load_dsb2018()
    search_s, candidates, omp_threads = 0.0, 0, []
    if variant in ("wide", "per_call", "scoped", "untuned"):
        if variant == "wide":  # before any TorchThread, so the tuning is for good
            assert runtime.tune_allocator()
        start = time.perf_counter()
        torch_thread = threads.TorchThread(cap_arenas=variant == "wide")
        search_s, candidates = time.perf_counter() - start, torch_thread.candidates
        assert torch_thread.in_main_arena
        # As in the widgets: the model loads on the torch thread (which also decides how
        # many OpenMP threads torch uses there).
        predictor = torch_thread.run(Predictor, "vit_t", device="cpu")
    else:
        predictor = Predictor("vit_t", device="cpu")

    def encode() -> None:
        omp_threads.append(torch.get_num_threads())
        if variant == "per_call":
            for key, tuned, _default in SETTINGS:
                mallopt(key, tuned)
            try:
                predictor.set_image(image)
            finally:
                for key, _tuned, default in SETTINGS:
                    mallopt(key, default)
        else:
            predictor.set_image(image)

    def run_once() -> None:
        if variant == "main":
            encode()
        elif variant == "thread":
            worker = threading.Thread(target=encode)
            worker.start()
            worker.join()
        else:
            torch_thread.run(encode)

    def churn() -> None:
        for size in (100_000, 1_000_000, 8_000_000, 300_000):
            block = np.ones(size // 8)
            del block

    run_once()  # warm-up: the first call allocates and plans
    churn()
    seconds, cpu, faults = [], [], []
    for _ in range(CALLS):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        run_once()
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
        churn()
    with open("/proc/self/statm") as statm:
        rss_mb = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "faults": faults,
        "rss_after_mb": round(rss_mb),
        "search_ms": round(1000 * search_s, 1),
        "torch_threads": sorted(set(omp_threads)),
        "candidates": candidates,
    }


def main() -> int:
    samples: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for round_ in range(ROUNDS):
        shift = round_ % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            out = subprocess.run(
                [sys.executable, __file__, name], capture_output=True, text=True, check=True
            )
            samples[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {}
    for name, runs in samples.items():
        seconds = [s for run in runs for s in run["seconds"]]
        results[name] = {
            "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3),
            "median_cpu_s": round(statistics.median(c for r in runs for c in r["cpu_seconds"]), 3),
            "all_s": [round(s, 2) for s in seconds],
            "median_faults": statistics.median(f for run in runs for f in run["faults"]),
            "median_rss_after_mb": statistics.median(run["rss_after_mb"] for run in runs),
            "search_ms": [run["search_ms"] for run in runs],
            "candidates": [run["candidates"] for run in runs],
            "torch_threads": sorted({n for run in runs for n in run["torch_threads"]}),
        }
    baseline = results["main"]["median_s"]
    print(
        json.dumps(
            {
                "benchmark": "malloc_scope",
                "rounds": ROUNDS,
                "calls": CALLS,
                "cpu_count": os.cpu_count(),
                "ratio_to_main": {
                    name: round(result["median_s"] / baseline, 2)
                    for name, result in results.items()
                },
                "variants": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(child(sys.argv[1])))
        sys.exit(0)
    sys.exit(main())
