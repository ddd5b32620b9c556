"""Decoder chunks on two threads of one torch thread each, against one chunk at a time on
two torch threads (what napari-sam does).

Usage: ``python benchmarks/bench_decoder_threads.py [ROUNDS]`` (default 30).

Segment-everything decodes its grid 32 points per call, in chunks of
``fast_decoder.MAX_OBJECTS`` prompts. Many of a chunk's operations are small matrix
products and passes over 4 MB image-token tensors, where two torch threads on one chunk
wait on each other. The alternative runs two chunks at once, each on a pool thread with
one torch thread. Both variants decode the same 32 prompts of the DSB2018 image, one call
each per round, interleaved, so that the machine's load falls on both; prints one JSON
line with the median milliseconds per prompt, their ratio and the largest logit
difference. docs/everything.md reports the result (not shipped).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from napari_sam.engine.network import fast_decoder
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.io.samples import load_dsb2018


def one_thread_pool(workers: int) -> ThreadPoolExecutor:
    """Pool threads with one torch thread each; the process default is put back."""
    default = torch.get_num_threads()

    def initialise() -> None:
        torch.get_num_threads()  # torch's per-thread setup first, or it would undo the 1
        torch.set_num_threads(1)

    pool = ThreadPoolExecutor(workers, initializer=initialise)
    started = threading.Barrier(workers + 1)
    for _ in range(workers):  # every pool thread runs its initializer now
        pool.submit(started.wait)
    started.wait()
    torch.set_num_threads(default)  # set_num_threads also changed the process default
    return pool


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    image, _ = load_dsb2018()
    predictor = Predictor("vit_t", device="cpu")
    predictor.set_embedding(predictor.encode(image))
    points = np.random.default_rng(0).uniform(0, 511, (32, 1, 2))
    pool = one_thread_pool(2)
    size = fast_decoder.MAX_OBJECTS
    plain_call = fast_decoder.FastDecoder.__call__

    def pooled_call(self, context, sparse, mask_tokens):
        if sparse.shape[0] <= size or context.image.shape[0] != 1:
            return plain_call(self, context, sparse, mask_tokens)
        chunks = [sparse[i : i + size] for i in range(0, sparse.shape[0], size)]
        parts = list(pool.map(lambda chunk: plain_call(self, context, chunk, mask_tokens), chunks))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    variants = {"two_torch_threads": plain_call, "two_chunk_threads": pooled_call}
    outputs, times = {}, {name: [] for name in variants}
    for name, call in variants.items():
        fast_decoder.FastDecoder.__call__ = call
        outputs[name] = predictor.predict_low_res(points).logits
    for _ in range(rounds):
        for name, call in variants.items():
            fast_decoder.FastDecoder.__call__ = call
            start = time.perf_counter()
            predictor.predict_low_res(points)
            times[name].append((time.perf_counter() - start) / len(points) * 1000)
    fast_decoder.FastDecoder.__call__ = plain_call
    ratios = np.array(times["two_chunk_threads"]) / np.array(times["two_torch_threads"])
    difference = (outputs["two_chunk_threads"] - outputs["two_torch_threads"]).abs().max()
    medians = {name: round(float(np.median(values)), 2) for name, values in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "decoder_threads",
                "rounds": rounds,
                "ms_per_prompt_median": medians,
                "ratio_median": round(float(np.median(ratios)), 3),
                "max_logit_difference": float(difference),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
