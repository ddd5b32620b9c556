"""Segment-everything's defaults on five kinds of images, each scored on rules chosen without it.

Usage: ``python benchmarks/eval_everything_sets.py [--sets a,b] [--per-set N] [--resume]``

For every image of every set (``napari_sam.training.image_sets``):

1. encode once; decode *every* grid point (live, timed) while recording each point's
   outputs; generate the every-point labels and the reference-equivalent labels (Meta's
   settings: every point, no background rule);
2. run the defaults live (timed, encoder excluded, the same embedding);
3. replay the recorded points under each candidate ``stop_after_empty``: the replay gives
   the decoder's recorded outputs to the production code path, so its decisions and labels
   are those of a live run;
4. an Otsu threshold + connected components baseline (specks under 10 px removed).

Leave-one-set-out: for each set, the stop run is chosen on the *other four* sets (the
smallest candidate whose mean AP@0.5 loss against every-point is at most 0.01 on each
of them) and only then scored on the held-out set. Writes
``results/everything_sets.json`` (per image, after each image: ``--resume`` continues) and
prints the per-set tables of docs/everything.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.morphology import remove_small_objects

from napari_sam.engine.everything.filters import stability_scores
from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.metrics import average_precisions
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.training.image_sets import IMAGE_SET_NAMES, load_image_set

CANDIDATES = (8, 16, 32, 64)
TOLERANCE = 0.01  # mean AP@0.5 a rule may lose against every-point on a training set
OUT = Path(__file__).parent / "results" / "everything_sets.json"
DEFAULT = EverythingSettings()
REFERENCE = replace(DEFAULT.every_point(), drop_background=False)


class Recorder:
    """A predictor stand-in that decodes for real and keeps each point's outputs."""

    def __init__(self, predictor: Predictor, floor: float) -> None:
        self.predictor, self.model, self.floor, self.rows = predictor, predictor.model, floor, {}

    def set_embedding(self, embedding) -> None:
        self.predictor.set_embedding(embedding)

    def predict_low_res(self, points, multimask=True):
        out = self.predictor.predict_low_res(points, multimask=multimask)
        logits, scores = out.logits.float(), out.scores.float()
        stability = stability_scores(logits.flatten(0, 1), 1.0).view(scores.shape)
        for b, point in enumerate(np.asarray(points)):
            keep = ((scores[b] >= self.floor) & (stability[b] >= self.floor)).numpy()
            self.rows[_key(point)] = (scores[b].numpy().copy(), keep, logits[b][keep].half())
        return out


class Replay:
    """Answers decoder calls from a Recorder's rows. Masks below the keep floors come back
    empty with score 0: no rule or filter can use them (all thresholds exceed the floors)."""

    def __init__(self, rows: dict, model) -> None:
        self.rows, self.model = rows, model

    def set_embedding(self, embedding) -> None:
        pass

    def predict_low_res(self, points, multimask=True):
        batch = len(points)
        logits = torch.full((batch, 3, 256, 256), -20.0)
        scores = torch.zeros(batch, 3)
        for b, point in enumerate(np.asarray(points)):
            point_scores, keep, kept = self.rows[_key(point)]
            for j, index in enumerate(np.flatnonzero(keep)):
                logits[b, index] = kept[j].float()
                scores[b, index] = float(point_scores[index])
        return SimpleNamespace(logits=logits, scores=scores)


def _key(point: np.ndarray) -> tuple[float, float]:
    row, col = np.asarray(point, dtype=np.float64).reshape(-1)[:2]
    return round(float(row), 4), round(float(col), 4)


def otsu_labels(image: np.ndarray) -> np.ndarray:
    plane = image if image.ndim == 2 else image.mean(axis=-1)
    foreground = plane > threshold_otsu(plane)
    return label(remove_small_objects(foreground, max_size=9))


def evaluate_image(predictor: Predictor, item) -> dict:
    embedding = predictor.encode(item.image, item.normalization)

    def segment(engine, settings):
        segmenter = AutomaticSegmenter(engine, settings)
        start = time.perf_counter()
        candidates = segmenter.initialise(item.image, embed=lambda window: embedding)
        result = segmenter.generate(candidates)
        return candidates, result, time.perf_counter() - start

    def scored(labels, decoded, seconds):
        ap = average_precisions(labels, item.labels, (0.5, 0.75))
        count = len(np.unique(labels)) - 1
        return {
            "decoded": decoded,
            "objects": count,
            "ap50": ap[0.5],
            "ap75": ap[0.75],
            "seconds": round(seconds, 2),
        }

    recorder = Recorder(predictor, DEFAULT.keep_iou_floor)
    candidates, every, seconds = segment(recorder, DEFAULT.every_point())
    row = {"every_point": scored(every.labels, candidates.points_decoded, seconds)}
    reference = AutomaticSegmenter(recorder, REFERENCE).generate(candidates)
    row["reference_equivalent"] = scored(reference.labels, candidates.points_decoded, seconds)
    candidates, ours, seconds = segment(predictor, DEFAULT)
    row["defaults"] = scored(ours.labels, candidates.points_decoded, seconds)
    for stop in CANDIDATES:
        candidates, result, seconds = segment(
            Replay(recorder.rows, predictor.model), replace(DEFAULT, stop_after_empty=stop)
        )
        row[f"stop {stop}"] = scored(result.labels, candidates.points_decoded, seconds)
    row["otsu"] = scored(otsu_labels(item.image), 0, 0.0)
    row["labels"] = int(len(np.unique(item.labels)) - 1)
    return row


