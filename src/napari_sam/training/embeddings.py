"""A cache of image embeddings for training with a frozen encoder, and for evaluation.

Encoding costs about a second per image on a CPU, a decoder step a fraction of it; while
the encoder is frozen, every image is encoded once. Entries are keyed by the encoder's
weights (:func:`~napari_sam.training.network.encoder_fingerprint`) and the image's
content and normalisation, so a model whose decoder alone changed reuses them, and a
changed encoder never sees stale ones. Kept in memory, and as ``.npy`` files in a folder
when one is given (reusable across runs).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from napari_sam.engine.model.loading import SamModel
from napari_sam.engine.prediction.preprocess import resize_longest_side
from napari_sam.engine.prediction.results import Embedding
from napari_sam.training.datasets import LabelledImage
from napari_sam.training.network import encoder_fingerprint

log = logging.getLogger(__name__)


class EmbeddingStore:
    """Image embeddings by (encoder weights, image).

    Parameters
    ----------
    folder : str or pathlib.Path, optional
        Also keep them on disk here (4 MiB per image, float32).
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = None if folder is None else Path(folder).expanduser()
        self._memory: dict[str, torch.Tensor] = {}
        self.encoded = 0  # encoder calls made by this store

    def features(self, model: SamModel, image: LabelledImage) -> torch.Tensor:
        """(1, 256, 64, 64) float32 embedding of ``image`` by ``model``'s encoder."""
        key = f"{encoder_fingerprint(model)}-{image.key}"
        if key in self._memory:
            return self._memory[key]
        path = None if self.folder is None else self.folder / f"{key}.npy"
        if path is not None and path.is_file():
            features = torch.from_numpy(np.load(path))
        else:
            features = encode(model, image)
            self.encoded += 1
            if path is not None:
                _save(path, features)
        self._memory[key] = features
        return features

    def embedding(self, model: SamModel, image: LabelledImage) -> Embedding:
        """The :class:`~napari_sam.engine.prediction.results.Embedding` a Predictor of
        ``model`` accepts.
        """
        features = self.features(model, image)
        rows, cols = image.labels.shape
        scale = model.input_size / max(rows, cols)
        return Embedding(
            features=features,
            input_size=(max(1, int(rows * scale + 0.5)), max(1, int(cols * scale + 0.5))),
            original_size=(rows, cols),
            model_id=model.model_id,
            normalization=image.normalization,
        )

    def encode_all(self, model: SamModel, images: list[LabelledImage], progress=None) -> None:
        """Encode every image not cached yet; ``progress(done, total)`` after each."""
        for done, image in enumerate(images, 1):
            self.features(model, image)
            if progress is not None:
                progress(done, len(images))


def encode(model: SamModel, image: LabelledImage) -> torch.Tensor:
    """Run the encoder on one labelled image -> (1, 256, 64, 64) float32 on the CPU."""
    rgb = image.normalization.apply(image.image)
    resized = resize_longest_side(rgb, model.input_size)
    pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        features = model.module(pixels.to(model.device)).float().cpu()
    return features.clone()


def _save(path: Path, features: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.part.npy")
    np.save(temporary, features.numpy())
    os.replace(temporary, path)
