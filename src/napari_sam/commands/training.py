"""``napari-sam train`` and ``napari-sam evaluate``: fine-tuning and measuring, with progress bars.

Data come as folders of images with ``STEM_labels.EXT`` beside them (``--train-folder``
and friends), as explicit pairs (``--train-pair IMAGE LABELS [START:STOP]``), or as the
fixed development splits of ``docs/training.md`` (``--development``). ``train`` measures
the test set (the held-out images of the user's own domain) and the reference set (the
regression check) before and after training, prints tables, writes a CSV (and a plot
when matplotlib is installed) and warns when the reference set got worse.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# The flags' defaults and help texts are read from these settings (building the parser
# therefore imports torch, as running any of these commands does anyway).
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.model import DEFAULT_MODEL
from napari_sam.training.config import (
    PAPER_PROMPTS,
    REGRESSION_TOLERANCE,
    TRAINABLE_PARTS,
    EvaluationSettings,
    PromptSettings,
    TrainingConfig,
)

log = logging.getLogger(__name__)

SETS = ("train", "validation", "test", "reference")


def register(commands) -> None:
    """Add the ``train`` and ``evaluate`` subcommands."""
    train = commands.add_parser(
        "train",
        help="fine-tune SAM on images with instance labels",
        description="Fine-tune (or train) SAM with simulated interactive prompting; "
        "measure held-out and reference images before and after.",
    )
    _add_data_arguments(train, SETS)
    train.add_argument(
        "--out", required=True, help="output folder (weights, model card, checkpoint, tables)"
    )
    train.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="starting model name or checkpoint (default %(default)s)",
    )
    train.add_argument("--architecture", help="registry name of a checkpoint file's architecture")
    train.add_argument(
        "--from-scratch", action="store_true", help="random initial weights (no MAE init)"
    )
    _add_recipe_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument(
        "--tolerance",
        type=float,
        default=REGRESSION_TOLERANCE,
        help="allowed drop on the reference set (default %(default)s)",
    )
    train.add_argument(
        "--no-evaluation",
        action="store_true",
        help="only train: measure test and reference sets later with "
        "'napari-sam evaluate', once for several models",
    )
    _add_common_arguments(train)
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="mean IoU of models on labelled images (point, box, clicks)",
        description="Measure one or more models on labelled images; prints a table, "
        "writes CSV/plot.",
    )
    _add_data_arguments(evaluate, ("test", "reference"))
    evaluate.add_argument(
        "--model",
        action="append",
        help=f"model name or checkpoint (repeatable; default {DEFAULT_MODEL})",
    )
    evaluate.add_argument("--architecture", help="registry name of checkpoint files' architecture")
    evaluate.add_argument(
        "--out", help="folder for evaluation.csv (and evaluation.png with matplotlib)"
    )
    _add_common_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def _add_recipe_arguments(train: argparse.ArgumentParser) -> None:
    """The training settings; every default is :class:`TrainingConfig`'s (the validated recipe)."""
    defaults = TrainingConfig()
    add = train.add_argument
    add(
        "--trainable",
        default=defaults.trainable,
        choices=TRAINABLE_PARTS,
        help="what trains (default %(default)s)",
    )
    add(
        "--encoder-blocks",
        type=int,
        default=defaults.encoder_blocks,
        help="encoder blocks trained with encoder-last (default %(default)s)",
    )
    add("--steps", type=int, default=defaults.steps, help="training steps (default %(default)s)")
    add(
        "--objects",
        type=int,
        default=defaults.objects_per_step,
        help="objects per step (default %(default)s)",
    )
    add(
        "--lr",
        type=float,
        default=defaults.learning_rate,
        help="peak learning rate (default %(default)s)",
    )
    add(
        "--iterations",
        type=int,
        default=defaults.prompts.iterations,
        help="prompting iterations per step (default %(default)s; the SAM paper's "
        f"{PAPER_PROMPTS.iterations})",
    )
    add(
        "--quiet-iterations",
        type=int,
        default=defaults.prompts.quiet_iterations,
        help="iterations without a new point (default %(default)s; the SAM paper's "
        f"{PAPER_PROMPTS.quiet_iterations})",
    )
    add(
        "--warmup",
        type=int,
        default=defaults.warmup_steps,
        help="warm-up steps (default %(default)s)",
    )
    add(
        "--layer-decay",
        type=float,
        default=defaults.layer_decay,
        help="layer-wise lr decay of encoder blocks (default %(default)s)",
    )
    add(
        "--drop-path",
        type=float,
        default=defaults.drop_path,
        help="drop path rate when the encoder trains (default %(default)s)",
    )
    add("--crop", type=int, default=defaults.crop_size, help="random square crops of this side")
    add("--flips", action="store_true", default=defaults.flips, help="random flips")
    _add_iou_head_arguments(train, defaults.freeze_iou_head)
    add(
        "--no-calibration",
        dest="calibrate_logits",
        action="store_false",
        default=defaults.calibrate_logits,
        help="do not rescale the kept weights' logits to the base model's stability (by "
        "default they are, so segment-everything's stability filter still fits)",
    )
    add(
        "--validate-every",
        type=int,
        default=defaults.validate_every,
        help="steps between validations (default %(default)s)",
    )
    add(
        "--validation-objects",
        type=int,
        default=defaults.validation_objects,
        help="objects measured per validation image (default %(default)s)",
    )
    add(
        "--patience",
        type=int,
        default=defaults.patience,
        help="validations without gain before stopping (default %(default)s)",
    )
    add(
        "--max-minutes",
        type=float,
        default=defaults.max_minutes,
        help="stop after this many minutes of training (wall time; the best weights are kept; "
        f"default {defaults.max_minutes or 0:g}, 0: no limit). With a limit, how many "
        "steps run, and so the weights, depend on the machine's speed",
    )
    add("--seed", type=int, default=defaults.seed, help="seeds sampling and prompts")
    add("--name", default=defaults.name, help="weights are NAME_ARCH.pt (default %(default)s)")


