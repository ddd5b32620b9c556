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

from napari_sam.commands.training_arguments import (
    SETS,
    add_evaluate_arguments,
    add_train_arguments,
)
from napari_sam.engine.model import DEFAULT_MODEL
from napari_sam.training.config import (
    EvaluationSettings,
    PromptSettings,
    RetentionSettings,
    TrainingConfig,
)

log = logging.getLogger(__name__)


def register(commands) -> None:
    """Add the ``train`` and ``evaluate`` subcommands."""
    train = commands.add_parser(
        "train",
        help="fine-tune SAM on images with instance labels",
        description="Fine-tune (or train) SAM with simulated interactive prompting; "
        "measure held-out and reference images before and after.",
    )
    add_train_arguments(train)
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="mean IoU of models on labelled images (point, box, clicks)",
        description="Measure one or more models on labelled images; prints a table, "
        "writes CSV/plot.",
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


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
        return {name: found.get(name, []) for name in sets}
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

    if args.head:
        from napari_sam.commands.head_training import run_train_head

        return run_train_head(args, load_sets(args, ("train", "test")))
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
    if result.mix is not None:
        released = result.base_scores or {}
        print(
            f"mixed with the released weights at alpha {result.mix.alpha:.2f} (validation: "
            f"your domain {_number(released.get('validation'))} -> {result.mix.user:.3f}, "
            f"domains to keep {_number(released.get('reference'))} -> "
            f"{result.mix.reference:.3f})"
        )
    if result.everything is not None:
        from napari_sam.training.everything_guard import everything_text

        print(everything_text(result.everything))
    if result.calibration is not None:
        c = result.calibration
        print(
            f"logits x{c.scale:.2f}: median stability "
            f"{c.tuned_median:.3f} -> {c.calibrated_median:.3f} "
            f"(base model {c.base_median:.3f}, {c.prompts} clicks)"
        )
        if c.iou_pass_base is not None:
            print(
                f"predicted IoUs {c.iou_shift:+.3f}: masks passing segment-everything's "
                f"0.88 {c.iou_pass_tuned:.0%} -> {c.iou_pass_calibrated:.0%} "
                f"(base model {c.iou_pass_base:.0%})"
            )
        if args.iou_head_mix < 1 and not args.freeze_iou_head:
            print(f"saved with {args.iou_head_mix:.0%} of the IoU head's change, shift included")
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
    sets["rehearsal"], sets["reference_validation"] = keep_sets(sets.pop("keep"), args)
    return sets


def keep_sets(keep: list, args: argparse.Namespace) -> tuple[list, list]:
    """(rehearsal images, reference validation images) of the domains the model must keep.

    The user's ``--keep-*`` images, split by whole images into halves; else the
    development nuclei (their training and validation splits), except with
    ``--development`` (they are then the user's domain) or ``--no-keep``. When the
    development images cannot be fetched, training goes on without them, with a warning.
    """
    from napari_sam.errors import DownloadError
    from napari_sam.training.retention import domains_to_keep

    if args.no_keep or (args.development and not keep):
        return [], []
    try:
        return domains_to_keep(keep, args.seed)
    except DownloadError as error:
        log.warning("training without domains to keep: %s", error)
        print(
            f"WARNING: no images of domains to keep ({error}); pass --no-keep to silence this.",
            file=sys.stderr,
        )
        return [], []


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
        retention=RetentionSettings(
            rehearsal=args.rehearsal,
            rehearsal_targets=args.rehearsal_targets,
            adaptive=args.adaptive,
            joint=args.joint,
            anchor=args.anchor,
            mix=args.mix,
            guard_steps=args.guard_steps,
            everything_guard=args.everything_guard,
            iou_head_mix=args.iou_head_mix,
        ),
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
            if update.reference_validation is not None:
                bar.set_postfix(
                    loss=f"{update.loss:.3f}",
                    val=_number(update.best_validation),
                    keep=_number(update.reference_validation),
                )

        return train(
            trainable,
            sets["train"],
            sets["validation"],
            args.out,
            config,
            progress=progress,
            resume=args.resume,
            store=store,
            reference_images=sets["reference_validation"],
            rehearsal_images=sets["rehearsal"],
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
