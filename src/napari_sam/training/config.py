"""The settings of a training run; the defaults are the recipe validated in docs/training.md.

That recipe fine-tunes the mask decoder on cached embeddings with 16 objects per step,
one prompting round, learning rate 5e-5 after 10 warm-up steps, at most 150 steps,
validation of 32 objects per image every 10 steps and patience 5; it gained about +0.05
held-out mean IoU on nuclei in three seeds, each run reaching its kept step within 8-12
minutes on 2 CPU cores. The SAM paper's value is given beside a default where it
differs: the paper trains on SA-1B with 256 images per iteration for 90,000 iterations
(warm-up 250, decay at 60,000 and 86,666) and 11 prompting rounds, a schedule that only
its scale fits. :data:`~napari_sam.training.steps.PAPER_PROMPTS` holds its prompting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from napari_sam.errors import InvalidInputError

# What trains: the mask decoder; with the prompt encoder; the last encoder blocks too; all.
TRAINABLE_PARTS = ("decoder", "decoder+prompt", "encoder-last", "full")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms (the paper's 20:1 focal:dice, IoU MSE at 1)."""

    focal: float = 20.0  # focal loss weight
    dice: float = 1.0  # dice loss weight
    iou: float = 1.0  # weight of the IoU-head MSE
    # Low-resolution pixels (4 of the encoder's 1024 frame) at each side of a label's
    # boundary that the IoU head's target ignores (losses.banded_iou); 0: plain IoU.
    iou_band: int = 0


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are simulated in one step (:data:`PAPER_PROMPTS`: the SAM paper's).

    The defaults are the recipe validated in docs/training.md: one round, the first
    prompt only. Each further round costs about one more decoder pass: a step of 16
    objects took 28.1 s with the paper's 11 rounds and 2.6 s with one on 2 CPU cores
    (benchmarks/bench_training.py, one run), hours instead of minutes for a CPU run.
    """

    iterations: int = 1  # all iterations, the first prompt included (paper: 11, see above)
    quiet_iterations: int = 0  # iterations without a new point; one iteration has none (paper: 2)
    box_probability: float = 0.5  # chance that a step starts from boxes, else points (the paper's)
    box_noise: float = 0.1  # box corner noise, fraction of the side (the paper's 10%)
    max_box_noise: float = 20.0  # ... at most this many encoder pixels (the paper's 20)


# The SAM paper's simulated interactive prompting: the first prompt, 8 points from the
# error region, and 2 iterations without a new point (one at random, one last).
PAPER_PROMPTS = PromptSettings(iterations=11, quiet_iterations=2)


# what rehearsal steps train towards (RetentionSettings.rehearsal_targets)
REHEARSAL_TARGETS = ("labels", "released")

# the least and the most rehearsal adaptive rehearsal gives (RetentionSettings.adaptive)
ADAPTIVE_SHARES = (1 / 16, 0.75)

# alphas measured when choosing the mix of the kept and the released weights
MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class RetentionSettings:
    """How training keeps the base model's other skills: rehearsal, anchoring, mixing.

    :mod:`napari_sam.training.retention` explains each; docs/training.md measures them.
    """

    # Share of steps drawn from the rehearsal images (0: none). 0.5 gave the best validation
    # gain within the reference tolerance on both domain pairs of docs/training.md.
    rehearsal: float = 0.5
    # What a rehearsal step asks for: the objects' labels ("labels"), or what the released
    # model gave for the same prompts ("released": keeping without learning those domains).
    rehearsal_targets: str = "labels"
    # With label targets and a trained IoU head: on rehearsal steps the IoU head trains
    # towards the released head's predictions for the same prompts, not the masks' IoU
    # against the labels, so it keeps the released scale on the domains to keep.
    keep_iou_head: bool = False
    # Points drawn anywhere in a rehearsal image (segment-everything's grid prompts, most
    # on background), trained towards the released decoder's masks and predicted IoUs on
    # each rehearsal step (steps.distil_free_points); 0: none.
    free_points: int = 0
    # Share of the trained IoU head's change (its calibration shift included) that the
    # saved weights keep, the rest back to the released head (retention.mix_iou_head).
    # The one shift that lets your objects' masks pass segment-everything's threshold
    # over-passes the domains to keep: half of it kept the nuclei's segment-everything AP
    # (0.435 -> 0.431, against 0.387 with all of it) but lost more on kept label-free
    # cells (docs/training.md), so all of it is kept by default.
    iou_head_mix: float = 1.0
    # Joint rehearsal: every step trains on one of your images *and* one rehearsal image
    # (rehearsal * objects_per_step of its objects), adding both losses, instead of giving
    # a share of the steps to rehearsal; your domain keeps all its steps, each costs more.
    joint: bool = False
    # Adaptive rehearsal: after each validation the share halves while the reference
    # validation is comfortably above the released model's (more than twice the
    # tolerance), doubles while it is below it and jumps to the most when it is more than
    # the tolerance below (retention.adapt_rehearsal), between ADAPTIVE_SHARES;
    # ``rehearsal`` is where it starts. The reference set steers the training: on both
    # domain pairs of docs/training.md it gave the best validation gain within tolerance.
    adaptive: bool = True
    # L2-SP weight: gradient anchor * (theta - theta_0) (0: none). 1.0 kept more than no
    # anchor but not enough for the tolerance (docs/training.md), so it is off.
    anchor: float = 0.0
    # Mix the kept and the released weights, alpha chosen on both validation sets
    # (needs reference validation images; without them the kept weights are saved as they are).
    mix: bool = True
    # Step guard: keep the best validated step among those whose reference validation is
    # within tolerance (the best overall only when none is), instead of the best overall.
    guard_steps: bool = True
    mix_grid: tuple[float, ...] = MIX_GRID
    # Segment-everything guard: the saved mix must also keep segment-everything's AP@0.5
    # on the reference validation images within everything_tolerance of the released
    # weights; if it does not, the mix steps down towards them (everything_guard.py).
    # Clicks can hold while segment-everything falls (docs/training.md: the nuclei kept by
    # a run on label-free cells, 0.435 -> 0.387 on their test images).
    everything_guard: bool = True
    everything_tolerance: float = 0.01
    # Reference validation drop a mix may have: half of REGRESSION_TOLERANCE (0.01), the
    # drop the held-out reference images may show, so validation noise has room.
    tolerance: float = 0.005

    def __post_init__(self) -> None:
        if not 0.0 <= self.rehearsal < 1.0:
            raise InvalidInputError(f"rehearsal must be in [0, 1); got {self.rehearsal}.")
        if self.rehearsal_targets not in REHEARSAL_TARGETS:
            raise InvalidInputError(
                f"rehearsal_targets must be one of {', '.join(REHEARSAL_TARGETS)}; "
                f"got {self.rehearsal_targets!r}."
            )
        if not 0.0 <= self.iou_head_mix <= 1.0:
            raise InvalidInputError(f"iou_head_mix must be in [0, 1]; got {self.iou_head_mix}.")
        if self.free_points < 0:
            raise InvalidInputError(f"free_points must be at least 0; got {self.free_points}.")
        if self.anchor < 0:
            raise InvalidInputError(f"anchor must be at least 0; got {self.anchor}.")
        if not self.mix_grid or any(not 0.0 <= a <= 1.0 for a in self.mix_grid):
            raise InvalidInputError(f"mix_grid needs alphas in [0, 1]; got {self.mix_grid}.")
        if self.tolerance < 0:
            raise InvalidInputError(f"tolerance must be at least 0; got {self.tolerance}.")
        if self.everything_tolerance < 0:
            raise InvalidInputError(
                f"everything_tolerance must be at least 0; got {self.everything_tolerance}."
            )


@dataclass(frozen=True)
class TrainingConfig:
    """Everything :func:`~napari_sam.training.loop.train` needs besides data and model."""

    # decoder | decoder+prompt | encoder-last | full (paper: full, the encoder from MAE)
    trainable: str = "decoder"
    encoder_blocks: int = 2  # encoder blocks trained in "encoder-last" mode (plus the neck)
    # Optimizer steps, one image and its objects each: the experiment's runs kept steps
    # 80-100 and stopped early by step 150 (paper: 90k iterations).
    steps: int = 150
    objects_per_step: int = 16  # objects sampled from the step's image (paper: 256 images)
    # Peak AdamW learning rate: at 1e-4 (8 objects per step) validation peaked after
    # 10-25 steps and fell back (paper: 8e-4 at batch 256).
    learning_rate: float = 5e-5
    weight_decay: float = 0.1  # AdamW weight decay on weight matrices (paper: 0.1)
    warmup_steps: int = 10  # linear warm-up (paper: 250 of 90k iterations)
    # x0.1 at these fractions of the steps (paper: at 60k and 86.7k of 90k)
    decay_at: tuple[float, ...] = (2 / 3, 8 / 9)
    layer_decay: float = 0.8  # learning-rate factor per encoder block below the neck
    # drop path rate of the last encoder block when it trains (paper: 0.4 for ViT-H)
    drop_path: float = 0.0
    # one round: the first prompt only (paper: 11 rounds, steps.PAPER_PROMPTS)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    losses: LossWeights = field(default_factory=LossWeights)  # focal:dice 20:1, IoU MSE 1
    # Keep the IoU token and head as released and drop the IoU MSE. Trained (the paper's
    # recipe, the default), the head learns which of a click's three masks the user's
    # objects are: held-out label-free cells' point IoU 0.16 -> 0.40 (docs/training.md).
    # It also learns the labels' IoU (~0.8), below segment-everything's pred_iou_thresh
    # 0.88, so the calibration shifts its predictions back (training.calibration).
    freeze_iou_head: bool = False
    # Fold a factor into the mask logits so that the kept weights' masks are as stable as
    # the base model's (training.calibration): fine-tuning flattens the logits, and
    # segment-everything's stability filter then drops good masks. No mask changes.
    calibrate_logits: bool = True
    # Rehearsal, anchoring and weight mixing: keeping the base model's other skills
    # (training.retention; the defaults are chosen in docs/training.md).
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    crop_size: int | None = None  # random square crops of this side (None: whole images)
    flips: bool = False  # random horizontal and vertical flips
    min_area: int = 20  # objects with fewer pixels are never sampled
    # steps between validations: the experiment's scores moved within 10 steps
    validate_every: int = 10
    # objects per validation image, a fixed draw (8 could not rank neighbouring steps)
    validation_objects: int = 32
    validation_iterations: int = 1  # prompting iterations measured in validation
    patience: int = 5  # validations without improvement before stopping (50 steps here)
    min_improvement: float = 0.002  # validation mean IoU gain that counts as improvement
    checkpoint_every: int = 25  # steps between resumable checkpoints
    # Stop after this much wall time, keeping the best weights (None: no limit). 12 aims at
    # `napari-sam train` with its defaults ending within about 15 minutes on 2 CPU cores,
    # evaluation before and after included; the experiment's runs reached their kept steps
    # after 7.9, 12.2 and 8.0 minutes. With a limit, the steps done, and so the weights,
    # depend on the machine's speed (the paper: no limit).
    max_minutes: float | None = 12.0
    seed: int = 0  # seeds sampling, prompts and drop path
    name: str = "finetuned"  # final weights are NAME_ARCH.pt (e.g. finetuned_vit_t.pt)

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE_PARTS:
            raise InvalidInputError(
                f"trainable must be one of {', '.join(TRAINABLE_PARTS)}; got {self.trainable!r}."
            )
        for name in (
            "steps",
            "objects_per_step",
            "validate_every",
            "validation_objects",
            "validation_iterations",
            "patience",
            "checkpoint_every",
            "encoder_blocks",
        ):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise InvalidInputError(f"learning_rate must be positive; got {self.learning_rate}.")
        if not 0 <= self.drop_path < 1:
            raise InvalidInputError(f"drop_path must be in [0, 1); got {self.drop_path}.")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise InvalidInputError(f"max_minutes must be positive; got {self.max_minutes}.")
        if self.crop_size is not None and self.crop_size < 16:
            raise InvalidInputError(f"crop_size must be at least 16 pixels; got {self.crop_size}.")

    @property
    def loss_weights(self) -> LossWeights:
        """The loss weights in effect: no IoU term while the IoU head is frozen."""
        return replace(self.losses, iou=0.0) if self.freeze_iou_head else self.losses

    def to_dict(self) -> dict:
        """Plain values (for checkpoints and the model card)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        """Inverse of :meth:`to_dict`."""
        values = dict(values)
        values["prompts"] = PromptSettings(**values["prompts"])
        values["losses"] = LossWeights(**{"iou_band": 0, **values["losses"]})
        values["decay_at"] = tuple(values["decay_at"])
        # runs from before retention existed had none
        retention = dict(values.get("retention") or {"mix": False, "rehearsal": 0.0})
        retention.setdefault("guard_steps", False)  # runs from before the step guard
        retention.setdefault("adaptive", False)  # ... and before adaptive rehearsal
        retention.setdefault("keep_iou_head", False)  # ... and before keeping the IoU head
        retention.setdefault("everything_guard", False)  # ... and before the everything guard
        retention["mix_grid"] = tuple(retention.get("mix_grid", ()) or RetentionSettings().mix_grid)
        values["retention"] = RetentionSettings(**retention)
        values.setdefault(
            "freeze_iou_head", False
        )  # cards and checkpoints from before the option trained it
        return cls(**values)


@dataclass(frozen=True)
class EvaluationSettings:
    """What :func:`evaluate` measures."""

    clicks: int = 4  # iterative prompting: mean IoU after 1..clicks prompts
    max_objects: int = 30  # objects per image (a fixed random draw), bounds the time
    min_area: int = 20  # smaller objects are skipped
    seed: int = 0  # seeds the draw of objects
    batch_size: int = 16  # objects per decoder call
    automatic: bool = False  # also segment everything and score AP at IoU 0.5..0.95 (slow)
    automatic_iou_threshold: float | None = None  # its pred_iou_thresh (None: the default 0.88)
    point_negative: bool = True  # also measure point + negative point (validation skips it)


# Mean IoU the reference set may lose before fine-tuning counts as a regression.
REGRESSION_TOLERANCE = 0.01
