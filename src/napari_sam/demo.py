"""The main job on bundled data: segment every nucleus of the DSB2018 image automatically.

Segment-everything (:mod:`napari_sam.engine.everything.segmenter`) with the default settings writes
the labels and an overlay and reports AP against the human annotation. The interactive
engine is then shown too: one box per annotated nucleus decoded in batches and single
clicks, with their mean IoU against the annotation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_sam.engine.metrics import mask_iou

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did and how well."""

    model_id: str  # weights used
    found: int  # objects segment-everything found
    everything_seconds: float  # segment-everything, encoder included
    points_decoded: int  # grid points segment-everything decoded (of 32 x 32)
    ap50: float  # segment-everything AP at IoU 0.5 against the human annotation
    ap75: float  # ... at IoU 0.75
    objects: int  # annotated nuclei prompted
    encoder_seconds: float  # one set_image call
    precision: str  # the encoder's, as auto chose on this CPU: "fp32" or "bf16"
    box_seconds: float  # all boxes, batched decoder calls
    click_ms_median: float  # one point prompt to full-resolution masks
    box_mean_iou: float  # against the human annotation
    point_mean_iou: float  # best of three candidates per click, against the annotation
    outputs: tuple[str, ...]  # files written


def prompts_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One box and one innermost point per object of a label image.

    Returns
    -------
    ids : (N,) int, boxes : (N, 4) (row0, col0, row1, col1) inclusive, points : (N, 2)
    """
    from scipy import ndimage

    ids = np.unique(labels)
    ids = ids[ids > 0]
    boxes, points = [], []
    regions = ndimage.find_objects(labels)  # indexed by label - 1; ids may have gaps
    for label in ids:
        region = regions[label - 1]
        inside = labels[region] == label
        depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(np.argmax(depth), depth.shape)
        boxes.append([region[0].start, region[1].start, region[0].stop - 1, region[1].stop - 1])
        points.append([region[0].start + row, region[1].start + col])
    return ids, np.array(boxes, float), np.array(points, float)


def run_demo(
    out_dir: str | Path,
    model: str = "vit_t",
    clicks: int = 20,
    progress: Callable[[str], None] | None = None,
) -> DemoSummary:
    """Segment the bundled DSB2018 nuclei from prompts and write results to ``out_dir``."""
    from napari_sam.engine.everything.segmenter import segment_plane
    from napari_sam.engine.metrics import average_precisions
    from napari_sam.engine.prediction.labels import paint_masks
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.io.images import write_labels
    from napari_sam.io.overlay import save_overlay
    from napari_sam.io.samples import load_dsb2018

    say = progress or log.info
    out = Path(out_dir)
    image, truth = load_dsb2018()
    ids, boxes, points = prompts_from_labels(truth)
    say(f"loading model {model}")
    predictor = Predictor(model)
    say("segmenting everything (32 x 32 point grid)")
    start = time.perf_counter()
    everything = segment_plane(predictor, image)
    everything_seconds = time.perf_counter() - start
    ap = average_precisions(everything.labels, truth, (0.5, 0.75))
    say(
        f"{everything.count} objects in {everything_seconds:.1f} s; "
        "now one box per annotated nucleus"
    )
    start = time.perf_counter()
    embedding = predictor.set_image(image)
    encoder_seconds = time.perf_counter() - start

    start = time.perf_counter()
    batch = predictor.predict_batch(boxes=boxes)
    box_seconds = time.perf_counter() - start
    box_masks = batch.masks[:, 0]
    box_iou = [mask_iou(m, truth == i) for m, i in zip(box_masks, ids)]

    click_times, point_iou = [], []
    for index in range(min(clicks, len(ids))):
        start = time.perf_counter()
        prediction = predictor.predict(points=points[index : index + 1])
        click_times.append(time.perf_counter() - start)
        point_iou.append(mask_iou(prediction.best_mask, truth == ids[index]))

    order = np.argsort(-batch.scores[:, 0])  # most confident objects claim pixels first
    prompted = paint_masks(box_masks[order], ids=ids[order])
    rgb = embedding.normalization.apply(image)
    written = (
        write_labels(out / "labels.tif", everything.labels, overwrite=True),
        save_overlay(out / "overlay.png", rgb, everything.labels),
        write_labels(out / "box_labels.tif", prompted, overwrite=True),
        save_overlay(out / "box_overlay.png", rgb, prompted),
    )
    summary = DemoSummary(
        model_id=predictor.model.model_id,
        found=everything.count,
        everything_seconds=round(everything_seconds, 3),
        points_decoded=everything.points_decoded,
        ap50=round(ap[0.5], 4),
        ap75=round(ap[0.75], 4),
        objects=len(ids),
        encoder_seconds=round(encoder_seconds, 3),
        precision=predictor.precision,
        box_seconds=round(box_seconds, 3),
        click_ms_median=round(1000 * float(np.median(click_times)), 2),
        box_mean_iou=round(float(np.mean(box_iou)), 4),
        point_mean_iou=round(float(np.mean(point_iou)), 4),
        outputs=tuple(str(p) for p in written) + (str(out / "summary.json"),),
    )
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary
