"""The validation measure used for early stopping: fixed objects, fixed prompts.

Each validation image contributes the same objects at every validation (drawn once with
the run's seed), prompted once by a point and once by a box with a per-image random
state reset each time, so scores differ only because the weights changed. The score is
the mean IoU of the mask a user would be shown (highest predicted IoU), over images,
prompt types and the measured iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_sam.training.datasets import LabelledImage
from napari_sam.training.sampling import ObjectBatch, PreparedImage, prepare_image, sample_objects
from napari_sam.training.steps import PromptSettings, run_prompting


@dataclass(frozen=True, eq=False)
class ValidationSet:
    """Prepared validation images with their fixed object batches."""

    items: tuple[tuple[LabelledImage, PreparedImage, ObjectBatch], ...]
    settings: PromptSettings  # iterations measured (no quiet ones)
    seed: int

    @classmethod
    def build(cls, images: list[LabelledImage], config, input_size: int) -> ValidationSet:
        """Draw each image's objects once (``config.validation_objects`` per image)."""
        rng = np.random.default_rng(config.seed + 1)
        items = []
        for image in images:
            prepared = prepare_image(image, input_size, rng, min_area=config.min_area)
            batch = sample_objects(prepared, config.validation_objects, rng) if len(prepared.object_ids) else None
            if batch is not None:
                items.append((image, prepared, batch))
        settings = PromptSettings(
            iterations=config.validation_iterations, quiet_iterations=0,
            box_noise=config.prompts.box_noise, max_box_noise=config.prompts.max_box_noise,
        )
        return cls(tuple(items), settings, config.seed)

    def score(self, sam: torch.nn.Module, frozen, store) -> float:
        """Mean IoU of the shown masks under the current weights (no gradients).

        Parameters
        ----------
        sam : Sam
            The network being trained (set to eval mode here; the loop sets modes again).
        frozen : SamModel or None
            The frozen encoder's inference model, to reuse cached embeddings; None when
            the encoder trains (its current weights encode the images).
        store : EmbeddingStore
        """
        sam.eval()
        scores = []
        with torch.no_grad():
            for index, (image, prepared, batch) in enumerate(self.items):
                if frozen is not None:
                    embedding = store.features(frozen, image)
                else:
                    embedding = sam.image_encoder(sam.normalize_pixels(prepared.pixels))
                for use_box in (False, True):
                    rng = np.random.default_rng((self.seed, index, int(use_box)))
                    result = run_prompting(sam, embedding, batch, self.settings, rng, prepared.input_size,
                                           use_box=use_box, backward=False)
                    scores.append((result.first_iou + result.last_iou) / 2)
        return float(np.mean(scores)) if scores else 0.0
