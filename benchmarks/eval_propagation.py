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
import pickle
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_sam.engine.annotation.projection import PROJECTIONS, interior_point
from napari_sam.engine.annotation.propagation import PropagationSettings
from napari_sam.engine.annotation.session import bounding_box

RESULTS = Path(__file__).parent / "results" / "propagation.json"
MIN_IOUS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MAX_GROWTHS = (1.1, 1.2, 1.3, 1.5, 2.0, np.inf)
MIN_SCORES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9)
OPEN = PropagationSettings(min_iou=0.0, min_score=0.0, max_growth=np.inf)  # only "vanished"


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


def open_runs(session, prompts: list[dict], store: Path) -> dict:
    """Every (prompt kind, projection) run with only "vanished" stopping (pickled in ``store``)."""
    if store.exists():
        with store.open("rb") as file:
            return pickle.load(file)
    runs: dict = {}
    for kind, projection in itertools.product(("box", "point"), PROJECTIONS):
        anchors = start_masks(session, prompts, kind)
        started = time.perf_counter()
        found = session.propagate((0,), anchors, settings=replace(OPEN, projection=projection))
        seconds = time.perf_counter() - started
        decoded = sum(len(o.steps) for o in found.objects)
        runs[kind, projection] = [(p["label"], o) for p, o in zip(prompts, found.objects)]
        print(f"{kind} {projection}: {decoded} slice-objects in {seconds:.1f} s", flush=True)
    with store.open("wb") as file:
        pickle.dump(runs, file)
    return runs


def grid_scores(runs: dict, labels: np.ndarray) -> dict:
    """(projection, min_iou, max_growth, min_score) -> {kind: (objects,) 3D IoU}."""
    grid: dict = {}
    for (kind, projection), items in runs.items():
        overlaps = slice_overlaps(items, labels)
        for rule_values in itertools.product(MIN_IOUS, MAX_GROWTHS, MIN_SCORES):
            min_iou, growth, score = rule_values
            rule = PropagationSettings(
                projection=projection, min_iou=min_iou, max_growth=growth, min_score=score
            )
            grid.setdefault((projection, *rule_values), {})[kind] = np.array(
                score_rule(items, overlaps, rule)
            )
    return grid


def choose(grid: dict, members: np.ndarray) -> tuple:
    """The grid entry with the best mean 3D IoU over both prompt kinds on ``members``."""
    return max(grid, key=lambda k: np.mean([v[members].mean() for v in grid[k].values()]))


def cross_validate(grid: dict, count: int) -> list[dict]:
    """Two folds over the nuclei (odd and even ids): chosen on one, scored on the other."""
    folds = []
    for held in (0, 1):
        scored = np.arange(count) % 2 == held
        chosen = choose(grid, ~scored)
        folds.append(
            {
                "chosen_on": "even ids" if held == 0 else "odd ids",
                "rule": list(map(str, chosen)),
                "held_out": {k: float(v[scored].mean()) for k, v in grid[chosen].items()},
                "tuned_on_held_out": {
                    k: float(v[scored].mean()) for k, v in grid[choose(grid, scored)].items()
                },
            }
        )
    return folds


def off_centre(session, labels: np.ndarray, settings: PropagationSettings) -> dict:
    """Mean 3D IoU from a box a quarter and three quarters through each nucleus."""
    found = {}
    for share in (0.25, 0.75):
        anchors, truth = [], []
        for label in range(1, int(labels.max()) + 1):
            slices = np.nonzero((labels == label).any(axis=(1, 2)))[0]
            z = int(slices[int(share * (len(slices) - 1))])
            preview = session.preview((z,), boxes=bounding_box(labels[z] == label)[None])
            item = preview.objects[0]
            anchors.append({z: (item.mask, item.prediction.logits[item.chosen])})
            truth.append(labels == label)
        result = session.propagate((0,), anchors, settings=settings)
        volumes = [o.volume(len(labels), labels.shape[1:]) for o in result.objects]
        found[str(share)] = float(np.mean([iou_3d(v, t) for v, t in zip(volumes, truth)]))
    return found


def speed(session, prompts: list[dict], settings: PropagationSettings) -> dict:
    """Seconds to propagate every nucleus together, and one nucleus at a time."""
    anchors = start_masks(session, prompts, "box")
    started = time.perf_counter()
    together = session.propagate((0,), anchors, settings=settings)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for anchor in anchors:
        session.propagate((0,), [anchor], settings=settings)
    alone = time.perf_counter() - started
    steps = sum(len(o.steps) for o in together.objects)
    return {
        "slice_objects": steps,
        "batched_s": batched,
        "one_by_one_s": alone,
        "ms_per_slice_object_batched": 1000 * batched / steps,
        "ms_per_slice_object_alone": 1000 * alone / steps,
        "ratio": alone / batched,
    }


