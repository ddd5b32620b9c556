"""Batch segment-everything throughput: in this process against a 2-worker LocalCluster.

``python bench_everything_stack.py`` writes the middle SLICES slices of the cells3d nuclei
volume (256 x 256 each) to a TIFF, then runs ``segment_stack`` on them twice, each in a
fresh process: ``--workers 0`` (in-process, torch on all cores) and a LocalCluster of 2
worker processes (1 torch thread each). It reports slices per minute of the segmentation
and peak memory: the driver's own peak RSS, and the peak of the summed RSS of the driver
and its workers (sampled every 0.2 s). Prints one JSON line; ``--slices N`` and
``--points-per-side N`` change the load.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SLICES = 8


def write_subset(path: Path, slices: int) -> None:
    import tifffile

    from napari_sam.io.samples import load_cells3d_nuclei

    image, _ = load_cells3d_nuclei()
    middle = image.shape[0] // 2
    tifffile.imwrite(
        path, image[middle - slices // 2 : middle - slices // 2 + slices], metadata={"axes": "ZYX"}
    )


class TreeMemory:
    """Peak of the summed RSS of this process and all its descendants, sampled."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self.stop.is_set():
            total = 0
            for proc in [self.process, *self.process.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # a worker that just exited
                    pass
            self.peak = max(self.peak, total)
            self.stop.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def step(workers: int, stack: Path, out: Path, points_per_side: int | None) -> dict:
    from napari_sam.batch.everything import segment_stack
    from napari_sam.batch.settings import Execution, StackSettings
    from napari_sam.batch.tasks import StackSource
    from napari_sam.engine.everything.settings import EverythingSettings

    settings = (
        EverythingSettings()
        if points_per_side is None
        else EverythingSettings(points_per_side=points_per_side)
    )
    with TreeMemory() as memory:
        summary = segment_stack(
            StackSource(str(stack)),
            out,
            StackSettings(settings=settings),
            Execution(workers=workers),
        )
    return {
        "workers": workers,
        "slices": summary.slices,
        "objects": summary.objects,
        "sections": summary.sections,
        "segment_s": summary.segment_seconds,
        "link_s": summary.link_seconds,
        "slices_per_minute": round(summary.slices_per_minute, 2),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "tree_peak_rss_mb": round(memory.peak / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=SLICES)
    parser.add_argument("--points-per-side", type=int)
    parser.add_argument(
        "--step", nargs=3, metavar=("WORKERS", "STACK", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.step:
        workers, stack, out = args.step
        print(json.dumps(step(int(workers), Path(stack), Path(out), args.points_per_side)))
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="napari-sam-bench-") as folder:
        stack = Path(folder) / "cells3d_subset.tif"
        write_subset(stack, args.slices)
        for workers in (0, 2):
            command = [
                sys.executable,
                __file__,
                "--step",
                str(workers),
                str(stack),
                f"{folder}/out{workers}.zarr",
            ]
            if args.points_per_side:
                command += ["--points-per-side", str(args.points_per_side)]
            started = time.perf_counter()
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs.append(
                {
                    **json.loads(output.strip().splitlines()[-1]),
                    "process_s": round(time.perf_counter() - started, 1),
                }
            )
    same = runs[0]["objects"] == runs[1]["objects"]
    print(
        json.dumps(
            {
                "benchmark": "everything_stack",
                "runs": runs,
                "same_object_count": same,
                "cluster_speedup": round(
                    runs[1]["slices_per_minute"] / runs[0]["slices_per_minute"], 2
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
