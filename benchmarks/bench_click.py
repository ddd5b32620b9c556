"""Click-to-mask latency: one point -> three masks at the original 512x512 resolution.

Ours (``Predictor.predict``) against the reference-style path (``baseline.py``) on the
same model, image and points, in the same process. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from baseline import reference_style_predict

from napari_sam.demo import prompts_from_labels
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.io.samples import load_dsb2018

CALLS = 100


def median_ms(function, points) -> float:
    for point in points[:5]:  # warm-up
        function(point)
    times = []
    for i in range(CALLS):
        point = points[i % len(points)]
        start = time.perf_counter()
        function(point)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    image, labels = load_dsb2018()
    _, _, points = prompts_from_labels(labels)
    predictor = Predictor("vit_t", device="cpu")
    embedding = predictor.set_image(image)
    sam = predictor.model.module
    ours = median_ms(lambda p: predictor.predict(points=p[None], multimask=True).masks, points)
    baseline = median_ms(lambda p: reference_style_predict(sam, embedding, p), points)
    agree = np.mean(
        [
            (
                predictor.predict(points=p[None], multimask=True).masks
                == reference_style_predict(sam, embedding, p)
            ).mean()
            for p in points[:10]
        ]
    )
    print(
        json.dumps(
            {
                "benchmark": "click_to_mask",
                "image": list(image.shape),
                "calls": CALLS,
                "ours_ms_median": round(ours, 2),
                "reference_style_ms_median": round(baseline, 2),
                "speedup": round(baseline / ours, 2),
                "pixel_agreement": round(float(agree), 6),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
