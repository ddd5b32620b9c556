"""What bf16 encoding does to masks on five kinds of images, against a noise floor.

Usage: ``python benchmarks/eval_precision.py [--sets a,b] [--images N] [--everything]
[--variants shipped,bf16-convolutions]``

For each image of each set (``napari_sam.training.image_sets``, the first N images):

1. the image is mapped to SAM's uint8 input once and encoded in fp32;
2. it is encoded again in each bf16 variant, and in fp32 after one grey level of noise
   (each pixel moved by -1, 0 or +1 of 255, the least noise a camera gives; a noise
   floor: how far masks move for a change of the image no one would see);
3. up to 24 objects per image are prompted as the training evaluation does
   (``training.evaluation``): the most interior point (its three candidates, and the
   one shown), the label's box, the box refined with its own logits, and the point
   with a negative point on the nearest other object. Every embedding is decoded in
   fp32 and its masks are compared with the fp32 embedding's (mask IoU), together
   with each fp32 mask's stability score (SAM's: area above logit +1 / above -1);
4. with ``--everything``, segment-everything with the defaults runs on the fp32, the
   shipped bf16 and the noisy image's embedding (AP@0.5 against the labels).

Variants: ``shipped`` (bf16 matrix products, fp32 convolutions: what ``--precision
bf16`` runs) and ``bf16-convolutions`` (the convolutions follow autocast too: faster,
measured here to show why they stay fp32). Nothing here is chosen on these images: the
comparison is against fp32 and the noise floor only. Writes
``results/precision_sets.json`` and prints the table of docs/precision.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.metrics import average_precision, mask_iou
from napari_sam.engine.model.precision import cpu_capability
from napari_sam.engine.network.common import Float32Conv2d
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.training.evaluation import _box, _neighbour_points, interior_point
from napari_sam.training.image_sets import IMAGE_SET_NAMES, load_image_set

OUT = Path(__file__).parent / "results" / "precision_sets.json"
FAMILIES = ("shown", "box", "box_refined", "pos_neg", "candidates")
STABLE = 0.95  # SAM's stability threshold (segment-everything keeps masks above it)
BAR = (0.99, 0.95)  # issue 18's parity bar: mean and worst mask IoU per prompt family
MAX_OBJECTS, MIN_AREA = 24, 30
IDENTITY = Normalization(0.0, 255.0)  # the input is already SAM's uint8 image


@contextmanager
def bf16_convolutions() -> Iterator[None]:
    """Let the encoders' convolutions follow autocast (bf16) instead of staying fp32."""
    original = Float32Conv2d.forward
    Float32Conv2d.forward = torch.nn.Conv2d.forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        Float32Conv2d.forward = original  # type: ignore[method-assign]


