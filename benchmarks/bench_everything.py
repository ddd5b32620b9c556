"""Segment everything on the DSB2018 image: our defaults against the reference algorithm.

Usage: ``python benchmarks/bench_everything.py MODE`` with MODE one of

* ``ours``: default settings (background and covered grid points skipped);
* ``reference_equivalent``: our engine with the reference's settings, every grid point decoded;
* ``reference_style``: the reference algorithm run with our modules in this process (plain
  decoder, every candidate upsampled to 512x512 before filtering by predicted IoU and a
  full-resolution stability score, then box NMS), as Meta's generator does.

Each mode includes the encoder and runs in its own process (peak RSS is per mode). Prints
one JSON line: seconds, peak RSS, grid points decoded, objects, AP against the human
labels. Meta's own generator took 103 s on a 2-core CPU for this image (its npz record).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.engine.everything.filters import mask_boxes, nms, stability_scores
from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.metrics import average_precisions
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.prompts import to_encoder_xy
from napari_sam.io.samples import load_dsb2018

REFERENCE = dict(
    skip_covered=False, stop_after_empty=None, skip_distance=0.0, drop_background=False
)


def ours(
    predictor: Predictor, image: np.ndarray, settings: EverythingSettings
) -> tuple[np.ndarray, int]:
    segmenter = AutomaticSegmenter(predictor, settings)
    candidates = segmenter.initialise(image)
    return segmenter.generate(candidates).labels, candidates.points_decoded


def reference_style(predictor: Predictor, image: np.ndarray) -> tuple[np.ndarray, int]:
    """The reference generator's algorithm on our plain modules (no low-res filtering)."""
    sam = predictor.model.module
    embedding = predictor.encode(image)
    n, batch = 32, 64
    grid = (np.arange(n) + 0.5) / n
    points = np.stack(
        np.meshgrid(grid * image.shape[0], grid * image.shape[1], indexing="ij"), -1
    ).reshape(-1, 2)
    masks, scores = [], []
    with torch.inference_mode():
        pe = sam.prompt_encoder.dense_positional_encoding()
        for start in range(0, len(points), batch):
            xy = to_encoder_xy(
                points[start : start + batch, None], embedding.original_size, embedding.input_size
            )
            coords = torch.as_tensor(xy, dtype=torch.float32)
            sparse, dense = sam.prompt_encoder(
                (coords, torch.ones(coords.shape[:2], dtype=torch.int64)), None, None
            )
            logits, iou = sam.mask_decoder(embedding.features, pe, sparse, dense)
            logits, iou = logits[:, 1:].flatten(0, 1), iou[:, 1:].flatten()
            full = F.interpolate(
                logits[:, None], (sam.input_size,) * 2, mode="bilinear", align_corners=False
            )
            full = full[..., : embedding.input_size[0], : embedding.input_size[1]]
            full = F.interpolate(
                full, embedding.original_size, mode="bilinear", align_corners=False
            )[:, 0]
            keep = (iou >= 0.88) & (stability_scores(full, 1.0) >= 0.95)
            masks.append(full[keep] > 0)
            scores.append(iou[keep])
    masks, scores = torch.cat(masks), torch.cat(scores)
    kept = nms(mask_boxes(masks).numpy(), scores.numpy(), 0.7)
    labels = np.zeros(image.shape, np.int32)
    for label, index in enumerate(sorted(kept, key=lambda i: -int(masks[i].sum())), start=1):
        labels[masks[index].numpy()] = label
    return labels, len(points)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "ours"
    image, truth = load_dsb2018()
    # The reference path is fp32; ours runs in the precision auto chooses on this CPU.
    precision = "fp32" if mode == "reference_style" else "auto"
    predictor = Predictor("vit_t", device="cpu", precision=precision)
    start = time.perf_counter()
    if mode == "reference_style":
        labels, decoded = reference_style(predictor, image)
    else:
        settings = EverythingSettings(**(REFERENCE if mode == "reference_equivalent" else {}))
        labels, decoded = ours(predictor, image, settings)
    seconds = time.perf_counter() - start
    ap = average_precisions(labels, truth, (0.5, 0.75))
    print(
        json.dumps(
            {
                "benchmark": "segment_everything",
                "mode": mode,
                "precision": predictor.precision,
                "image": list(image.shape),
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "points_decoded": decoded,
                "objects": int(len(np.unique(labels)) - 1),
                "ap50": round(ap[0.5], 4),
                "ap75": round(ap[0.75], 4),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