def _add_iou_head_arguments(train: argparse.ArgumentParser, freeze: bool) -> None:
    iou_head = train.add_mutually_exclusive_group()
    iou_head.add_argument(
        "--freeze-iou-head",
        dest="freeze_iou_head",
        action="store_true",
        help="keep the released IoU head"
        + (" (default)" if freeze else "")
        + ": segment-everything's pred_iou_thresh stays valid",
    )
    iou_head.add_argument(
        "--train-iou-head",
        dest="freeze_iou_head",
        action="store_false",
        help="train the IoU head too"
        + ("" if freeze else " (default)")
        + " (the SAM paper's recipe; it learns the new labels' lower IoU, so "
        "segment-everything then needs a lower pred_iou_thresh)",
    )
    train.set_defaults(freeze_iou_head=freeze)


def _add_data_arguments(parser: argparse.ArgumentParser, sets: tuple[str, ...]) -> None:
    for name in sets:
        parser.add_argument(
            f"--{name}-folder",
            action="append",
            default=[],
            metavar="DIR",
            help=f"{name} images: a folder of images with STEM_labels.EXT beside them",
        )
        parser.add_argument(
            f"--{name}-pair",
            action="append",
            default=[],
            nargs="+",
            metavar="PATH",
            help=f"{name} images: IMAGE LABELS [START:STOP] (repeatable)",
        )
    if "validation" in sets:
        parser.add_argument(
            "--validation-fraction",
            type=float,
            default=0.2,
            help="hold out this fraction of training images for early stopping "
            "when no validation set is given (default %(default)s; 0: none)",
        )
    parser.add_argument(
        "--pattern", default="*.tif", help="image glob inside folders (default %(default)s)"
    )
    parser.add_argument(
        "--label-suffix", default="_labels", help="labels file = STEM + this (default %(default)s)"
    )
    parser.add_argument("--channel", type=int, help="channel of multichannel images")
    parser.add_argument(
        "--development",
        action="store_true",
        help="use the development splits of docs/training.md (BBBC007, cells3d, DSB2018)",
    )


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation settings; every default is :class:`EvaluationSettings`'."""
    defaults = EvaluationSettings()
    add = parser.add_argument
    add(
        "--clicks",
        type=int,
        default=defaults.clicks,
        help="iterative prompting: up to this many prompts (default %(default)s)",
    )
    add(
        "--max-objects",
        type=int,
        default=defaults.max_objects,
        help="objects evaluated per image (default %(default)s)",
    )
    add(
        "--automatic",
        action="store_true",
        default=defaults.automatic,
        help="also score segment-everything by AP at IoU 0.5..0.95 (slow: a point grid per image)",
    )
    add(
        "--automatic-iou",
        type=float,
        metavar="T",
        default=defaults.automatic_iou_threshold,
        help=f"segment-everything's predicted-IoU threshold (default "
        f"{EverythingSettings().pred_iou_thresh})",
    )
    add("--embedding-cache", help="folder keeping image embeddings between runs")
    add("--threads", type=int, help="torch CPU threads")