def prompts(item) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(points, boxes, negative points) of up to MAX_OBJECTS objects, seeded."""
    ids = item.object_ids(MIN_AREA)
    if len(ids) > MAX_OBJECTS:
        ids = np.sort(np.random.default_rng(0).choice(ids, MAX_OBJECTS, replace=False))
    truth = item.labels[None] == ids[:, None, None]
    points = np.stack([interior_point(mask) for mask in truth])
    boxes = np.stack([_box(mask) for mask in truth])
    return points, boxes, _neighbour_points(item.labels, ids)


def decode(predictor: Predictor, embedding, points, boxes, negatives) -> dict:
    """Masks (and fp32 logits, for stability) of every family from one embedding."""
    predictor.set_embedding(embedding)
    click = predictor.predict_batch(points=points[:, None], multimask=True)
    rows = np.arange(len(points))
    box = predictor.predict_batch(boxes=boxes)
    out = {
        "candidates": click.masks.reshape(-1, *click.masks.shape[2:]),
        "candidates_logits": click.logits.reshape(-1, *click.logits.shape[2:]),
        "shown": click.masks[rows, click.scores.argmax(axis=1)],
        "box": box.masks[:, 0],
        "box_refined": predictor.predict_batch(boxes=boxes, mask_input=box.logits[:, 0]).masks[
            :, 0
        ],
    }
    if negatives is not None:
        both = predictor.predict_batch(
            points=np.stack([points, negatives], axis=1),
            point_labels=np.tile([1, 0], (len(points), 1)),
        )
        out["pos_neg"], out["pos_neg_logits"] = both.masks[:, 0], both.logits[:, 0]
    return out


def stability(logits) -> float:
    logits = np.asarray(logits)
    return float((logits > 1).sum() / max(int((logits > -1).sum()), 1))


def one_grey_level(rgb: np.ndarray, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-1, 2, rgb.shape[:2])[..., None]
    return np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encodings(fp32: Predictor, bf16: Predictor, rgb: np.ndarray, variants) -> tuple[dict, dict]:
    """{name: embedding} of the noise floor and each variant, and their encoder seconds."""
    embeddings, seconds = {"one grey level": fp32.encode(one_grey_level(rgb), IDENTITY)}, {}
    for variant in variants:
        with bf16_convolutions() if variant == "bf16-convolutions" else _nothing():
            bf16.encode(rgb, IDENTITY)  # first call: one-time costs
            start = time.perf_counter()
            embeddings[variant] = bf16.encode(rgb, IDENTITY)
            seconds[variant] = time.perf_counter() - start
    start = time.perf_counter()
    fp32.encode(rgb, IDENTITY)
    seconds["fp32"] = time.perf_counter() - start
    return embeddings, seconds


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def segment_everything(predictor: Predictor, embedding, rgb: np.ndarray, labels) -> float:
    segmenter = AutomaticSegmenter(predictor, EverythingSettings())
    candidates = segmenter.initialise(rgb, embed=lambda window: embedding)
    return average_precision(segmenter.generate(candidates).labels, labels, 0.5)


def evaluate_image(fp32: Predictor, bf16: Predictor, item, variants, everything: bool) -> dict:
    rgb = item.normalization.apply(item.image)
    points, boxes, negatives = prompts(item)
    reference = fp32.encode(rgb, IDENTITY)
    base = decode(fp32, reference, points, boxes, negatives)
    embeddings, seconds = encodings(fp32, bf16, rgb, variants)
    row: dict = {"image": item.name, "objects": len(points), "seconds": seconds}
    row["stability"] = {
        family: [stability(logits) for logits in base[f"{family}_logits"]]
        for family in ("candidates", "pos_neg")
        if f"{family}_logits" in base
    }
    for name, embedding in embeddings.items():
        masks = decode(fp32, embedding, points, boxes, negatives)
        row[name] = {
            family: [mask_iou(a, b) for a, b in zip(masks[family], base[family])]
            for family in FAMILIES
            if family in base
        }
    if everything:
        row["everything_ap50"] = {
            "fp32": segment_everything(fp32, reference, rgb, item.labels),
            "shipped": segment_everything(fp32, embeddings["shipped"], rgb, item.labels),
            "one grey level": segment_everything(
                fp32, embeddings["one grey level"], rgb, item.labels
            ),
        }
    return row


def summarise(values: list[float], stabilities: list[float] | None = None) -> str:
    x = np.asarray(values)
    text = f"{x.mean():.4f} / {x.min():.3f} ({int((x < BAR[1]).sum())})"
    if stabilities is not None:
        stable = x[np.asarray(stabilities) >= STABLE]
        text += f"; stable {stable.mean():.4f} / {stable.min():.3f}"
    return text


def report(results: dict) -> None:
    """Per set and over all: mean / worst IoU (number below 0.95) per family and variant."""
    sets = list(results["sets"]) + ["all"]
    names = [*results["variants"], "one grey level"]
    for set_name in sets:
        rows = [r for s, rs in results["sets"].items() if set_name in (s, "all") for r in rs]
        print(f"\n{set_name}: {sum(r['objects'] for r in rows)} objects, {len(rows)} images")
        print("| family | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for family in FAMILIES:
            cells = []
            for name in names:
                values = [v for r in rows for v in r[name].get(family, [])]
                stab = [v for r in rows for v in r["stability"].get(family, [])] or None
                cells.append(
                    summarise(values, stab if family in ("candidates", "pos_neg") else None)
                )
            print(f"| {family} | " + " | ".join(cells) + " |")
        aps = [r["everything_ap50"] for r in rows if "everything_ap50" in r]
        if aps:
            means = {k: float(np.mean([a[k] for a in aps])) for k in aps[0]}
            worst = {k: max(abs(a[k] - a["fp32"]) for a in aps) for k in aps[0] if k != "fp32"}
            print(
                "segment-everything AP@0.5, mean (largest per-image change): "
                + ", ".join(
                    f"{k} {v:.4f}" + (f" ({worst[k]:.4f})" if k in worst else "")
                    for k, v in means.items()
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(IMAGE_SET_NAMES))
    parser.add_argument("--images", type=int, default=4, help="images per set (first N)")
    parser.add_argument("--variants", default="shipped,bf16-convolutions")
    parser.add_argument("--everything", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    fp32 = Predictor("vit_t", precision="fp32")
    bf16 = Predictor(fp32.model, precision="bf16")
    variants = args.variants.split(",")
    results = {"cpu": cpu_capability().describe(), "variants": variants, "sets": {}}
    for set_name in args.sets.split(","):
        image_set = load_image_set(set_name)
        results["sets"][set_name] = []
        for item in image_set.images[: args.images]:
            row = evaluate_image(fp32, bf16, item, variants, args.everything)
            results["sets"][set_name].append(row)
            print(set_name, item.name, {k: round(v, 3) for k, v in row["seconds"].items()})
            OUT.write_text(json.dumps(results))
    report(results)


if __name__ == "__main__":
    main()