def rerun_defaults(predictor: Predictor, item, row: dict) -> None:
    """Run the current defaults live again (after a default changed), keeping the rest."""
    embedding = predictor.encode(item.image, item.normalization)
    segmenter = AutomaticSegmenter(predictor, DEFAULT)
    start = time.perf_counter()
    candidates = segmenter.initialise(item.image, embed=lambda window: embedding)
    labels = segmenter.generate(candidates).labels
    seconds = time.perf_counter() - start
    ap = average_precisions(labels, item.labels, (0.5, 0.75))
    row["defaults"] = {
        "decoded": candidates.points_decoded,
        "objects": int(len(np.unique(labels)) - 1),
        "ap50": ap[0.5],
        "ap75": ap[0.75],
        "seconds": round(seconds, 2),
    }
    row["stop_after_empty"] = DEFAULT.stop_after_empty


def choose_stop(rows: list[dict]) -> int:
    """The smallest candidate whose mean AP@0.5 loss against every point is at most
    TOLERANCE on each set among ``rows`` (single images move by a few hundredths between
    equally safe rules: which of two points on a nucleus is decoded changes its mask)."""
    sets = {r["set"] for r in rows}
    for stop in CANDIDATES:
        losses = [
            np.mean(
                [
                    r["every_point"]["ap50"] - r[f"stop {stop}"]["ap50"]
                    for r in rows
                    if r["set"] == name
                ]
            )
            for name in sets
        ]
        if max(losses) <= TOLERANCE:
            return stop
    return CANDIDATES[-1]


def report(results: dict) -> None:
    sets = sorted({r["set"] for r in results.values()}, key=IMAGE_SET_NAMES.index)
    print(f"\nleave-one-set-out (tolerance {TOLERANCE} mean AP@0.5 on each training set)")
    all_rows = list(results.values())
    print(
        f"chosen on all sets: stop_after_empty {choose_stop(all_rows)}; shipped: "
        f"{DEFAULT.stop_after_empty}"
    )
    for name in sets:
        held = [r for r in all_rows if r["set"] == name]
        chosen = choose_stop([r for r in all_rows if r["set"] != name])
        print(
            f"\n## {name}: {held[0]['kind']} (labels: {held[0]['labels_by']}); "
            f"stop chosen without it: {chosen}"
        )
        print(
            "| image | labels | every point: AP50 / AP75, points, s | defaults | held-out "
            "choice | reference-equivalent | Otsu |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in held:
            cells = [
                f"{r[k]['ap50']:.3f} / {r[k]['ap75']:.3f}, {r[k]['decoded']}, {r[k]['seconds']}"
                for k in ("every_point", "defaults", f"stop {chosen}")
            ]
            reference, otsu = r["reference_equivalent"], r["otsu"]
            print(
                f"| {r['image']} | {r['labels']} | "
                + " | ".join(cells)
                + f" | {reference['ap50']:.3f} / {reference['ap75']:.3f} | "
                f"{otsu['ap50']:.3f} / {otsu['ap75']:.3f} |"
            )
        loss = [r["every_point"]["ap50"] - r[f"stop {chosen}"]["ap50"] for r in held]
        loss_default = [r["every_point"]["ap50"] - r["defaults"]["ap50"] for r in held]
        points = sum(r["defaults"]["decoded"] for r in held)
        every = sum(r["every_point"]["decoded"] for r in held)
        print(
            f"AP@0.5 loss against every point, mean (worst image): held-out choice "
            f"{np.mean(loss):+.3f} ({max(loss):+.3f}), defaults {np.mean(loss_default):+.3f} "
            f"({max(loss_default):+.3f}); defaults decode {points} of {every} points"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(IMAGE_SET_NAMES))
    parser.add_argument("--per-set", type=int, default=4, help="at most this many images a set")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--report", action="store_true", help="only print the stored tables")
    parser.add_argument(
        "--rerun-defaults",
        action="store_true",
        help="run only the live defaults again on the stored images (after a default changed)",
    )
    args = parser.parse_args()
    stored = args.resume or args.report or args.rerun_defaults
    results = json.loads(OUT.read_text()) if stored and OUT.is_file() else {}
    if not args.report:
        predictor = Predictor("vit_t", device="cpu")
        for name in args.sets.split(","):
            image_set = load_image_set(name)
            items = image_set.images
            step = max(1, int(np.ceil(len(items) / args.per_set)))
            for item in items[::step]:
                if item.name in results:
                    if args.rerun_defaults:
                        rerun_defaults(predictor, item, results[item.name])
                        OUT.write_text(json.dumps(results, indent=1))
                    continue
                row = evaluate_image(predictor, item)
                row.update(
                    set=name, kind=image_set.kind, labels_by=image_set.labels_by, image=item.name
                )
                results[item.name] = row
                print(
                    json.dumps({k: row[k] for k in ("image", "every_point", "defaults")}),
                    flush=True,
                )
                OUT.write_text(json.dumps(results, indent=1))
    report(results)


if __name__ == "__main__":
    main()
