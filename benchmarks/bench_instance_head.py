"""Seconds per plane, encoder included: the instance head's modes against the point grid and
the reference generator, same machine, same run.

Usage: ``python benchmarks/bench_instance_head.py`` (about 8 minutes on 2 cores).

A head is trained first (cells3d: the labels of planes 20 and 40; DSB2018: its own
labels; the speed, not the quality, is measured here), then each (image, mode) runs in its
own process so that its peak RSS is its own:

* ``reference_style``: Meta's generator's algorithm on our modules (every candidate
  upsampled before filtering; ``bench_everything.py``);
* ``every_point`` and ``defaults``: our grid, every point decoded or with the skip rules;
* ``apg`` and ``ais``: the head.

Writes ``results/instance_head_speed.json`` and prints the table of docs/instance_head.md.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("reference_style", "every_point", "defaults", "apg", "ais")
IMAGES = ("cells3d[z=30]", "DSB2018")
OUT = Path(__file__).parent / "results" / "instance_head_speed.json"


def load(image: str):
    """(plane, normalization, training planes and labels) of a benchmark image."""
    from napari_sam.engine.prediction.planes import plane_layout, stack_normalization
    from napari_sam.engine.prediction.preprocess import compute_normalization
    from napari_sam.io.samples import load_cells3d_nuclei, load_dsb2018

    if image == "DSB2018":
        plane, labels = load_dsb2018()
        return plane, labels, compute_normalization(plane), [(plane, labels)]
    volume, labels = load_cells3d_nuclei()
    normalization = stack_normalization(volume, plane_layout(volume.shape, False))
    return volume[30], labels[30], normalization, [(volume[z], labels[z]) for z in (20, 40)]


def train(image: str, path: Path) -> None:
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.training.datasets import LabelledImage
    from napari_sam.training.head_training import train_head

    _, _, normalization, pairs = load(image)
    images = [
        LabelledImage(p, lab.astype(np.int64), f"{image}-{i}", normalization, image)
        for i, (p, lab) in enumerate(pairs)
    ]
    train_head(Predictor("vit_t", device="cpu").model, images).save(path)


def measure(image: str, mode: str, head_path: str) -> dict:
    """One (image, mode), in this process; encoder included."""
    from bench_everything import reference_style

    from napari_sam.engine.everything.segmenter import segment_plane
    from napari_sam.engine.everything.settings import EverythingSettings
    from napari_sam.engine.instances.head import load_head
    from napari_sam.engine.instances.segmenter import HeadSegmenter
    from napari_sam.engine.metrics import average_precisions
    from napari_sam.engine.prediction.predictor import Predictor

    plane, truth, normalization, _ = load(image)
    predictor = Predictor("vit_t", device="cpu")
    predictor.encode(plane, normalization)  # warm-up: first calls allocate
    start = time.perf_counter()
    if mode == "reference_style":
        labels, decoded = reference_style(predictor, plane)
    elif mode in ("every_point", "defaults"):
        settings = EverythingSettings()
        settings = settings.every_point() if mode == "every_point" else settings
        result = segment_plane(predictor, plane, normalization, settings)
        labels, decoded = result.labels, result.points_decoded
    else:
        head = load_head(head_path)
        result = HeadSegmenter(predictor, head, mode).segment(plane, normalization)
        labels, decoded = result.labels, result.points_decoded
    seconds = time.perf_counter() - start
    ap = average_precisions(labels, truth, (0.5, 0.75))
    return {
        "image": image,
        "mode": mode,
        "seconds": round(seconds, 2),
        "decoded": int(decoded),
        "objects": int(len(np.unique(labels)) - 1),
        "ap50": round(ap[0.5], 4),
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
    }


def peak_rss_mb() -> int:
    """This process's peak resident memory since its start or the last reset, MB.

    Read from ``VmHWM``, not ``getrusage``: Linux carries ``ru_maxrss`` across
    fork and exec, so a child would report at least its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def reset_peak_rss() -> None:
    """Start ``VmHWM`` again from the current resident memory (Linux; else a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    if len(sys.argv) == 4:  # a child: one measurement
        print(json.dumps(measure(*sys.argv[1:])))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for image in IMAGES:
            head = Path(folder) / f"head-{len(rows)}"
            reset_peak_rss()
            start = time.perf_counter()
            train(image, head)
            trained = round(time.perf_counter() - start, 1)
            training_rss = peak_rss_mb()
            for mode in MODES:
                out = subprocess.run(
                    [sys.executable, __file__, image, mode, str(head)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=Path(__file__).parent,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["head_training_seconds"] = trained
                row["head_training_peak_rss_mb"] = training_rss
                rows.append(row)
                print(json.dumps(row), flush=True)
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    report(rows)


def report(rows: list[dict]) -> None:
    print(
        "\n| image | mode | seconds per plane (encoder included) | vs reference | "
        "prompts decoded | AP@0.5 | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for image in IMAGES:
        reference = next(r for r in rows if r["image"] == image and r["mode"] == MODES[0])
        for row in (r for r in rows if r["image"] == image):
            ratio = reference["seconds"] / row["seconds"]
            print(
                f"| {image} | {row['mode']} | {row['seconds']:.2f} | {ratio:.1f}x | "
                f"{row['decoded']} | {row['ap50']:.3f} | {row['peak_rss_mb']} |"
            )


if __name__ == "__main__":
    main()