def load_sets(args: argparse.Namespace, sets: tuple[str, ...]) -> dict[str, list]:
    """The images of each named set from folders, pairs or the development splits."""
    from napari_sam.commands.arguments import parse_z_range
    from napari_sam.errors import InvalidInputError
    from napari_sam.training.datasets import images_from_files, images_from_folder

    if args.development:
        from napari_sam.training.development_data import development_splits

        splits = development_splits()
        found = {
            "train": splits.train,
            "validation": splits.validation,
            "test": splits.held_out,
            "reference": splits.reference,
        }
        return {name: found[name] for name in sets}
    loaded: dict[str, list] = {}
    for name in sets:
        images = []
        for folder in getattr(args, f"{name}_folder"):
            images += images_from_folder(folder, args.pattern, args.label_suffix, args.channel)
        for pair in getattr(args, f"{name}_pair"):
            if len(pair) not in (2, 3):
                raise InvalidInputError(
                    f"--{name}-pair takes IMAGE LABELS [START:STOP]; got {pair}."
                )
            z_range = parse_z_range(pair[2]) if len(pair) == 3 else None
            images += images_from_files(pair[0], pair[1], z_range, args.channel)
        loaded[name] = images
    return loaded


def run_train(args: argparse.Namespace) -> int:
    """``napari-sam train``."""
    from napari_sam.training.evaluation import check_regression
    from napari_sam.training.network import inference_model, load_trainable
    from napari_sam.training.records import add_metrics

    _set_threads(args.threads)
    sets = _training_sets(args)
    trainable = load_trainable(args.model, args.architecture, args.from_scratch, args.seed)
    store = _store(args)
    measured = (
        {}
        if args.no_evaluation
        else {name: sets[name] for name in ("test", "reference") if sets[name]}
    )
    before = _evaluate_sets(inference_model(trainable), measured, args, store, "before")
    _report(
        [(name, f"before {report.model_id}", report) for name, report in before.items()], None, ""
    )
    result = _train_with_bar(trainable, sets, args, store)
    after = _evaluate_sets(inference_model(trainable, args.name), measured, args, store, "after")
    rows = [
        (name, f"{label} {report.model_id}", report)
        for name in measured
        for label, report in (("before", before[name]), ("after", after[name]))
    ]
    wall = sum(h.get("seconds", 0.0) for h in result.history)
    cpu = sum(h.get("cpu_seconds", 0.0) for h in result.history)
    print(
        f"{result.weights}: {result.steps} steps ({result.stopped}) in {wall / 60:.1f} min "
        f"({cpu / 60:.1f} CPU-min), best step {result.best_step}, validation mean IoU "
        f"{_number(result.best_validation)}"
    )
    if result.calibration is not None:
        c = result.calibration
        print(
            f"logits x{c.scale:.2f}: median stability "
            f"{c.tuned_median:.3f} -> {c.calibrated_median:.3f} "
            f"(base model {c.base_median:.3f}, {c.prompts} clicks)"
        )
    _report(rows, Path(args.out), "evaluation")
    for name in measured:
        add_metrics(
            result.card, name, {"before": before[name].to_dict(), "after": after[name].to_dict()}
        )
    if "reference" in measured:
        check = check_regression(before["reference"], after["reference"], args.tolerance)
        add_metrics(
            result.card, "regression_check", {"passed": check.passed, "worse": list(check.worse)}
        )
        if not check.passed:
            print(
                "WARNING: the new model is worse on the reference set:\n  "
                + "\n  ".join(check.worse),
                file=sys.stderr,
            )
    return 0


