"""Encoder seconds per image: eager PyTorch (as shipped) against ONNX Runtime fp32.

Both run in the same process on the bundled DSB2018 image, interleaved so that load on a
shared machine hits both alike; medians of 5 after one warm-up each. The export is timed
into a temporary folder (the user's cache is left alone). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REPEATS = 5


def main() -> None:
    import torch

    from napari_sam.engine.model.loading import load_model
    from napari_sam.engine.model.onnx_encoder import use_onnx_encoder
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.io.samples import load_dsb2018

    name = os.environ.get("NAPARI_SAM_BENCH_MODEL", "vit_t")
    model = load_model(name, device="cpu")
    image, _ = load_dsb2018()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        fast = use_onnx_encoder(model, Path(folder) / "encoder.onnx")
        export_s = time.perf_counter() - start
        predictors = {"eager": Predictor(model), "onnx": Predictor(fast)}
        features = {key: p.encode(image).features for key, p in predictors.items()}  # warm-up
        times = {key: [] for key in predictors}
        for _ in range(REPEATS):
            for key, predictor in predictors.items():
                start = time.perf_counter()
                predictor.encode(image)
                times[key].append(time.perf_counter() - start)
    eager, onnx = (statistics.median(times[key]) for key in ("eager", "onnx"))
    print(
        json.dumps(
            {
                "benchmark": "encoder_onnx",
                "model": name,
                "threads": torch.get_num_threads(),
                "eager_s": round(eager, 3),
                "onnx_s": round(onnx, 3),
                "speedup": round(eager / onnx, 2),
                "export_s": round(export_s, 2),
                "embedding_max_abs_diff": float((features["eager"] - features["onnx"]).abs().max()),
                "eager_times_s": [round(t, 3) for t in times["eager"]],
                "onnx_times_s": [round(t, 3) for t in times["onnx"]],
            }
        )
    )


if __name__ == "__main__":
    main()
