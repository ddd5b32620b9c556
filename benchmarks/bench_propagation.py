"""Propagation speed on the cells3d volume with cached embeddings: batched against one by one.

``python benchmarks/bench_propagation.py [--cache DIR]``: the 20 nuclei of the cells3d
volume, one box each on its middle slice, propagated with the defaults (1) all together
(one decoder call per slice and direction) and (2) one object at a time, in the same
process on the same cached embeddings, so only the decoding differs; (3) the reference
way of following an object, one ``Predictor.predict`` call per slice and object with the
box of the previous mask (no batching, no sweep). Each is run ``REPEATS`` times and the
median kept. Prints one JSON line: seconds, milliseconds per slice-object, the ratios,
and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from napari_sam.batch.embedding import open_cached_session
from napari_sam.engine.annotation.propagation import PropagationSettings
from napari_sam.engine.annotation.session import bounding_box
from napari_sam.io.samples import load_cells3d_nuclei

REPEATS = 3


def anchors_of(session, labels: np.ndarray) -> list[dict]:
    anchors = []
    for label in range(1, int(labels.max()) + 1):
        slices = np.nonzero((labels == label).any(axis=(1, 2)))[0]
        z = int(slices[len(slices) // 2])
        item = session.preview((z,), boxes=bounding_box(labels[z] == label)[None]).objects[0]
        anchors.append({z: (item.mask, item.prediction.logits[item.chosen])})
    return anchors


def timed(function) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def one_call_per_slice(session, found) -> None:
    """Re-decode every slice of every propagated object with its own predict call."""
    predictor = session.predictor
    for item in found.objects:
        for index in sorted(item.steps):
            source = item.steps[index].source
            previous = item.slices[index - 1 if index > source else index + 1]
            mask = previous.paste(found.shape)
            session._activate((index,))
            predictor.predict(box=bounding_box(mask), multimask=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/napari_sam_eval"))
    args = parser.parse_args()
    volume, labels = load_cells3d_nuclei()
    args.cache.mkdir(parents=True, exist_ok=True)
    session = open_cached_session(volume, args.cache / "cells3d.emb", capacity=64)
    for z in range(len(volume)):
        session.embed((z,))
    anchors = anchors_of(session, labels)
    settings = PropagationSettings()
    found = session.propagate((0,), anchors, settings=settings)
    steps = sum(len(o.steps) for o in found.objects)
    batched = timed(lambda: session.propagate((0,), anchors, settings=settings))
    alone = timed(lambda: [session.propagate((0,), [a], settings=settings) for a in anchors])
    per_call = timed(lambda: one_call_per_slice(session, found))
    print(
        json.dumps(
            {
                "benchmark": "propagation_cells3d",
                "objects": len(anchors),
                "slice_objects": steps,
                "batched_s": round(batched, 3),
                "one_object_at_a_time_s": round(alone, 3),
                "one_predict_per_slice_s": round(per_call, 3),
                "ms_per_slice_object": round(1000 * batched / steps, 2),
                "ratio_vs_one_at_a_time": round(alone / batched, 2),
                "ratio_vs_one_predict_per_slice": round(per_call / batched, 2),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
