"""The decoder per prompt: factored transformer against the direct one, in one process.

Usage: ``python benchmarks/bench_decoder.py [ROUNDS]`` (default 10).

Decodes the same 32 single-point prompts of the DSB2018 image (three candidates each, as
segment-everything does) with the predictor's shared context, once with its factored
products (``engine/network/factored_transformer.py``) and once with them removed (the
direct path a single click takes), one call each per round, interleaved so that the
machine's load falls on both. Prints one JSON line: the median milliseconds per prompt of
each, their ratio, the largest logit difference and how many logits change sign.
docs/everything.md reports the result.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np
import torch

from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.io.samples import load_dsb2018

PROMPTS = 32


def main(rounds: int) -> None:
    image = load_dsb2018()[0]
    predictor = Predictor("vit_t")
    predictor.set_image(image)
    decoder, shared = predictor._decoder, predictor._context
    assert shared is not None
    direct = dataclasses.replace(shared, factored=None)
    sam = predictor.model.module
    generator = torch.Generator().manual_seed(0)
    coords = torch.rand(PROMPTS, 1, 2, generator=generator) * 1000
    labels = torch.ones(PROMPTS, 1, dtype=torch.int64)
    times: dict[str, list[float]] = {"factored": [], "direct": []}
    with torch.inference_mode():
        sparse, _ = sam.prompt_encoder((coords, labels), None, None)
        outputs = {}
        for name, context in (("factored", shared), ("direct", direct)):
            outputs[name] = decoder(context, sparse, slice(1, 4))  # warm-up, products made
        for _ in range(rounds):
            for name, context in (("factored", shared), ("direct", direct)):
                start = time.perf_counter()
                decoder(context, sparse, slice(1, 4))
                times[name].append((time.perf_counter() - start) / PROMPTS)
    factored, plain = outputs["factored"][0], outputs["direct"][0]
    medians = {name: 1000 * float(np.median(values)) for name, values in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "decoder_per_prompt",
                "prompts": PROMPTS,
                "rounds": rounds,
                "torch_threads": torch.get_num_threads(),
                "factored_ms": round(medians["factored"], 2),
                "direct_ms": round(medians["direct"], 2),
                "factored_over_direct": round(medians["factored"] / medians["direct"], 3),
                "max_logit_difference": float((factored - plain).abs().max()),
                "largest_logit": float(plain.abs().max()),
                "sign_changes": int(((factored > 0) != (plain > 0)).sum()),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
