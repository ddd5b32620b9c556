"""The instance head against every-point segment-everything, on images it never saw.

Usage: ``python benchmarks/eval_instance_head.py [--parts distil,labels,generalist]``

Three parts, each scored only on images that played no part in training:

* ``distil``: a stack without labels. Every-point segment-everything on K planes spread
  through it teaches a head (``--learn K``); the head's APG and AIS modes then segment the
  other planes. Stacks: the cells3d nuclei (z, K = 5, every fifth plane scored) and the
  scratch-assay nuclei (t, K = 3, the other frames scored).
* ``labels``: the user's labels on the first 3 images of a set train a head; the set's
  other images are scored (BBBC007, scratch nuclei, scratch cells).
* ``generalist``: leave-one-set-out over the five development sets: a head trained on the
  labels of four sets segments the fifth. A generalist head ships only if it beats the
  grid on every held-out set.

Every-point AP comes from ``results/everything_sets.json`` where that run scored the same
image with the same settings, else it is computed here. The head's thresholds are the
defaults of :class:`~napari_sam.engine.instances.seeds.SeedSettings`, chosen before any of
these runs (no part tunes them). Seconds here are on a machine doing other work too; speed
ratios come from ``bench_instance_head.py``. Writes ``results/instance_head.json`` after
every image (a rerun continues) and prints the tables of docs/instance_head.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.instances.segmenter import HeadSegmenter
from napari_sam.engine.metrics import average_precisions
from napari_sam.engine.prediction.planes import plane_layout, stack_normalization
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.io.samples import load_cells3d_nuclei
from napari_sam.training.head_distillation import distil_head, spread_planes
from napari_sam.training.head_training import train_head
from napari_sam.training.image_sets import IMAGE_SET_NAMES, load_image_set, load_scratch_assay

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "instance_head.json"
LABELLED = 3  # images of a set the user labels
LABEL_SETS = ("bbbc007", "scratch_nuclei", "scratch_cells")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="distil,labels,generalist")
    parser.add_argument(
        "--redo",
        default="",
        help="comma-separated entries (e.g. distil/scratch_nuclei) to train and score "
        "again; their every-point scores are kept",
    )
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for key in filter(None, args.redo.split(",")):
        for row in results.get(key, {}).get("images", {}).values():
            row.pop("apg", None)
            row.pop("ais", None)
    predictor = Predictor("vit_t", device="cpu")
    every = Every(predictor)
    parts = args.parts.split(",")
    if "distil" in parts:
        for name, planes, labels, learn, scored in distil_stacks():
            run_distil(predictor, every, results, name, planes, labels, learn, scored)
    if "labels" in parts:
        for name in LABEL_SETS:
            images = load_image_set(name).images
            run_trained(
                predictor, every, results, f"labels/{name}", images[:LABELLED], images[LABELLED:]
            )
    if "generalist" in parts:
        sets = {name: load_image_set(name).images for name in IMAGE_SET_NAMES}
        for held_out in IMAGE_SET_NAMES:
            train = [image for name, images in sets.items() if name != held_out for image in images]
            run_trained(predictor, every, results, f"generalist/{held_out}", train, sets[held_out])
    report(results)


def distil_stacks():
    """(name, planes, labels, K, planes scored) of both stacks."""
    volume, labels = load_cells3d_nuclei()
    learn = spread_planes(len(volume), 5)
    scored = [z for z in range(5, len(volume), 5) if z not in learn]
    yield "cells3d", volume, labels, learn, scored
    scratch = load_scratch_assay()
    learn = spread_planes(scratch.shape[1], 3)
    scored = [t for t in range(scratch.shape[1]) if t not in learn]
    yield "scratch_nuclei", scratch[0], scratch[2], learn, scored


class Every:
    """Every-point AP@0.5/0.75 of an image: recorded by eval_everything_sets, or computed."""

    def __init__(self, predictor: Predictor) -> None:
        path = RESULTS / "everything_sets.json"
        self.recorded = json.loads(path.read_text()) if path.is_file() else {}
        self.segmenter = AutomaticSegmenter(predictor, EverythingSettings().every_point())

    def score(self, name: str, image, normalization, truth) -> dict:
        row = self.recorded.get(name, {}).get("every_point")
        if row is not None:
            return {"ap50": row["ap50"], "ap75": row["ap75"], "seconds": row["seconds"]}
        start = time.perf_counter()
        labels = self.segmenter.generate(self.segmenter.initialise(image, normalization)).labels
        return scored(labels, truth, time.perf_counter() - start)


def scored(labels, truth, seconds: float, decoded: int = 0) -> dict:
    ap = average_precisions(labels, truth, (0.5, 0.75))
    return {
        "ap50": round(ap[0.5], 4),
        "ap75": round(ap[0.75], 4),
        "objects": int(len(np.unique(labels)) - 1),
        "decoded": int(decoded),
        "seconds": round(seconds, 2),
    }


def run_distil(predictor, every, results, name, planes, labels, learn, scored_planes) -> None:
    key = f"distil/{name}"
    entry = results.setdefault(key, {"learn": learn, "images": {}})
    if all("apg" in entry["images"].get(_plane_name(name, i), {}) for i in scored_planes):
        return
    normalization = stack_normalization(planes, plane_layout(planes.shape, False))
    start = time.perf_counter()
    head, taught = distil_head(
        predictor, [(f"{name}[{i}]", planes[i]) for i in learn], normalization, trained_on=name
    )
    entry["train_seconds"] = round(time.perf_counter() - start, 1)
    entry["teacher_objects"] = [int(len(np.unique(t)) - 1) for t in taught]
    for index in scored_planes:
        image_name = _plane_name(name, index)
        row = entry["images"].get(image_name) or {}
        if "apg" not in row:
            if "every_point" not in row:
                row["every_point"] = every.score(
                    image_name, planes[index], normalization, labels[index]
                )
            row.update(score_head(predictor, head, planes[index], normalization, labels[index]))
            row["labels"] = int(len(np.unique(labels[index])) - 1)
            entry["images"][image_name] = row
            _save(results)
        print(key, image_name, _brief(row), flush=True)


def run_trained(predictor, every, results, key, train, test) -> None:
    entry = results.setdefault(key, {"trained_on": [i.name for i in train], "images": {}})
    if all("apg" in entry["images"].get(image.name, {}) for image in test):
        return
    start = time.perf_counter()
    head = train_head(predictor.model, list(train), trained_on=key)
    entry["train_seconds"] = round(time.perf_counter() - start, 1)
    for image in test:
        row = entry["images"].get(image.name) or {}
        if "apg" in row:
            continue
        if "every_point" not in row:
            row["every_point"] = every.score(
                image.name, image.image, image.normalization, image.labels
            )
        row.update(score_head(predictor, head, image.image, image.normalization, image.labels))
        row["labels"] = len(image.object_ids())
        entry["images"][image.name] = row
        _save(results)
        print(key, image.name, _brief(row), flush=True)


def score_head(predictor, head, image, normalization, truth) -> dict:
    out = {}
    for mode in ("apg", "ais"):
        start = time.perf_counter()
        result = HeadSegmenter(predictor, head, mode).segment(image, normalization)
        out[mode] = scored(result.labels, truth, time.perf_counter() - start, result.points_decoded)
    return out


def report(results: dict) -> None:
    print(
        "\n| part | image set | images | every-point AP@0.5 | APG | AIS "
        "| every-point AP@0.75 | APG | AIS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key, entry in results.items():
        rows = list(entry["images"].values())
        if not rows:
            continue
        mean = {
            (m, t): np.mean([r[m][t] for r in rows])
            for m in ("every_point", "apg", "ais")
            for t in ("ap50", "ap75")
        }
        part, name = key.split("/")
        print(
            f"| {part} | {name} | {len(rows)} | "
            + " | ".join(f"{mean[(m, 'ap50')]:.3f}" for m in ("every_point", "apg", "ais"))
            + " | "
            + " | ".join(f"{mean[(m, 'ap75')]:.3f}" for m in ("every_point", "apg", "ais"))
            + " |"
        )


def _plane_name(stack: str, index: int) -> str:
    """The image names of everything_sets.json: "cells3d[z=20]", "scratch nuclei[z=3]"."""
    return f"{stack.replace('_', ' ')}[z={index}]"


def _brief(row: dict) -> str:
    return " ".join(f"{m} {row[m]['ap50']:.3f}" for m in ("every_point", "apg", "ais"))


def _save(results: dict) -> None:
    partial = OUT.with_suffix(".partial")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    partial.replace(OUT)


if __name__ == "__main__":
    main()
