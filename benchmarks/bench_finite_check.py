"""Cost of refusing NaN outputs: ``check_finite`` against the model calls it guards.

Real ``vit_t`` weights on the bundled DSB2018 image, CPU: the encoder, one point prompt
decoded and upsampled (``predict``), and segment-everything's batch of 64 points x 3
masks (``predict_low_res``), each against the check of what it returned, in the same run
(best of several, so load on a shared machine hurts both alike). Prints one JSON line.
"""

from __future__ import annotations

import json
import time

REPEATS = {"encode": 5, "predict": 30, "batch": 5, "check": 100}


def best(function, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import numpy as np
    import torch

    from napari_sam.engine.prediction.output_checks import check_finite
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.io.samples import load_dsb2018

    image, _ = load_dsb2018()
    predictor = Predictor("vit_t", device="cpu")
    model = predictor.model
    encode_s = best(lambda: predictor.set_image(image), REPEATS["encode"])
    features = predictor.embedding.features
    point = np.array([[100, 100]])
    predict_s = best(lambda: predictor.predict(points=point), REPEATS["predict"])
    one = predictor.predict_low_res(point, multimask=True)
    grid = np.linspace(10, 500, 8)
    points = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    batch_s = best(lambda: predictor.predict_low_res(points, multimask=True), REPEATS["batch"])
    many = predictor.predict_low_res(points, multimask=True)

    def check(*tensors: torch.Tensor) -> float:
        return best(lambda: [check_finite(model, t, "output") for t in tensors], REPEATS["check"])

    result = {
        "threads": torch.get_num_threads(),
        "encode_s": encode_s,
        "encode_check_s": check(features),
        "predict_s": predict_s,
        "predict_check_s": check(one.logits, one.scores),
        "batch_64x3_s": batch_s,
        "batch_check_s": check(many.logits, many.scores),
    }
    for step in ("encode", "predict", "batch_64x3"):
        check_key = step.replace("_64x3", "") + "_check_s"
        result[f"{step}_overhead"] = result[check_key] / result[f"{step}_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
