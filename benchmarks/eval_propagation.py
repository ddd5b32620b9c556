"""Propagating one prompt per nucleus through the cells3d volume: projections and stop rules.

Usage: ``python benchmarks/eval_propagation.py [--cache DIR] [--report]``

For each of the 20 labelled nuclei of the cells3d volume (60 x 256 x 256), one prompt on
its middle slice (the box of its label there, or a point at the label's interior
maximum), decoded, then carried through the stack by ``AnnotationSession.propagate``:

1. every projection (``projection.PROJECTIONS``) is run once per prompt kind with the stop
   rules off except "vanished"; each object's per-slice masks and stop features are kept;
2. every stop rule of the grid (``min_iou`` x ``max_growth`` x ``min_score``) is applied
   to those runs afterwards: a rule only cuts a run short, and the slices before its cut
   are exactly those of a live run with that rule (the test suite checks this);
3. the mean 3D IoU per object against the labels, and the same for two references: the
   label's box on every slice it spans (the upper bound), and the best matching object of
   segment-everything + 3D linking (``--everything`` with a labels array made by
   ``eval_linking_cells3d.py``).

The default is the projection and rule with the best mean over box and point prompts;
the chosen defaults are then rerun live and checked against the replayed figure. Writes
``results/propagation.json`` and prints the tables of docs/propagation.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from napari_sam.engine.annotation.projection import PROJECTIONS, interior_point
from napari_sam.engine.annotation.propagation import PropagationSettings
from napari_sam.engine.annotation.session import bounding_box

RESULTS = Path(__file__).parent / "results" / "propagation.json"
MIN_IOUS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MAX_GROWTHS = (1.1, 1.2, 1.3, 1.5, 2.0, np.inf)
MIN_SCORES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9)
OPEN = PropagationSettings(min_iou=0.0)  # only "vanished" stops


def iou_3d(found: np.ndarray, truth: np.ndarray) -> float:
    union = np.count_nonzero(found | truth)
    return float(np.count_nonzero(found & truth) / union) if union else 0.0


def middle_prompts(labels: np.ndarray) -> list[dict]:
    """Per nucleus: its middle slice, box and interior point there."""
    prompts = []
    for label in range(1, int(labels.max()) + 1):
        slices = np.nonzero((labels == label).any(axis=(1, 2)))[0]
        middle = int(slices[len(slices) // 2])
        mask = labels[middle] == label
        prompts.append(
            dict(label=label, z=middle, box=bounding_box(mask), point=interior_point(mask))
        )
    return prompts


def start_masks(session, prompts: list[dict], kind: str) -> list[dict]:
    """Decode each start prompt on its slice -> anchors {z: (mask, logits)}."""
    anchors = []
    for item in prompts:
        if kind == "box":
            preview = session.preview((item["z"],), boxes=item["box"][None])
        else:
            preview = session.preview((item["z"],), points=item["point"][None], mode="per_point")
        chosen = preview.objects[0]
        anchors.append({item["z"]: (chosen.mask, chosen.prediction.logits[chosen.chosen])})
    return anchors


def cut(obj, rule: PropagationSettings) -> dict[int, np.ndarray]:
    """The slices of an open run that survive ``rule`` (both directions from the anchor)."""
    anchor = obj.anchors[0]
    kept = {anchor: obj.slices[anchor]}
    for step in (+1, -1):
        index, previous_area = anchor + step, obj.slices[anchor].area
        while index in obj.steps:
            quality = obj.steps[index]
            from napari_sam.engine.annotation.propagation import stop_reason

            if stop_reason(quality.area, quality.iou_previous, quality.score, previous_area, rule):
                break
            kept[index] = obj.slices[index]
            previous_area = quality.area
            index += step
    return kept


def slice_overlaps(runs, labels) -> list[tuple[int, dict[int, tuple[int, int]]]]:
    """Per object: label voxels, and per slice (mask pixels, pixels on the label)."""
    shape = labels.shape[1:]
    found = []
    for label, obj in runs:
        per_slice = {}
        for index, footprint in obj.slices.items():
            mask = footprint.paste(shape)
            per_slice[index] = (
                footprint.area,
                int(np.count_nonzero(mask & (labels[index] == label))),
            )
        found.append((int(np.count_nonzero(labels == label)), per_slice))
    return found


def score_rule(runs, overlaps, rule) -> list[float]:
    """3D IoU per object of the runs cut by ``rule``, from per-slice overlaps."""
    scores = []
    for (_, obj), (truth, per_slice) in zip(runs, overlaps):
        kept = cut(obj, rule)
        area = sum(per_slice[i][0] for i in kept)
        inter = sum(per_slice[i][1] for i in kept)
        scores.append(inter / (truth + area - inter))
    return scores


def upper_bound(session, labels: np.ndarray) -> list[float]:
    """The label's box on every slice it spans, decoded: the best a box per slice gives."""
    scores = []
    for label in range(1, int(labels.max()) + 1):
        volume = np.zeros(labels.shape, bool)
        for z in np.nonzero((labels == label).any(axis=(1, 2)))[0]:
            box = bounding_box(labels[z] == label)
            volume[z] = session.preview((int(z),), boxes=box[None]).objects[0].mask
        scores.append(iou_3d(volume, labels == label))
    return scores


