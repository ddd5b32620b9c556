"""Fine-tuning without forgetting: each retention method on two domain pairs, held out.

Usage: ``python benchmarks/eval_retention.py --pair cells_vs_nuclei --method plain``
(``--report`` prints the tables of docs/training.md from the results file).

A domain pair is the user's domain, where fine-tuning should gain, and a reference
domain, which it must not lose. Each domain has training, validation and held-out test
images, whole images or frames never shared between the three:

* ``cells_vs_nuclei``: the user fine-tunes on label-free whole cells (scratch assay,
  frames 0-3 train, 4-5 validation, 6-9 test); the reference is fluorescent nuclei (the
  development splits of docs/training.md: BBBC007 and cells3d, whose training images are
  the rehearsal images, validation images the reference validation, and held-out
  images plus the hand-labelled DSB2018 image the reference test).
* ``nuclei_vs_cells``: the mirror. The user fine-tunes on the development nuclei
  (train/validation/held-out as in docs/training.md); the reference is the label-free
  whole cells (frames 0-3 rehearsal, 4-5 reference validation, 6-9 reference test).
* ``small_nuclei_vs_cells``: held out from every choice of the defaults (measured only
  after they were fixed). The user fine-tunes on the scratch assay's small Hoechst
  nuclei (frames 0-3 train, 4-5 validation, 6-9 test); the reference is the label-free
  whole cells, split as above.

Methods (:mod:`napari_sam.training.retention`), each one training run with the recipe of
``napari-sam train`` (its time limit included); every run also reports the mix of its
kept weights with the released ones, chosen on the two validation sets:

* ``plain``: no rehearsal, no anchor (the recipe before issue 17).
* ``rehearsal``: half of the steps draw a rehearsal image.
* ``rehearsal_quarter``: a quarter of them do.
* ``anchor``: L2-SP, gradient ``1.0 * (theta - theta_0)``.
* ``rehearsal_anchor``: both.
* ``distilled``: half of the steps rehearse towards the released model's own outputs for
  the same prompts, not the labels: keeping what it did without learning those domains.
* ``joint_distilled``: every step trains on a user image and adds the distilled loss of
  a rehearsal image (8 of its objects): the user's domain keeps all its steps.
* ``joint``: the same with the rehearsal image's labels as targets.
* ``rehearsal_iou``, ``rehearsal_quarter_iou``, ``adaptive_iou``: rehearsal 0.5, 0.25
  and adaptive from 0.5 with the IoU head trained (``adaptive_iou``: the defaults).
* ``adaptive_keep_iou``: ``adaptive_iou`` with the IoU head trained towards the released
  head's predictions on rehearsal steps (``keep_iou_head``).
* ``adaptive_band_iou``: ``adaptive_iou`` with the IoU head's targets the banded IoU
  (``LossWeights.iou_band`` 1); ``adaptive_keep_band_iou``: both.
* ``adaptive_free_band_iou``: ``adaptive_keep_band_iou`` and 16 free points per
  rehearsal step (``free_points``).
* ``adaptive_half_head_iou``: ``adaptive_iou`` whose saved weights keep half of the IoU
  head's change, its shift included (``iou_head_mix`` 0.5).

``--automatic`` adds segment-everything's AP@0.5 of the saved weights on both test sets;
``--save-weights FILE`` keeps them; ``--seed N`` stores the run as ``<method>_seedN``.

Every method keeps the best validated step among those whose reference validation is
within tolerance (the step guard); ``--no-guard`` keeps the best user score of any step,
as the first runs did (stored as ``<method>_unguarded``).

The test images play no part in any choice. Test measures: mean IoU of one point, a box,
point + negative point and one corrective click after the point, at most 30 objects per
image (a fixed draw), as ``napari-sam evaluate --clicks 2 --max-objects 30`` measures
them. Results go to ``results/retention.json`` (one entry per pair and method; the
released model's test scores once per pair).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from napari_sam.training.config import EvaluationSettings, LossWeights, TrainingConfig
from napari_sam.training.embeddings import EmbeddingStore
from napari_sam.training.evaluation import evaluate
from napari_sam.training.image_sets import load_image_set
from napari_sam.training.loop import train
from napari_sam.training.network import inference_model, load_trainable
from napari_sam.training.retention import RetentionSettings

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "retention.json"
PAIRS = ("cells_vs_nuclei", "nuclei_vs_cells", "small_nuclei_vs_cells")
# the domains of each pair: (yours, to keep)
PAIR_DOMAINS = {
    "cells_vs_nuclei": ("cells", "nuclei"),
    "nuclei_vs_cells": ("nuclei", "cells"),
    "small_nuclei_vs_cells": ("small_nuclei", "cells"),
}
_FIXED = {"adaptive": False}  # the rehearsal share of the first runs, before adaptive
METHODS = {
    "plain": RetentionSettings(rehearsal=0.0, anchor=0.0, adaptive=False),
    "rehearsal": RetentionSettings(rehearsal=0.5, anchor=0.0, **_FIXED),
    "rehearsal_quarter": RetentionSettings(rehearsal=0.25, anchor=0.0, **_FIXED),
    "anchor": RetentionSettings(rehearsal=0.0, anchor=1.0, **_FIXED),
    "rehearsal_anchor": RetentionSettings(rehearsal=0.5, anchor=1.0, **_FIXED),
    "distilled": RetentionSettings(rehearsal=0.5, rehearsal_targets="released", **_FIXED),
    "joint_distilled": RetentionSettings(
        rehearsal=0.5, rehearsal_targets="released", joint=True, **_FIXED
    ),
    "joint": RetentionSettings(rehearsal=0.5, joint=True, **_FIXED),
    "rehearsal_iou": RetentionSettings(rehearsal=0.5, **_FIXED),
    "rehearsal_quarter_iou": RetentionSettings(rehearsal=0.25, **_FIXED),
    "adaptive_iou": RetentionSettings(rehearsal=0.5, adaptive=True),
    "adaptive_keep_iou": RetentionSettings(rehearsal=0.5, adaptive=True, keep_iou_head=True),
    "adaptive_band_iou": RetentionSettings(rehearsal=0.5, adaptive=True),
    "adaptive_keep_band_iou": RetentionSettings(rehearsal=0.5, adaptive=True, keep_iou_head=True),
    "adaptive_free_band_iou": RetentionSettings(
        rehearsal=0.5, adaptive=True, keep_iou_head=True, free_points=16
    ),
    "adaptive_half_head_iou": RetentionSettings(rehearsal=0.5, adaptive=True, iou_head_mix=0.5),
}
# every method but the last was measured saving all of the IoU head's change, and all of
# them before the segment-everything guard existed
METHODS = {
    name: dataclasses.replace(
        settings,
        iou_head_mix=settings.iou_head_mix if name == "adaptive_half_head_iou" else 1.0,
        everything_guard=False,
    )
    for name, settings in METHODS.items()
}
# the default since December 2026: the same with the segment-everything guard
METHODS["adaptive_everything_iou"] = RetentionSettings(rehearsal=0.5, adaptive=True)
# the IoU head: trained by the methods named "*_iou" (the default since they were
# measured), frozen as released by the others (the default when they were measured)
OVERRIDES: dict[str, dict] = {
    method: {"freeze_iou_head": not method.endswith("_iou")} for method in METHODS
}
for _banded in ("adaptive_band_iou", "adaptive_keep_band_iou", "adaptive_free_band_iou"):
    OVERRIDES[_banded]["losses"] = LossWeights(iou_band=1)
LABELS = {
    "plain": "plain (no rehearsal)",
    "rehearsal": "rehearsal 0.5",
    "rehearsal_quarter": "rehearsal 0.25",
    "anchor": "anchor 1.0",
    "rehearsal_anchor": "rehearsal 0.5 + anchor 1.0",
    "distilled": "distilled rehearsal 0.5",
    "joint_distilled": "joint distilled rehearsal 0.5",
    "joint": "joint rehearsal 0.5",
    "rehearsal_iou": "rehearsal 0.5, IoU head trained",
    "rehearsal_quarter_iou": "rehearsal 0.25, IoU head trained",
    "adaptive_iou": "adaptive rehearsal from 0.5, IoU head trained (default before the guard)",
    "adaptive_keep_iou": "adaptive from 0.5, IoU head trained, kept on rehearsal",
    "adaptive_band_iou": "adaptive from 0.5, IoU head trained on the banded IoU",
    "adaptive_keep_band_iou": "adaptive from 0.5, IoU head on the banded IoU, kept on rehearsal",
    "adaptive_free_band_iou": "the same and 16 free points per rehearsal step",
    "adaptive_half_head_iou": "adaptive from 0.5, IoU head trained, half of it saved",
    "adaptive_everything_iou": "adaptive from 0.5, IoU head trained, "
    "segment-everything guard (default)",
}
TEST = EvaluationSettings(clicks=2, max_objects=30, point_negative=True)
# segment-everything with its defaults, scored as AP@0.5 (the prompts measured are minimal)
AUTOMATIC = EvaluationSettings(clicks=1, max_objects=1, point_negative=False, automatic=True)


def domains():
    """Both domains, each as (train, validation, test) lists of whole images."""
    from napari_sam.training.development_data import development_splits

    cells = list(load_image_set("scratch_cells").images)
    small = list(load_image_set("scratch_nuclei").images)
    dev = development_splits()
    return {
        "cells": (cells[:4], cells[4:6], cells[6:]),
        "small_nuclei": (small[:4], small[4:6], small[6:]),
        "nuclei": (dev.train, dev.validation, dev.held_out + dev.reference),
    }


def pair_domains(pair: str):
    data = domains()
    user, reference = PAIR_DOMAINS[pair]
    return data[user], data[reference]


def measure(model, images, store) -> dict:
    report = evaluate(model, images, TEST, store)
    return {
        "objects": report.objects,
        "point": report.point,
        "box": report.box,
        "point_negative": report.point_negative,
        "one_click": report.iterative_point[-1],
    }


def automatic_ap(model, user, reference, store) -> dict:
    """Segment-everything AP@0.5 on both test sets (``--automatic``)."""
    return {
        name: evaluate(model, images[2], AUTOMATIC, store).automatic_ap[0.5]
        for name, images in (("user", user), ("reference", reference))
    }


def run(
    pair: str,
    method: str,
    results: dict,
    store: EmbeddingStore,
    guard: bool = True,
    automatic: bool = False,
    seed: int = 0,
    save_weights: Path | None = None,
) -> None:
    user, reference = pair_domains(pair)
    entry = results.setdefault(pair, {})
    if "released" not in entry:
        model = inference_model(load_trainable("vit_t"))
        entry["released"] = {
            "user": measure(model, user[2], store),
            "reference": measure(model, reference[2], store),
        }
        save(results)
    if automatic and "automatic" not in entry["released"]:
        model = inference_model(load_trainable("vit_t"))
        entry["released"]["automatic"] = automatic_ap(model, user, reference, store)
    trainable = load_trainable("vit_t")
    retention = dataclasses.replace(METHODS[method], guard_steps=guard)
    config = TrainingConfig(
        retention=retention, name=method, seed=seed, **OVERRIDES.get(method, {})
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        result = train(
            trainable,
            user[0],
            user[1],
            folder,
            config,
            store=store,
            reference_images=reference[1],
            rehearsal_images=reference[0],
        )
    seconds = time.perf_counter() - started
    mixed = inference_model(trainable, f"{method}-mixed")
    if save_weights is not None:
        torch.save(trainable.module.state_dict(), save_weights)
    row = {
        "seconds": seconds,
        "steps": result.steps,
        "best_step": result.best_step,
        "guard_steps": guard,
        "stopped": result.stopped,
        "released_validation": result.base_scores,
        "mix": None if result.mix is None else result.mix.to_dict(),
        "calibration": None if result.calibration is None else result.calibration.to_dict(),
        "everything": None if result.everything is None else result.everything.to_dict(),
        "curve": [
            [h["step"], h["validation"], h.get("reference_validation"), h.get("rehearsal_share")]
            for h in result.history
            if h.get("validation") is not None
        ],
        "mixed": {
            "user": measure(mixed, user[2], store),
            "reference": measure(mixed, reference[2], store),
        },
    }
    if automatic:  # the saved weights: mixed and calibrated
        row["mixed"]["automatic"] = automatic_ap(mixed, user, reference, store)
    if result.unmixed is not None:  # the kept weights as trained (alpha 1)
        trainable.module.load_state_dict(result.unmixed, strict=False)
        kept = inference_model(trainable, method)
        row["kept"] = {
            "user": measure(kept, user[2], store),
            "reference": measure(kept, reference[2], store),
        }
    key = method if guard else f"{method}_unguarded"
    entry[key if seed == 0 else f"{key}_seed{seed}"] = row
    save(results)


def save(results: dict) -> None:
    partial = OUT.with_suffix(".part")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    partial.replace(OUT)


def report(results: dict) -> None:
    for pair, entry in results.items():
        released = entry.get("released")
        if not released:
            continue
        print(f"\n{pair}")
        print(
            "| method | weights | user point | user box | user mean gain | ref point | ref box "
            "| ref mean loss | validation: user, ref change | steps (kept) | minutes |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        base = (
            (released["user"]["point"] + released["user"]["box"]) / 2,
            (released["reference"]["point"] + released["reference"]["box"]) / 2,
        )
        print(
            f"| released | | {released['user']['point']:.3f} | {released['user']['box']:.3f} | | "
            f"{released['reference']['point']:.3f} | {released['reference']['box']:.3f} | | | | |"
        )
        for key, row in _rows(entry):
            for label, weights in (("as trained", "kept"), ("mixed", "mixed")):
                if weights in row:
                    print(_table_row(_name(key), label, row, weights, base))
        _automatic_report(entry)


def _rows(entry: dict):
    """(key, row) of every stored run, in the order of METHODS, unguarded and seeds beside."""
    for method in METHODS:
        for key in (method, f"{method}_unguarded", *(f"{method}_seed{n}" for n in range(1, 5))):
            if entry.get(key):
                yield key, entry[key]


def _name(key: str) -> str:
    method, _, seed = key.partition("_seed")
    name = LABELS[method.removesuffix("_unguarded")]
    if method.endswith("_unguarded"):
        name = f"{name.removesuffix(' (default)')}, no step guard"
    return f"{name}, seed {seed}" if seed else name


def _table_row(name: str, label: str, row: dict, weights: str, base: tuple) -> str:
    u, r = row[weights]["user"], row[weights]["reference"]
    alpha = f" (alpha {row['mix']['alpha']:.2f})" if weights == "mixed" and row["mix"] else ""
    return (
        f"| {name} | {label}{alpha} | {u['point']:.3f} | {u['box']:.3f} | "
        f"{(u['point'] + u['box']) / 2 - base[0]:+.3f} | {r['point']:.3f} | "
        f"{r['box']:.3f} | {(r['point'] + r['box']) / 2 - base[1]:+.3f} | "
        f"{_validation(row, weights)} | {row['steps']} ({row['best_step']}) | "
        f"{row['seconds'] / 60:.1f} |"
    )


def _automatic_report(entry: dict) -> None:
    """Segment-everything AP@0.5 of the saved weights, where ``--automatic`` measured it."""
    released = entry["released"].get("automatic")
    rows = [
        (key, row["mixed"]["automatic"]) for key, row in _rows(entry) if "automatic" in row["mixed"]
    ]
    if not released or not rows:
        return
    print("\n| segment-everything AP@0.5, test | your domain | domain to keep |")
    print("|---|---|---|")
    print(f"| released | {released['user']:.3f} | {released['reference']:.3f} |")
    for key, ap in rows:
        note = f" ({ap['note']})" if ap.get("note") else ""
        print(f"| {_name(key)}, saved weights{note} | {ap['user']:.3f} | {ap['reference']:.3f} |")


def _validation(row: dict, key: str) -> str:
    """Validation gain on the user's domain and change on the reference of these weights."""
    base = row["released_validation"]
    alpha = row["mix"]["alpha"] if key == "mixed" and row["mix"] else 1.0
    if not row["mix"]:
        return ""
    scores = {s["alpha"]: s for s in row["mix"]["scores"]}[alpha]
    return (
        f"{scores['validation'] - base['validation']:+.3f}, "
        f"{scores['reference'] - base['reference']:+.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", choices=PAIRS)
    parser.add_argument("--method", choices=tuple(METHODS))
    parser.add_argument("--no-guard", action="store_true", help="keep the best step overall")
    parser.add_argument(
        "--automatic", action="store_true", help="also segment everything (AP@0.5), slower"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (stored as _seedN)")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--save-weights", type=Path, help="also save the saved weights here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if args.pair and args.method:
        torch.set_num_threads(args.threads)
        store = EmbeddingStore(Path(tempfile.gettempdir()) / "napari-sam-retention-embeddings")
        run(
            args.pair,
            args.method,
            results,
            store,
            not args.no_guard,
            args.automatic,
            args.seed,
            args.save_weights,
        )
    report(results)


if __name__ == "__main__":
    main()
