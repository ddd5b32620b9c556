"""The results of the engine as frozen dataclasses: embeddings and predictions.

Predictions are numpy arrays on the CPU whatever the device; an embedding's features stay
on the device that computed them (the CPU when read from a cache), and the predictor
moves them to its model's device where they enter the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_sam.engine.prediction.preprocess import Normalization

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, eq=False)
class Embedding:
    """An image encoded once, reusable for any number of prompts."""

    features: torch.Tensor  # (1, 256, 64, 64) float32 image embedding, on any device
    input_size: tuple[int, int]  # (rows, cols) of the resized image inside the encoder frame
    original_size: tuple[int, int]  # (rows, cols) of the image given to set_image
    model_id: str  # weights that computed it (name@sha256-prefix)
    normalization: Normalization  # intensity mapping and channel choice used
    precision: str = "fp32"  # the encoder's arithmetic, "fp32" or "bf16" (features are float32)


@dataclass(frozen=True, eq=False)
class Prediction:
    """Masks for one object.

    N is 3 for an ambiguous prompt with ``multimask=True``, else 1. Masks are in SAM's
    decoder order; ``best`` is the index with the highest predicted IoU.
    """

    masks: np.ndarray  # (N, rows, cols) bool, at the original resolution
    scores: np.ndarray  # (N,) float32, the predicted IoU of each mask
    logits: np.ndarray  # (N, 256, 256) float32, low-res logits, usable as mask_input

    @property
    def best(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.scores))

    @property
    def best_mask(self) -> np.ndarray:
        """(rows, cols) bool: the mask with the highest predicted IoU."""
        return self.masks[self.best]


@dataclass(frozen=True, eq=False)
class BatchPrediction:
    """Masks for B objects decoded together; ``batch[i]`` is a :class:`Prediction`."""

    masks: np.ndarray  # (B, N, rows, cols) bool
    scores: np.ndarray  # (B, N) float32
    logits: np.ndarray  # (B, N, 256, 256) float32

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: int) -> Prediction:
        return Prediction(self.masks[index], self.scores[index], self.logits[index])


@dataclass(frozen=True, eq=False)
class LowResBatch:
    """Low-resolution decoder output for B objects, kept as torch tensors for filtering."""

    logits: torch.Tensor  # (B, N, 256, 256) float32 logits in the padded encoder frame
    scores: torch.Tensor  # (B, N) float32 predicted IoU; both on the model's device
