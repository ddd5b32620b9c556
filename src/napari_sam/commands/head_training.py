"""``napari-sam train --head``: an instance head from the user's labelled images.

The images come as for fine-tuning (``--train-folder``, ``--train-pair``). Held-out images
(``--test-folder``, ``--test-pair``) are segmented with the new head in both modes and
with the point grid, and scored by AP against their labels; the figures go on the head's
card and to a table, so the user sees whether the head beats the grid on their data.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def run_train_head(args: argparse.Namespace, sets: dict[str, list]) -> int:
    """Train, score held-out images, save ``OUT/head.pt`` and ``OUT/head.json``."""
    from tqdm import tqdm

    from napari_sam.engine.instances.head import TrainedHead
    from napari_sam.engine.model.loading import load_model
    from napari_sam.errors import InvalidInputError
    from napari_sam.training.embeddings import EmbeddingStore
    from napari_sam.training.head_training import HeadTrainingSettings, train_head

    if not sets["train"]:
        raise InvalidInputError(
            "--head trains on labelled images: give --train-folder DIR or --train-pair "
            "IMAGE LABELS."
        )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = load_model(args.model, architecture=args.architecture)
    settings = HeadTrainingSettings(steps=args.head_steps, augment=args.head_augment)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            unit = "image" if stage == "encoding" else "step"
            bars[stage] = tqdm(total=total, unit=unit, desc=stage, file=sys.stderr)
        bars[stage].update(done - bars[stage].n)

    store = EmbeddingStore(args.embedding_cache)
    head = train_head(
        model,
        sets["train"],
        settings,
        trained_on=_names(sets["train"]),
        store=store,
        progress=progress,
    )
    for bar in bars.values():
        bar.close()
    quality = score_held_out(model, head, sets["test"]) if sets["test"] else {}
    head = TrainedHead(head.network, replace(head.card, quality=quality))
    path = head.save(Path(args.out) / "head")
    card = head.card
    print(
        f"{path}: head for {card.encoder}, {card.planes} images, {card.objects} objects, "
        f"{card.seconds / 60:.1f} min"
    )
    return 0


def score_held_out(model, head, images: list) -> dict:
    """AP@0.5 / AP@0.75 of APG, AIS and the default grid on held-out images (printed)."""
    from napari_sam.engine.everything.segmenter import segment_plane
    from napari_sam.engine.instances.segmenter import HeadSegmenter
    from napari_sam.engine.metrics import average_precisions
    from napari_sam.engine.prediction.predictor import Predictor

    predictor = Predictor(model)
    methods = {
        "apg": lambda i: HeadSegmenter(predictor, head, "apg").segment(i.image, i.normalization),
        "ais": lambda i: HeadSegmenter(predictor, head, "ais").segment(i.image, i.normalization),
        "grid": lambda i: segment_plane(predictor, i.image, i.normalization),
    }
    scores: dict[str, list] = {name: [] for name in methods}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    for image in images:
        for name, method in methods.items():
            start = time.perf_counter()
            labels = method(image).labels
            seconds[name] += time.perf_counter() - start
            ap = average_precisions(labels, image.labels, (0.5, 0.75))
            scores[name].append((ap[0.5], ap[0.75]))
    print(f"held-out images: {len(images)}")
    print("| method | AP@0.5 | AP@0.75 | seconds per image |")
    print("|---|---|---|---|")
    quality: dict = {"held_out_images": len(images)}
    for name, rows in scores.items():
        ap50, ap75 = (float(np.mean([r[k] for r in rows])) for k in (0, 1))
        print(f"| {name} | {ap50:.3f} | {ap75:.3f} | {seconds[name] / len(images):.1f} |")
        quality[f"{name}_ap50"], quality[f"{name}_ap75"] = round(ap50, 4), round(ap75, 4)
    return quality


def _names(images: list) -> str:
    groups = sorted({image.group for image in images})
    text = ", ".join(groups[:5]) + (f" and {len(groups) - 5} more" if len(groups) > 5 else "")
    return f"{len(images)} labelled images: {text}"
