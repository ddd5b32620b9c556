"""The validation measure used for early stopping: the evaluation protocol on fixed objects.

Validation measures what the before/after report measures
(:func:`~napari_sam.training.evaluation.evaluate`): each validation image's objects
(``validation_objects`` of them, drawn once with the run's seed) are prompted by their
most interior point and by their tight box, and the masks a user would be shown are
scored at full resolution. Prompts are deterministic, so scores differ only because the
weights changed. An earlier measure (8 objects per image, one random point and one noisy
box, scored on the 256 x 256 logits) could not rank neighbouring steps: two runs kept
weights whose held-out gains differed by a factor of two (docs/training.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from napari_sam.training.config import EvaluationSettings
from napari_sam.training.datasets import LabelledImage
from napari_sam.training.embeddings import EmbeddingStore
from napari_sam.training.evaluation import evaluate
from napari_sam.training.network import TrainableSam, inference_model


@dataclass(frozen=True, eq=False)
class ValidationSet:
    """Validation images (those with at least one usable object) and how they are measured."""

    images: tuple[LabelledImage, ...]
    settings: EvaluationSettings  # clicks = the measured prompting iterations

    @classmethod
    def build(cls, images: list[LabelledImage], config) -> ValidationSet:
        """Measure up to ``config.validation_objects`` objects per image (a fixed draw)."""
        settings = EvaluationSettings(
            clicks=config.validation_iterations,
            max_objects=config.validation_objects,
            min_area=config.min_area,
            seed=config.seed + 1,
            point_negative=False,
        )
        usable = tuple(image for image in images if len(image.object_ids(config.min_area)))
        return cls(usable, settings)

    def score(self, trainable: TrainableSam, store: EmbeddingStore | None = None) -> float:
        """Mean IoU of the shown masks under the current weights.

        The mean over objects of point and box prompts; with more than one measured
        iteration, the mean of the first and the last. 0.0 when no image has an object.

        Parameters
        ----------
        trainable : TrainableSam
            The network being trained (measured on a frozen copy; its modes are untouched).
        store : EmbeddingStore, optional
            Cached embeddings while the encoder is frozen; None when it trains (the
            current encoder then encodes each image, and nothing is kept).
        """
        if not self.images:
            return 0.0
        report = evaluate(inference_model(trainable), list(self.images), self.settings, store)
        first = (report.point + report.box) / 2
        last = (report.iterative_point[-1] + report.iterative_box[-1]) / 2
        return (first + last) / 2