def everything_reference(path: Path, labels: np.ndarray) -> list[float]:
    """Per nucleus, the 3D IoU of its best matching segment-everything + linking object."""
    import zarr

    found = np.asarray(zarr.open(str(path), mode="r"))
    scores = []
    for label in range(1, int(labels.max()) + 1):
        truth = labels == label
        ids, counts = np.unique(found[truth], return_counts=True)
        best = 0.0
        for k in ids[ids > 0][np.argsort(-counts[ids > 0])][:3]:
            best = max(best, iou_3d(found == k, truth))
        scores.append(best)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/napari_sam_eval/cells3d.emb"))
    parser.add_argument("--everything", type=Path, help="linked labels array of the volume")
    args = parser.parse_args()

    from napari_sam.batch.embedding import open_cached_session
    from napari_sam.io.samples import load_cells3d_nuclei

    volume, labels = load_cells3d_nuclei()
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    session = open_cached_session(volume, args.cache, capacity=64)
    started = time.perf_counter()
    for z in range(len(volume)):
        session.embed((z,))
    print(f"embeddings ready in {time.perf_counter() - started:.1f} s", flush=True)
    prompts = middle_prompts(labels)
    report: dict = {"objects": len(prompts), "grid": {}, "live": {}}
    runs: dict = {}
    for kind, projection in itertools.product(("box", "point"), PROJECTIONS):
        anchors = start_masks(session, prompts, kind)
        started = time.perf_counter()
        found = session.propagate(
            (0,), anchors, settings=PropagationSettings(projection=projection, min_iou=0.0)
        )
        seconds = time.perf_counter() - started
        decoded = sum(len(o.steps) for o in found.objects)
        runs[kind, projection] = [(p["label"], o) for p, o in zip(prompts, found.objects)]
        print(f"{kind} {projection}: {decoded} slice-objects in {seconds:.1f} s", flush=True)
    for (kind, projection), items in runs.items():
        overlaps = slice_overlaps(items, labels)
        for min_iou, growth, score in itertools.product(MIN_IOUS, MAX_GROWTHS, MIN_SCORES):
            rule = PropagationSettings(
                projection=projection, min_iou=min_iou, max_growth=growth, min_score=score
            )
            ious = score_rule(items, overlaps, rule)
            name = f"{kind}|{projection}|{min_iou}|{growth}|{score}"
            report["grid"][name] = float(np.mean(ious))
    report["upper_bound"] = upper_bound(session, labels)
    if args.everything:
        report["everything"] = everything_reference(args.everything, labels)
    RESULTS.write_text(json.dumps(report, indent=1))
    summarise(report)


def summarise(report: dict) -> None:
    grid = report["grid"]
    print(f"upper bound (box on every slice): {np.mean(report['upper_bound']):.3f}")
    if "everything" in report:
        print(f"segment-everything + linking: {np.mean(report['everything']):.3f}")
    for kind in ("box", "point"):
        for projection in PROJECTIONS:
            mine = {k: v for k, v in grid.items() if k.startswith(f"{kind}|{projection}|")}
            best = max(mine, key=mine.get)
            naive = mine[f"{kind}|{projection}|0.5|inf|0.0"]
            print(
                f"{kind:5s} {projection:15s} min_iou 0.5 only {naive:.3f}  best {mine[best]:.3f} ({best})"
            )


if __name__ == "__main__":
    main()