def _training_sets(args: argparse.Namespace) -> dict[str, list]:
    from napari_sam.errors import InvalidInputError
    from napari_sam.training.datasets import split_images

    sets = load_sets(args, SETS)
    if not sets["train"]:
        raise InvalidInputError(
            "No training images: give --train-folder, --train-pair or --development."
        )
    if not sets["validation"] and args.validation_fraction > 0:
        sets["train"], sets["validation"] = split_images(
            sets["train"], args.validation_fraction, args.seed
        )
    return sets


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The :class:`TrainingConfig` of parsed ``train`` arguments (``--max-minutes 0``: no limit)."""
    return TrainingConfig(
        trainable=args.trainable,
        encoder_blocks=args.encoder_blocks,
        steps=args.steps,
        objects_per_step=args.objects,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        layer_decay=args.layer_decay,
        drop_path=args.drop_path,
        crop_size=args.crop,
        flips=args.flips,
        prompts=PromptSettings(iterations=args.iterations, quiet_iterations=args.quiet_iterations),
        freeze_iou_head=args.freeze_iou_head,
        calibrate_logits=args.calibrate_logits,
        validate_every=args.validate_every,
        validation_objects=args.validation_objects,
        patience=args.patience,
        max_minutes=args.max_minutes or None,
        seed=args.seed,
        name=args.name,
    )


def evaluation_settings(args: argparse.Namespace) -> EvaluationSettings:
    """The :class:`EvaluationSettings` of parsed ``train`` or ``evaluate`` arguments."""
    return EvaluationSettings(
        clicks=args.clicks,
        max_objects=args.max_objects,
        automatic=args.automatic,
        automatic_iou_threshold=args.automatic_iou,
    )


def _train_with_bar(trainable, sets: dict[str, list], args: argparse.Namespace, store):
    from tqdm import tqdm

    from napari_sam.training.loop import train

    config = training_config(args)
    with tqdm(total=config.steps, unit="step", desc="training", file=sys.stderr) as bar:

        def progress(update):
            bar.update(update.step - bar.n)
            bar.set_postfix(loss=f"{update.loss:.3f}", val=_number(update.best_validation))

        return train(
            trainable,
            sets["train"],
            sets["validation"],
            args.out,
            config,
            progress=progress,
            resume=args.resume,
            store=store,
        )


def run_evaluate(args: argparse.Namespace) -> int:
    """``napari-sam evaluate``."""
    from napari_sam.engine.model.loading import load_model
    from napari_sam.errors import InvalidInputError

    _set_threads(args.threads)
    sets = {
        name: images for name, images in load_sets(args, ("test", "reference")).items() if images
    }
    if not sets:
        raise InvalidInputError(
            "No images: give --test-folder, --test-pair (or reference) or --development."
        )
    store = _store(args)
    rows = []
    for name in args.model or [DEFAULT_MODEL]:
        model = load_model(name, architecture=args.architecture)
        reports = _evaluate_sets(model, sets, args, store, Path(name).stem)
        rows += [(data, Path(name).stem, report) for data, report in reports.items()]
    _report(rows, Path(args.out) if args.out else None, "evaluation")
    return 0


def _evaluate_sets(model, sets: dict[str, list], args, store, label: str) -> dict:
    from tqdm import tqdm

    from napari_sam.training.evaluation import evaluate

    settings = evaluation_settings(args)
    reports = {}
    for name, images in sets.items():
        with tqdm(
            total=len(images), unit="image", desc=f"evaluating {name} ({label})", file=sys.stderr
        ) as bar:
            reports[name] = evaluate(
                model,
                images,
                settings,
                store,
                progress=lambda done, total: bar.update(done - bar.n),
            )
    return reports


def _report(rows, folder: Path | None, stem: str) -> None:
    from napari_sam.training.reports import format_table, save_plot, write_csv

    if not rows:
        return
    print(format_table(rows))
    if folder is None:
        return
    written = [write_csv(folder / f"{stem}.csv", rows)]
    plot = save_plot(folder / f"{stem}.png", rows)
    written += [plot] if plot else []
    print(
        "wrote "
        + ", ".join(str(p) for p in written)
        + ("" if plot else " (no plot: matplotlib is not installed)")
    )


def _store(args):
    from napari_sam.training.embeddings import EmbeddingStore

    return EmbeddingStore(args.embedding_cache)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