def timelapse_session(cache: Path):
    from napari_sam.batch.embedding import open_cached_session
    from napari_sam.training.image_sets import load_timelapse_tracks

    frames, tracks = load_timelapse_tracks()
    return open_cached_session(frames, cache, capacity=64), frames, tracks


def track_anchors(session, tracks: np.ndarray) -> list[dict]:
    """Per track, a click at its point on its middle frame, decoded."""
    anchors = []
    for track in np.unique(tracks[:, 0]):
        points = tracks[tracks[:, 0] == track]
        middle = points[len(points) // 2]
        preview = session.preview((int(middle[1]),), points=middle[None, 2:], mode="per_point")
        item = preview.objects[0]
        anchors.append({int(middle[1]): (item.mask, item.prediction.logits[item.chosen])})
    return anchors


def track_hits(found, frames: np.ndarray, tracks: np.ndarray) -> list[tuple[dict, set, int]]:
    """Per track: frame -> followed (the mask holds the track's point within 2 px and no
    other track's point there), the track's frames, and its length."""
    by_frame = {t: tracks[tracks[:, 1] == t] for t in range(len(frames))}
    out = []
    for track, item in zip(np.unique(tracks[:, 0]), found.objects):
        points = tracks[tracks[:, 0] == track]
        on_track = {int(t): (int(r), int(c)) for t, r, c in points[:, 1:]}
        hits = {}
        for index, footprint in item.slices.items():
            if index not in on_track:
                hits[index] = False
                continue
            mask = footprint.paste(frames.shape[1:])
            row, col = on_track[index]
            near = mask[max(0, row - 2) : row + 3, max(0, col - 2) : col + 3].any()
            others = any(mask[int(r), int(c)] for i, _, r, c in by_frame[index] if i != track)
            hits[index] = bool(near and not others)
        out.append((hits, set(on_track), len(points)))
    return out


def followed(obj, hits, rule) -> float:
    """Share of a track followed by ``obj`` cut by ``rule``; frames off the track count against."""
    per_frame, on_track, length = hits
    kept = cut(obj, rule)
    outside = len(set(kept) - on_track)
    return sum(per_frame[i] for i in kept) / (length + outside)


def timelapse_grid(cache: Path) -> tuple[dict, dict]:
    """(projection, min_iou, max_growth, min_score) -> {"point": (tracks,) followed share},
    from one open run per projection; and the live runs' shares with the defaults."""
    session, frames, tracks = timelapse_session(cache)
    anchors = track_anchors(session, tracks)
    grid: dict = {}
    store = cache.with_suffix(".runs.pkl")
    runs = pickle.loads(store.read_bytes()) if store.exists() else {}
    for projection in PROJECTIONS:
        if projection not in runs:
            settings = replace(OPEN, projection=projection)
            runs[projection] = session.propagate((0,), anchors, settings=settings)
            store.write_bytes(pickle.dumps(runs))
        found = runs[projection]
        hits = track_hits(found, frames, tracks)
        for rule_values in itertools.product(MIN_IOUS, MAX_GROWTHS, MIN_SCORES):
            min_iou, growth, score = rule_values
            rule = PropagationSettings(
                projection=projection, min_iou=min_iou, max_growth=growth, min_score=score
            )
            grid[(projection, *rule_values)] = {
                "point": np.array([followed(o, h, rule) for o, h in zip(found.objects, hits)])
            }
    live = session.propagate((0,), anchors, settings=PropagationSettings())
    shares = [
        sum(h[0].values()) / (h[2] + len(set(h[0]) - h[1]))
        for h in track_hits(live, frames, tracks)
    ]
    return grid, {"point": shares}


def leave_one_set_out(grids: dict[str, dict]) -> dict:
    """Each set scored with the rule chosen on the other (mean over its prompt kinds)."""
    report = {}
    for held, other in (("cells3d", "timelapse"), ("timelapse", "cells3d")):
        rule = choose(grids[other], slice(None))
        own = choose(grids[held], slice(None))
        report[held] = {
            "rule_chosen_on_the_other_set": list(map(str, rule)),
            "held_out": {k: float(v.mean()) for k, v in grids[held][rule].items()},
            "tuned_on_itself": list(map(str, own)),
            "tuned": {k: float(v.mean()) for k, v in grids[held][own].items()},
        }
    return report


def half(grid: dict, held: int, keep: bool) -> dict:
    """The grid on the objects whose index parity is (keep: is; else: is not) ``held``."""
    return {
        key: {k: v[(np.arange(len(v)) % 2 == held) == keep] for k, v in kinds.items()}
        for key, kinds in grid.items()
    }


def joint_cross_validation(grids: dict[str, dict]) -> list[dict]:
    """Two folds over both sets at once (odd and even nuclei and tracks): the joint rule
    chosen on one half of each set, scored on the other halves."""
    folds = []
    for held in (0, 1):
        chosen = joint_choice({name: half(g, held, False) for name, g in grids.items()})
        scored = {name: half(g, held, True)[chosen] for name, g in grids.items()}
        folds.append(
            {
                "rule": list(map(str, chosen)),
                "held_out": {
                    name: {k: float(v.mean()) for k, v in kinds.items()}
                    for name, kinds in scored.items()
                },
            }
        )
    return folds


def joint_choice(grids: dict[str, dict]) -> tuple:
    """The rule with the best worse-of-two-sets mean (each set: mean over prompt kinds)."""

    def worst(key):
        return min(np.mean([v.mean() for v in grid[key].values()]) for grid in grids.values())

    return max(grids["cells3d"], key=worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/napari_sam_eval"))
    parser.add_argument("--everything", type=Path, help="linked labels array of the volume")
    args = parser.parse_args()

    from napari_sam.batch.embedding import open_cached_session
    from napari_sam.io.samples import load_cells3d_nuclei

    volume, labels = load_cells3d_nuclei()
    args.cache.mkdir(parents=True, exist_ok=True)
    session = open_cached_session(volume, args.cache / "cells3d.emb", capacity=64)
    started = time.perf_counter()
    for z in range(len(volume)):
        session.embed((z,))
    print(f"embeddings ready in {time.perf_counter() - started:.1f} s", flush=True)
    prompts = middle_prompts(labels)
    runs = open_runs(session, prompts, args.cache / "propagation_runs.pkl")
    grid = grid_scores(runs, labels)
    count = len(prompts)
    chosen = choose(grid, np.ones(count, bool))
    defaults = PropagationSettings()
    shipped = (defaults.projection, defaults.min_iou, defaults.max_growth, defaults.min_score)
    naive = replace(OPEN, projection="box", min_iou=0.5)
    report = {
        "objects": count,
        "chosen_on_all": list(map(str, chosen)),
        "chosen_scores": {k: float(v.mean()) for k, v in grid[chosen].items()},
        "shipped": list(map(str, shipped)),
        "shipped_scores": {k: float(v.mean()) for k, v in grid[shipped].items()},
        "naive_scores": {k: float(v.mean()) for k, v in grid["box", 0.5, np.inf, 0.0].items()},
        "best_per_projection": {
            f"{kind}|{projection}": max(
                float(v[kind].mean()) for k, v in grid.items() if k[0] == projection
            )
            for kind, projection in itertools.product(("box", "point"), PROJECTIONS)
        },
        "cross_validation": cross_validate(grid, count),
        "upper_bound": float(np.mean(upper_bound(session, labels))),
        "off_centre": {
            "shipped": off_centre(session, labels, defaults),
            "naive": off_centre(session, labels, naive),
        },
        "speed": speed(session, prompts, defaults),
    }
    t_grid, t_live = timelapse_grid(args.cache / "timelapse.emb")
    grids = {"cells3d": grid, "timelapse": t_grid}
    joint = joint_choice(grids)
    naive_key = ("box", 0.5, np.inf, 0.0)
    report["timelapse"] = {
        "shipped": float(np.mean(t_grid[shipped]["point"])),
        "shipped_live": float(np.mean(t_live["point"])),
        "naive": float(np.mean(t_grid[naive_key]["point"])),
        "per_track_shipped": t_grid[shipped]["point"].tolist(),
    }
    report["leave_one_set_out"] = leave_one_set_out(grids)
    report["joint_cross_validation"] = joint_cross_validation(grids)
    report["joint_top"] = [
        {
            "rule": list(map(str, key)),
            "cells3d": {k: round(float(v.mean()), 3) for k, v in grid[key].items()},
            "timelapse": round(float(t_grid[key]["point"].mean()), 3),
        }
        for key in sorted(
            grid,
            key=lambda k: -min(np.mean([v.mean() for v in g[k].values()]) for g in grids.values()),
        )[:12]
    ]
    report["joint"] = {
        "rule": list(map(str, joint)),
        "cells3d": {k: float(v.mean()) for k, v in grid[joint].items()},
        "timelapse": float(t_grid[joint]["point"].mean()),
    }
    live = session.propagate((0,), start_masks(session, prompts, "box"), settings=defaults)
    live_ious = [
        iou_3d(o.volume(len(labels), labels.shape[1:]), labels == p["label"])
        for p, o in zip(prompts, live.objects)
    ]
    report["live_shipped_box"] = float(np.mean(live_ious))
    if args.everything:
        report["everything"] = float(np.mean(everything_reference(args.everything, labels)))
    RESULTS.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
