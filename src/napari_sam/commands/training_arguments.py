"""The flags of ``napari-sam train`` and ``napari-sam evaluate``.

Every default and every number in a help text is read from the settings dataclasses
(:mod:`napari_sam.training.config`, :mod:`napari_sam.engine.everything.settings`), which
load no torch, so ``napari-sam --help`` stays instant and a default changes in one place.
"""

from __future__ import annotations

import argparse

from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.model import DEFAULT_MODEL
from napari_sam.training.config import (
    PAPER_PROMPTS,
    REGRESSION_TOLERANCE,
    REHEARSAL_TARGETS,
    TRAINABLE_PARTS,
    EvaluationSettings,
    TrainingConfig,
)
from napari_sam.training.head_settings import HeadTrainingSettings

SETS = ("train", "validation", "test", "reference", "keep")


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    """Data, output, recipe and evaluation flags of ``train``."""
    add_data_arguments(train, SETS)
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
    add_recipe_arguments(train)
    add_head_arguments(train)
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
    add_common_arguments(train)


def add_evaluate_arguments(evaluate: argparse.ArgumentParser) -> None:
    """Data, models and evaluation flags of ``evaluate``."""
    add_data_arguments(evaluate, ("test", "reference"))
    evaluate.add_argument(
        "--model",
        action="append",
        help=f"model name or checkpoint (repeatable; default {DEFAULT_MODEL})",
    )
    evaluate.add_argument("--architecture", help="registry name of checkpoint files' architecture")
    evaluate.add_argument(
        "--out", help="folder for evaluation.csv (and evaluation.png with matplotlib)"
    )
    add_common_arguments(evaluate)


def add_head_arguments(train: argparse.ArgumentParser) -> None:
    """``--head``: train an instance head instead of fine-tuning SAM."""
    defaults = HeadTrainingSettings()
    train.add_argument(
        "--head",
        action="store_true",
        help="train an instance head for segment-everything (--learn, --head) instead of "
        "fine-tuning SAM: writes OUT/head.pt and OUT/head.json; --test images are scored "
        "against the point grid (docs/instance_head.md)",
    )
    train.add_argument(
        "--head-steps",
        type=int,
        default=defaults.steps,
        help="with --head: training steps (default %(default)s)",
    )
    train.add_argument(
        "--head-augment",
        type=int,
        default=defaults.augment,
        help="with --head: flipped/rotated variants of each image encoded, 1-8 "
        "(default %(default)s)",
    )


def add_recipe_arguments(train: argparse.ArgumentParser) -> None:
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
    add_iou_head_arguments(train, defaults.freeze_iou_head)
    add_retention_arguments(train, defaults)
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


def add_retention_arguments(train: argparse.ArgumentParser, defaults: TrainingConfig) -> None:
    """How training keeps what the base model knew (training.retention)."""
    keep = defaults.retention
    add = train.add_argument
    add(
        "--rehearsal",
        type=float,
        default=keep.rehearsal,
        metavar="SHARE",
        help="share of the steps that train on an image of the domains to keep "
        "(--keep-folder/--keep-pair, else the development nuclei; default %(default)s)",
    )
    add(
        "--fixed-rehearsal",
        dest="adaptive",
        action="store_false",
        default=keep.adaptive,
        help="keep SHARE for the whole run; by default it is where rehearsal starts, and "
        "after each validation it halves while the domains to keep score more than "
        f"{2 * keep.tolerance} above the released model, doubles while they score below "
        f"it and jumps to the most (3/4) when they lose more than {keep.tolerance}",
    )
    add(
        "--rehearse-on",
        dest="rehearsal_targets",
        choices=REHEARSAL_TARGETS,
        default=keep.rehearsal_targets,
        help="what rehearsal steps train towards: the objects' labels, or the released "
        "model's own masks for the same prompts, which keeps those domains as they were "
        "without learning them (default %(default)s)",
    )
    add(
        "--joint-rehearsal",
        dest="joint",
        action="store_true",
        default=keep.joint,
        help="every step trains on one of your images and one image to keep (SHARE x "
        "--objects of its objects), adding both losses, instead of giving SHARE of the "
        "steps to rehearsal",
    )
    add(
        "--anchor",
        type=float,
        default=keep.anchor,
        metavar="W",
        help="L2-SP: pull the weights back to the released ones with this weight "
        "(default %(default)s: off)",
    )
    add(
        "--no-mix",
        dest="mix",
        action="store_false",
        default=keep.mix,
        help="save the kept weights as trained; by default they are mixed with the released "
        "weights, the mix chosen on the validation images of both domains so that the "
        f"domains to keep lose at most {keep.tolerance} there",
    )
    add(
        "--iou-head-mix",
        type=float,
        default=keep.iou_head_mix,
        metavar="A",
        help="share of the trained IoU head's change, its calibration shift included, that "
        "the saved weights keep; the rest goes back to the released head, so that "
        "segment-everything on the domains to keep passes the masks it passed before "
        "(default %(default)s: all of it; 0.5 kept segment-everything on kept nuclei, "
        "see docs/training.md)",
    )
    add(
        "--no-step-guard",
        dest="guard_steps",
        action="store_false",
        default=keep.guard_steps,
        help="keep the step with the best validation on your images even when it lost more "
        f"than {keep.tolerance} on the domains to keep; by default such steps are kept only "
        "when every validated step did",
    )
    add(
        "--no-everything-guard",
        dest="everything_guard",
        action="store_false",
        default=keep.everything_guard,
        help="do not check segment-everything on the domains to keep; by default the saved "
        "mix must also keep segment-everything's AP@0.5 on their validation images within "
        f"{keep.everything_tolerance} of the released weights, else it steps down towards "
        "them (adds a few segment-everything passes at the end)",
    )
    add(
        "--no-keep",
        action="store_true",
        help="no domains to keep: no rehearsal, no mix, no reference curve (the images "
        "to keep are then not fetched)",
    )


def add_iou_head_arguments(train: argparse.ArgumentParser, freeze: bool) -> None:
    iou_head = train.add_mutually_exclusive_group()
    iou_head.add_argument(
        "--freeze-iou-head",
        dest="freeze_iou_head",
        action="store_true",
        help="keep the released IoU head"
        + (" (default)" if freeze else "")
        + ": the released ranking of a click's three masks",
    )
    iou_head.add_argument(
        "--train-iou-head",
        dest="freeze_iou_head",
        action="store_false",
        help="train the IoU head too"
        + ("" if freeze else " (default)")
        + " (the SAM paper's recipe: it learns which of a click's masks your objects are; "
        "the calibration shifts its scores back to segment-everything's pred_iou_thresh)",
    )
    train.set_defaults(freeze_iou_head=freeze)


def add_data_arguments(parser: argparse.ArgumentParser, sets: tuple[str, ...]) -> None:
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
    if "keep" in sets:
        parser.add_argument_group(
            "domains to keep",
            "--keep-folder/--keep-pair: labelled images of the domains the model must not "
            "forget, split by whole images into rehearsal images and a validation set that "
            "constrains the mix. Without them, the development nuclei of docs/training.md "
            "(fetched on first use), unless --development or --no-keep.",
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


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
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
