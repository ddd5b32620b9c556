"""Training cost per mode: seconds per step and peak memory (RSS), MobileSAM on a CPU.

``python bench_training.py MODE`` times training steps of one mode in this process:
``decoder`` (on a cached embedding), ``decoder+prompt``, ``encoder-last`` (the last two
TinyViT blocks and the neck, so every step encodes the image) and ``full``. Each step is
one BBBC007 image (450 x 450), ``--objects`` objects and ``--iterations`` prompting
rounds; the first step is a warm-up and not counted. CPU seconds (all threads) are
reported beside wall seconds: on a shared machine they depend much less on other jobs.
``python bench_training.py`` runs every mode in a fresh process (peak RSS is per process) and writes
``results/training.json``. Timings on our shared 2-core machines vary with the load of
other jobs: compare modes measured in the same run only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = ("decoder", "decoder+prompt", "encoder-last", "full")


def measure(mode: str, objects: int, iterations: int, steps: int, threads: int) -> dict:
    import numpy as np
    import torch

    from napari_sam.training.checkpoints import LoopState
    from napari_sam.training.config import PromptSettings, TrainingConfig
    from napari_sam.training.development_data import load_bbbc007
    from napari_sam.training.embeddings import EmbeddingStore
    from napari_sam.training.loop import _one_step
    from napari_sam.training.network import inference_model, load_trainable
    from napari_sam.training.optimization import make_optimizer, parameter_groups

    torch.set_num_threads(threads)
    images = load_bbbc007()[:1]
    trainable = load_trainable("vit_t")
    config = TrainingConfig(
        trainable=mode,
        steps=steps + 1,
        objects_per_step=objects,
        warmup_steps=1,
        prompts=PromptSettings(iterations=iterations, quiet_iterations=min(1, iterations - 1)),
    )
    sam = trainable.module
    groups = parameter_groups(sam, mode, config.encoder_blocks, 0.8, 0.1, config.freeze_iou_head)
    optimizer = make_optimizer(groups, 1e-5)  # as train() builds it: IoU head frozen by default
    frozen = inference_model(trainable) if mode in ("decoder", "decoder+prompt") else None
    store = EmbeddingStore()
    if frozen is not None:
        store.features(frozen, images[0])  # the cache is filled once, before timing
    state = LoopState.fresh(0)
    times, cpu = [], []
    for _ in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        _one_step(sam, frozen, images, store, optimizer, state, config)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trained = sum(p.numel() for p in sam.parameters() if p.requires_grad)
    return {
        "mode": mode,
        "objects": objects,
        "iterations": iterations,
        "threads": threads,
        "seconds_per_step": float(np.median(times[1:])),
        "step_seconds": [round(t, 2) for t in times[1:]],
        "cpu_seconds_per_step": float(np.median(cpu[1:])),  # over all threads; robust to other jobs
        "load_average": round(__import__("os").getloadavg()[0], 1),
        "peak_rss_mib": round(peak_mib),
        "trainable_parameters": trained,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", nargs="?", choices=MODES)
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.mode:
        print(
            json.dumps(measure(args.mode, args.objects, args.iterations, args.steps, args.threads))
        )
        return
    rows = []
    for mode in MODES:
        command = [
            sys.executable,
            __file__,
            mode,
            "--objects",
            str(args.objects),
            "--iterations",
            str(args.iterations),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "training.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
