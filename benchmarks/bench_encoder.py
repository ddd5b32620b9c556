"""Encoder seconds per image: one configuration per process (malloc settings are global).

``python bench_encoder.py ours``: the engine as shipped (batch norm folded, malloc tuned).
``python bench_encoder.py eager``: plain fp32 eager PyTorch, unfolded, default malloc,
as the reference implementation runs. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

REPEATS = 5


def main(mode: str) -> None:
    if mode == "eager":
        os.environ["NAPARI_SAM_NO_MALLOC_TUNING"] = "1"
    import numpy as np
    import torch

    from napari_sam.engine.model.loading import SamModel, build_sam, load_model
    from napari_sam.engine.model.registry import MODELS
    from napari_sam.engine.model.weights import fetch_weights, read_state_dict
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.io.samples import load_dsb2018

    name = os.environ.get("NAPARI_SAM_BENCH_MODEL", "vit_t")
    if mode == "ours":
        model = load_model(name, device="cpu")
    else:
        spec = MODELS[name]
        module = build_sam(spec, read_state_dict(fetch_weights(spec), spec.sha256)).eval()
        model = SamModel(module=module, spec=spec, model_id=spec.model_id, device="cpu")
    predictor = Predictor(model)
    image, _ = load_dsb2018()
    start = time.perf_counter()
    predictor.set_image(image)
    first = time.perf_counter() - start
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        predictor.set_image(image)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "benchmark": "encoder",
                "mode": mode,
                "model": name,
                "threads": torch.get_num_threads(),
                "first_call_s": round(first, 3),
                "median_s": round(statistics.median(times), 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "features_checksum": float(np.float64(predictor.embedding.features.double().sum())),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
