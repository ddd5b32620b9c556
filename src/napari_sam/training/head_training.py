"""Train an instance head on a frozen encoder's embeddings, from instance labels.

The labels are the user's (folders, label layers, the annotator's objects) or, for
distillation, every-point segment-everything's own results on a few planes
(:mod:`napari_sam.training.head_distillation`). Each image is encoded once per variant:
flipping an embedding is not the embedding of the flipped image, so augmentation encodes
the flipped and rotated images themselves (``augment`` of the 8 dihedral variants). The
loss is binary cross-entropy plus Dice on the foreground and squared error on both
distance maps, over the cells inside the image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.engine.instances.head import HeadCard, InstanceHead, TrainedHead
from napari_sam.engine.model.loading import SamModel, load_model
from napari_sam.errors import InvalidInputError, OperationCancelled
from napari_sam.training.datasets import LabelledImage
from napari_sam.training.embeddings import EmbeddingStore
from napari_sam.training.head_settings import HeadTrainingSettings
from napari_sam.training.head_targets import head_targets

# (transpose, flip rows, flip cols): identity, the two flips, a quarter turn, ... (dihedral)
VARIANTS = (
    (False, False, False),
    (False, False, True),
    (False, True, False),
    (True, False, True),
    (True, False, False),
    (False, True, True),
    (True, True, False),
    (True, True, True),
)


@dataclass(frozen=True, eq=False)
class _Example:
    features: torch.Tensor  # (256, 64, 64)
    maps: torch.Tensor  # (3, 256, 256)
    valid: torch.Tensor  # (256, 256) bool


Progress = Callable[[str, int, int], None]


def train_head(
    model: SamModel,
    images: list[LabelledImage],
    settings: HeadTrainingSettings | None = None,
    *,
    trained_on: str = "",
    mode: str = "labels",
    store: EmbeddingStore | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainedHead:
    """Encode the images (and their variants) once, then fit a head.

    Parameters
    ----------
    model : SamModel
        Its encoder makes the embeddings; the head belongs to it.
    images : list of LabelledImage
        With at least one object in total.
    settings : HeadTrainingSettings, optional
    trained_on, mode : str
        Recorded on the card ("labels" or "distilled").
    store : EmbeddingStore, optional
        Reuses (and keeps) embeddings, e.g. across retraining in napari.
    progress : callable, optional
        ``progress(stage, done, total)`` with stage "encoding" or "training".
    should_stop : callable, optional
        Polled between images and steps; True raises OperationCancelled.
    """
    settings = settings or HeadTrainingSettings()
    if not images:
        raise InvalidInputError("Training an instance head needs at least one labelled image.")
    started = time.perf_counter()
    examples = encode_examples(model, images, settings.augment, store, progress, should_stop)
    network = fit_network(examples, settings, progress, should_stop)
    card = HeadCard(
        encoder=model.model_id,
        trained_on=trained_on or ", ".join(sorted({image.group for image in images}))[:200],
        mode=mode,
        planes=len(images),
        objects=int(sum(len(image.object_ids()) for image in images)),
        width=settings.width,
        seconds=round(time.perf_counter() - started, 1),
    )
    return TrainedHead(network, card)


def encode_examples(
    model: SamModel,
    images: list[LabelledImage],
    augment: int,
    store: EmbeddingStore | None,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
) -> list[_Example]:
    """Every image in ``augment`` variants, encoded, with its targets."""
    store = store or EmbeddingStore()
    variants = [transform(image, v) for image in images for v in VARIANTS[:augment]]
    examples = []
    for done, image in enumerate(variants, 1):
        if should_stop is not None and should_stop():
            raise OperationCancelled("Training the instance head was cancelled.")
        embedding = store.embedding(model, image)
        targets = head_targets(image.labels, embedding.input_size, model.input_size)
        examples.append(
            _Example(
                embedding.features[0].float(),
                torch.from_numpy(targets.maps),
                torch.from_numpy(targets.valid),
            )
        )
        if progress is not None:
            progress("encoding", done, len(variants))
    return examples


def transform(image: LabelledImage, variant: tuple[bool, bool, bool]) -> LabelledImage:
    """One dihedral variant of an image and its labels (a new embedding key)."""
    transpose, flip_rows, flip_cols = variant
    if not any(variant):
        return image

    def apply(array: np.ndarray) -> np.ndarray:
        if transpose:
            array = np.swapaxes(array, 0, 1)
        if flip_rows:
            array = array[::-1]
        if flip_cols:
            array = array[:, ::-1]
        return np.ascontiguousarray(array)

    return LabelledImage(
        apply(image.image),
        apply(image.labels),
        f"{image.name}{'T' if transpose else ''}{'V' if flip_rows else ''}"
        f"{'H' if flip_cols else ''}",
        image.normalization,
        image.group,
    )


def fit_network(
    examples: list[_Example],
    settings: HeadTrainingSettings,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> InstanceHead:
    """Fit a fresh head to encoded examples (AdamW, cosine schedule); returns it in eval mode."""
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    network = InstanceHead(examples[0].features.shape[0], settings.width)
    optimiser = torch.optim.AdamW(
        network.parameters(), settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    network.train()
    for step in range(1, settings.steps + 1):
        if should_stop is not None and should_stop():
            raise OperationCancelled("Training the instance head was cancelled.")
        chosen = torch.randint(len(examples), (settings.batch_size,), generator=generator)
        batch = [examples[int(i)] for i in chosen]
        loss = head_loss(
            network(torch.stack([e.features for e in batch])),
            torch.stack([e.maps for e in batch]),
            torch.stack([e.valid for e in batch]),
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress("training", step, settings.steps)
    return network.eval()


def head_loss(logits: torch.Tensor, maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE + Dice on the foreground, squared error on both distances, inside the image.

    Parameters
    ----------
    logits, maps : torch.Tensor, shape (B, 3, 256, 256)
    valid : torch.Tensor, shape (B, 256, 256) bool
    """
    weight = valid.float()
    cells = weight.sum().clamp(min=1.0)
    foreground = F.binary_cross_entropy_with_logits(logits[:, 0], maps[:, 0], reduction="none")
    probability = torch.sigmoid(logits[:, 0]) * weight
    overlap = (probability * maps[:, 0]).sum()
    dice = 1 - (2 * overlap + 1) / (probability.sum() + (maps[:, 0] * weight).sum() + 1)
    distances = (torch.sigmoid(logits[:, 1:]) - maps[:, 1:]).square().sum(dim=1)
    return ((foreground + distances) * weight).sum() / cells + dice


def train_head_file(
    images: list[LabelledImage],
    model: str | Path,
    output: str | Path,
    settings: HeadTrainingSettings | None = None,
    *,
    architecture: str | None = None,
    trained_on: str = "",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Load ``model``, train a head on ``images`` and save it as ``OUTPUT/head.pt`` (with
    its card ``head.json``); returns the .pt path. What the fine-tuning widget runs.

    Parameters
    ----------
    images : list of LabelledImage
        E.g. the committed objects (:func:`~napari_sam.training.annotations.annotated_images`).
    model : str or Path
        A model id or weights file: the encoder the head will belong to.
    trained_on : str
        Recorded on the card (default: the images' groups).
    progress, should_stop : callable, optional
        As for :func:`train_head`.
    """
    sam = load_model(model, architecture=architecture)
    head = train_head(
        sam, images, settings, trained_on=trained_on, progress=progress, should_stop=should_stop
    )
    return head.save(Path(output) / "head")
