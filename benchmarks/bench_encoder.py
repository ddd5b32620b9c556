"""Encoder seconds per image: one configuration per process (malloc settings are global).

``python bench_encoder.py ours``: the engine as shipped (batch norm folded, channel-last
convolution weights, malloc tuned), in the precision ``auto`` chooses on this CPU.
``python bench_encoder.py eager``: plain fp32 eager PyTorch, unfolded, default malloc,
as the reference implementation runs.
``python bench_encoder.py precision``: the engine in fp32 and in bf16 in the same process
(calls alternate, so both see the same machine), with the CPU's bf16 capability and what
``auto`` resolves to; the ratio is fp32 time / bf16 time (above 1: bf16 is faster).
``NAPARI_SAM_BENCH_REPEATS`` sets the timed calls per precision (default 5; emulated bf16
takes tens of seconds a call on CPUs without native bf16). Prints one JSON line.
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
    if mode == "precision":
        compare_precisions()
        return
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
    predictor = Predictor(model, precision="auto" if mode == "ours" else "fp32")
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
                "precision": predictor.precision,
                "threads": torch.get_num_threads(),
                "first_call_s": round(first, 3),
                "median_s": round(statistics.median(times), 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "features_checksum": float(np.float64(predictor.embedding.features.double().sum())),
            }
        )
    )


def compare_precisions() -> None:
    """Median encoder seconds in fp32 and bf16, alternating calls, one model."""
    import torch

    from napari_sam.engine.model.loading import load_model
    from napari_sam.engine.model.precision import cpu_capability, resolve_precision
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.io.samples import load_dsb2018

    name = os.environ.get("NAPARI_SAM_BENCH_MODEL", "vit_t")
    repeats = int(os.environ.get("NAPARI_SAM_BENCH_REPEATS", REPEATS))
    model = load_model(name, device="cpu")
    predictors = {p: Predictor(model, precision=p) for p in ("fp32", "bf16")}
    image, _ = load_dsb2018()
    for predictor in predictors.values():  # first calls: one-time costs, not timed
        predictor.encode(image)
    times: dict[str, list[float]] = {p: [] for p in predictors}
    features = {}
    for _ in range(repeats):
        for precision, predictor in predictors.items():
            start = time.perf_counter()
            features[precision] = predictor.encode(image).features
            times[precision].append(time.perf_counter() - start)
    fp32, bf16 = (statistics.median(times[p]) for p in ("fp32", "bf16"))
    difference = (features["bf16"] - features["fp32"]).abs()
    print(
        json.dumps(
            {
                "benchmark": "encoder_precision",
                "model": name,
                "cpu": cpu_capability().describe(),
                "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "auto_resolves_to": resolve_precision("auto", "cpu"),
                "threads": torch.get_num_threads(),
                "repeats": repeats,
                "fp32_median_s": round(fp32, 3),
                "bf16_median_s": round(bf16, 3),
                "fp32_over_bf16": round(fp32 / bf16, 3),
                "embedding_max_abs_difference": round(float(difference.max()), 5),
                "embedding_mean_abs_difference": round(float(difference.mean()), 6),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
