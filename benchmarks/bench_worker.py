"""Encoder speed and GUI responsiveness when the embedding runs off napari's GUI thread.

In a shown viewer, the MobileSAM embedding of the bundled 512x512 image runs on the main
thread ("direct"), in napari's ``thread_worker``, in a plain ``threading.Thread``, and in
a ``thread_worker`` that hands the call to :class:`~napari_sam.engine.model.threads.TorchThread`
(with the process's torch threads, and with 1). Background runs start from the running
event loop; a 5 ms QTimer on the GUI thread records the gaps between its ticks (the
longest gap is the worst freeze a user would feel). "+busy" variants also nudge the
camera on every tick, so the viewer redraws throughout, as when a user pans meanwhile;
"+progress" variants show napari's indeterminate progress bar, as a widget would.
Variants are interleaved and repeated; medians are reported. Prints one JSON line.

Run: ``xvfb-run -a -s "-screen 0 1280x900x24" python benchmarks/bench_worker.py``.
``BENCH_WORKER_REPEATS`` and ``BENCH_WORKER_ONLY`` (comma-separated variant names; "direct" is
always run, as the baseline) trim the run. Environment knobs (``OMP_WAIT_POLICY``,
``MALLOC_ARENA_MAX``, ...) are read from the caller's environment and echoed in the output, to
compare them in separate processes.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time
from functools import partial

import napari
import torch
from napari.qt.threading import thread_worker
from qtpy.QtCore import QEventLoop, QTimer

from napari_sam.engine.model.threads import TorchThread
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.io.samples import load_dsb2018

REPEATS = int(os.environ.get("BENCH_WORKER_REPEATS", "5"))
ONLY = os.environ.get("BENCH_WORKER_ONLY")  # comma-separated variant names, e.g. "direct,worker"
TICK_MS = 5
TIMEOUT_S = 120
ENV_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MALLOC_ARENA_MAX")


class Bench:
    """One viewer, one predictor, and the ways of running ``set_image`` in the background."""

    def __init__(self) -> None:
        self.image, _ = load_dsb2018()
        self.viewer = napari.Viewer(show=True)
        self.viewer.add_image(self.image)
        self.predictor = Predictor("vit_t", device="cpu")
        self.predictor.set_image(self.image)  # warm-up: first call allocates and plans
        self.torch_thread = TorchThread()
        self.torch_thread_1 = TorchThread(num_threads=1)
        self.torch_thread.run(self.encode)
        self.torch_thread_1.run(self.encode)

    def encode(self) -> dict:
        """Time one embedding on the calling thread; page faults of the whole process."""
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        self.predictor.set_image(self.image)
        return {
            "encoder_s": time.perf_counter() - start,
            "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
            "torch_threads": torch.get_num_threads(),
        }

    def start_worker(self, done, progress: bool, torch_thread: TorchThread | None) -> None:
        """napari's ``thread_worker``; with ``torch_thread``, the pattern we recommend."""
        options = {"progress": {"total": 0, "desc": "embedding"}} if progress else {}
        if torch_thread is None:
            worker = thread_worker(self.encode, start_thread=False, **options)()
        else:
            worker = thread_worker(torch_thread.run, start_thread=False, **options)(self.encode)
        worker.returned.connect(done)
        worker.errored.connect(done)
        worker.start()

    def start_thread(self, done) -> None:
        thread = threading.Thread(target=lambda: done(self.encode()))
        thread.start()

    def run_background(self, start, busy: bool = False) -> dict:
        """Start work from the event loop; record tick gaps on the GUI thread until done."""
        loop, gaps, result = QEventLoop(), [], {}
        last = [time.perf_counter()]
        camera = self.viewer.camera
        zoom = camera.zoom

        def tick() -> None:
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now
            if busy:
                camera.zoom = zoom * (1.01 if len(gaps) % 2 else 1.0)
            if "value" in result:
                loop.quit()

        def done(value) -> None:  # may run on any thread; the tick quits the loop
            result["value"] = value

        timer = QTimer()
        timer.setInterval(TICK_MS)
        timer.timeout.connect(tick)
        QTimer.singleShot(TIMEOUT_S * 1000, loop.quit)
        gui_cpu, wall = time.thread_time(), time.perf_counter()
        timer.start()
        QTimer.singleShot(0, lambda: start(done))
        loop.exec()
        timer.stop()
        gui_cpu, wall = time.thread_time() - gui_cpu, time.perf_counter() - wall
        camera.zoom = zoom
        value = result.get("value", TimeoutError(f"no result within {TIMEOUT_S} s"))
        if isinstance(value, BaseException):
            raise value
        return {
            **value,
            "max_gap_ms": 1000 * max(gaps),
            "median_gap_ms": 1000 * statistics.median(gaps),
            "gui_thread_cpu_share": gui_cpu / wall,  # of one core, while the work ran
        }

    def variants(self) -> dict:
        """Name -> callable returning one sample; "+progress": napari's busy progress bar."""
        threads = {
            "worker": None,
            "torch_thread": self.torch_thread,
            "torch_thread_1": self.torch_thread_1,
        }
        runs = {"direct": self.encode, "thread": partial(self.run_background, self.start_thread)}
        for mode in ("", "+progress", "+busy"):
            for name, torch_thread in threads.items():
                start = partial(
                    self.start_worker, progress=mode == "+progress", torch_thread=torch_thread
                )
                runs[name + mode] = partial(self.run_background, start, busy=mode == "+busy")
        return runs


def summarise(samples: list[dict]) -> dict:
    keys = [key for key in samples[0] if key != "torch_threads"]
    summary = {key: round(statistics.median(s[key] for s in samples), 3) for key in keys}
    summary["encoder_s_all"] = [round(s["encoder_s"], 3) for s in samples]
    if "max_gap_ms" in samples[0]:
        summary["max_gap_ms_worst"] = round(max(s["max_gap_ms"] for s in samples), 1)
    summary["torch_threads"] = samples[0]["torch_threads"]
    return summary


def main() -> int:
    bench = Bench()
    runs = bench.variants()
    names = ["direct", *(n for n in ONLY.split(",") if n != "direct")] if ONLY else list(runs)
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(REPEATS):
        shift = repeat % len(names)  # rotate the order so no variant always runs first
        for name in names[shift:] + names[:shift]:
            samples[name].append(runs[name]())
    results = {name: summarise(samples[name]) for name in names}
    direct = results["direct"]["encoder_s"]
    print(
        json.dumps(
            {
                "benchmark": "worker",
                "model": "vit_t",
                "repeats": REPEATS,
                "tick_ms": TICK_MS,
                "cpu_count": os.cpu_count(),
                "torch_thread_in_main_arena": bench.torch_thread.in_main_arena,
                "env": {knob: os.environ.get(knob) for knob in ENV_KNOBS},
                "ratio_to_direct": {
                    n: round(r["encoder_s"] / direct, 2) for n, r in results.items()
                },
                "variants": results,
            }
        )
    )
    bench.torch_thread.shutdown()
    bench.torch_thread_1.shutdown()
    bench.viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
